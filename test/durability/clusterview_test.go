package durability_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/test/fanouttest"
)

// viewToken is the admin token of the cluster-view test's nodes: the
// calls between nodes must carry it.
const viewToken = "view-secret"

// viewNode is one node of the cluster-view test.
type viewNode struct {
	*fanouttest.Server
	id   int64
	name string
}

// adminGet decodes GET path on node n into v and returns the response's
// Fanout-Nodes header.
func adminGet(ctx context.Context, n *viewNode, path string, v any) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.AdminURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+viewToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", path, res.Status)
	}
	return res.Header.Get("Fanout-Nodes"), json.NewDecoder(res.Body).Decode(v)
}

type nodeStatus struct {
	Name      string `json:"name"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error"`
}

type overview struct {
	Received       int64        `json:"received"`
	DeliveredFirst int64        `json:"delivered_first_attempt"`
	DeliveredRetry int64        `json:"delivered_after_retries"`
	Nodes          []nodeStatus `json:"nodes"`
	Ingest         struct {
		Accepted int64 `json:"accepted"`
	} `json:"ingest"`
}

type queueState struct {
	Name     string `json:"name"`
	InFlight int    `json:"in_flight"`
	Nodes    []struct {
		Node     string `json:"node"`
		InFlight int    `json:"in_flight"`
	} `json:"nodes"`
	Queues []struct {
		Source       string `json:"source"`
		Depth        int64  `json:"depth"`
		PendingRetry int64  `json:"pending_retry"`
	} `json:"queues"`
}

type tailEvent struct {
	MessageID    string `json:"message_id"`
	Node         string `json:"node"`
	Destinations []struct {
		Destination string `json:"destination"`
		Status      string `json:"status"`
	} `json:"destinations"`
}

func (e tailEvent) status(dest string) string {
	for _, o := range e.Destinations {
		if o.Destination == dest {
			return o.Status
		}
	}
	return ""
}

// TestClusterView runs three `fanout serve` nodes on one PostgreSQL
// database, with an admin token, and checks that the admin API of any of
// them shows the whole cluster: the overview from each node equals the
// deliveries the sink got, from events sent through all three; the
// destinations' live state from each node shows the deliveries in flight
// on the others; a debugger tail on one node shows an event taken in by a
// second and delivered by the third; and a node killed shows as
// unreachable while the views go on being served.
func TestClusterView(t *testing.T) {
	dsn := pgtest.Start(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: time.Second})
	yaml := clusterYAML(recv.URL) + fmt.Sprintf("admin_token: %s\n", viewToken)
	var nodes []*viewNode
	for range 3 {
		nodes = append(nodes, &viewNode{Server: fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml})})
	}
	ctx := t.Context()
	owner := map[string]*viewNode{} // destination -> the node delivering it
	balanced := func() bool {
		for _, n := range nodes {
			var v struct {
				Self  int64  `json:"self"`
				Name  string `json:"name"`
				Nodes []struct {
					ID         int64  `json:"id"`
					AdminURL   string `json:"admin_url"`
					Live       bool   `json:"live"`
					Partitions []int  `json:"partitions"`
				} `json:"nodes"`
			}
			if _, err := adminGet(ctx, n, "/api/v1/cluster", &v); err != nil || len(v.Nodes) != 3 {
				return false
			}
			n.id, n.name = v.Self, v.Name
			for _, ni := range v.Nodes {
				if !ni.Live || len(ni.Partitions) < 21 || ni.AdminURL == "" {
					return false
				}
				if ni.ID != n.id {
					continue
				}
				if ni.AdminURL != n.AdminURL {
					t.Fatalf("node %s advertises %s, its admin API is at %s", n.name, ni.AdminURL, n.AdminURL)
				}
				for d := range clusterPairs {
					name := fmt.Sprintf("d%d", d)
					if slices.Contains(ni.Partitions, cluster.PartitionOf(name, cluster.DefaultPartitions)) {
						owner[name] = n
					}
				}
			}
		}
		return true
	}
	if !fanouttest.Eventually(ctx, 30*time.Second, balanced) {
		t.Fatal("the three nodes did not share the partitions")
	}
	owners := map[string]bool{}
	for _, n := range owner {
		owners[n.name] = true
	}
	t.Logf("destinations delivered by %d nodes", len(owners))

	// Events through all three nodes, to every source: 24 requests of 25.
	client := &http.Client{Timeout: 30 * time.Second}
	var ids []string
	for r := range 24 {
		var batch []string
		for i := range 25 {
			batch = append(batch, fmt.Sprintf("cv-%d-%d", r, i))
		}
		res, err := postTracks(client, nodes[r%3].TrackingURL+"/v1/batch", fmt.Sprintf("wk_s%d", r%clusterPairs), "Viewed", batch)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("batch %d to node %d: %v %v", r, r%3, res, err)
		}
		ids = append(ids, batch...)
	}

	// Destination state from any node, while deliveries are held by the
	// sink: the deliveries in flight on every node delivering, not only
	// the serving node's.
	for _, n := range nodes {
		var seen map[string]bool
		shown := func() bool {
			var qs []queueState
			if _, err := adminGet(ctx, n, "/api/v1/queues", &qs); err != nil {
				return false
			}
			seen = map[string]bool{}
			for _, q := range qs {
				for _, ns := range q.Nodes {
					if ns.InFlight > 0 {
						if ns.Node != owner[q.Name].name {
							t.Errorf("from %s: %s in flight on %s, but %s owns its partition", n.name, q.Name, ns.Node, owner[q.Name].name)
						}
						seen[ns.Node] = true
					}
				}
			}
			return len(seen) >= min(2, len(owners))
		}
		if !fanouttest.Eventually(ctx, 20*time.Second, shown) {
			t.Errorf("from %s: deliveries in flight shown on nodes %v, want on at least 2 of %v", n.name, seen, owners)
		}
	}

	if !fanouttest.Eventually(ctx, deliverTimeout, func() bool { return len(recv.Missing(ids)) == 0 }) {
		t.Fatalf("%d events not delivered", len(recv.Missing(ids)))
	}
	// The overview from any node is the sum of the deliveries: the
	// outcomes counted by every node, flushed or not.
	want := int64(recv.Total())
	for _, n := range nodes {
		var o overview
		agree := func() bool {
			_, err := adminGet(ctx, n, "/api/v1/overview?range=1h", &o)
			return err == nil && o.DeliveredFirst+o.DeliveredRetry == want && o.Received == int64(len(ids))
		}
		if !fanouttest.Eventually(ctx, 10*time.Second, agree) {
			t.Errorf("overview from %s: %d received, %d+%d delivered; want %d received, %d delivered (the sink's)",
				n.name, o.Received, o.DeliveredFirst, o.DeliveredRetry, len(ids), want)
		}
		if o.Ingest.Accepted != int64(len(ids)) || len(o.Nodes) != 3 {
			t.Errorf("overview from %s: %d accepted, nodes %+v; want %d accepted, 3 nodes", n.name, o.Ingest.Accepted, o.Nodes, len(ids))
		}
		// Every queue is empty, seen from any node: the depths of the
		// nodes that took the events and of those that delivered them add
		// up to zero.
		var qs []queueState
		if _, err := adminGet(ctx, n, "/api/v1/queues", &qs); err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			for _, qq := range q.Queues {
				if qq.Depth != 0 || qq.PendingRetry != 0 {
					t.Errorf("from %s: queue %s -> %s depth %d, pending retry %d after every delivery", n.name, qq.Source, q.Name, qq.Depth, qq.PendingRetry)
				}
			}
		}
	}

	// The debugger of one node shows an event another node took in and a
	// third delivered: watcher, ingest and owner all differ.
	watcher := nodes[0]
	var dest string
	var taker *viewNode
	for d := range clusterPairs {
		name := fmt.Sprintf("d%d", d)
		if o := owner[name]; o != watcher {
			dest = name
			for _, n := range nodes {
				if n != watcher && n != o {
					taker = n
				}
			}
			break
		}
	}
	if taker == nil {
		t.Fatalf("the watcher %s delivers every destination", watcher.name)
	}
	src := "s" + strings.TrimPrefix(dest, "d")
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(tctx, http.MethodGet, watcher.AdminURL+"/api/v1/sources/"+src+"/events/stream", nil)
	req.Header.Set("Authorization", "Bearer "+viewToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("stream from %s: %v %v", watcher.name, res, err)
	}
	defer res.Body.Close()
	lines := bufio.NewScanner(res.Body)
	lines.Buffer(nil, 1<<20)
	// The stream says which nodes it follows first; the event is sent
	// once the two others are followed.
	waitNodes := func() {
		kind := ""
		for lines.Scan() {
			line := lines.Text()
			if k, ok := strings.CutPrefix(line, "event: "); ok {
				kind = k
			}
			if d, ok := strings.CutPrefix(line, "data: "); ok && kind == "nodes" {
				var ns []nodeStatus
				json.Unmarshal([]byte(d), &ns)
				reachable := 0
				for _, s := range ns {
					if s.Reachable {
						reachable++
					}
				}
				if reachable == 3 {
					return
				}
			}
		}
		t.Fatalf("the stream from %s never followed the three nodes: %v", watcher.name, lines.Err())
	}
	waitNodes()
	id := "cv-tail"
	if res, err := postTracks(client, taker.TrackingURL+"/v1/batch", "wk_"+src, "Tailed", []string{id}); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("send to %s: %v %v", taker.name, res, err)
	}
	var last tailEvent
	for lines.Scan() {
		d, ok := strings.CutPrefix(lines.Text(), "data: ")
		if !ok {
			continue
		}
		var ev tailEvent
		if json.Unmarshal([]byte(d), &ev) != nil || ev.MessageID != id {
			continue
		}
		last = ev
		if ev.status(dest) == "delivered" {
			break
		}
	}
	if last.status(dest) != "delivered" || last.Node != taker.name {
		t.Fatalf("tail on %s: last update of %s %+v; want delivered at %s (by %s), taken in by %s",
			watcher.name, id, last, dest, owner[dest].name, taker.name)
	}
	var kept struct {
		Events []tailEvent `json:"events"`
	}
	if _, err := adminGet(ctx, watcher, "/api/v1/sources/"+src+"/events", &kept); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(kept.Events, func(e tailEvent) bool { return e.MessageID == id })
	if i < 0 || kept.Events[i].status(dest) != "delivered" || kept.Events[i].Node != taker.name {
		t.Errorf("events kept, from %s: %s is %+v; want delivered, taken in by %s", watcher.name, id, kept.Events[max(i, 0)], taker.name)
	}

	// A node killed: the others go on serving the views, the dead one
	// listed unreachable.
	dead := nodes[2]
	dead.Kill()
	for _, n := range nodes[:2] {
		start := time.Now()
		var o overview
		if _, err := adminGet(ctx, n, "/api/v1/overview?range=1h", &o); err != nil {
			t.Fatalf("overview from %s with %s dead: %v", n.name, dead.name, err)
		}
		var qs []queueState
		header, err := adminGet(ctx, n, "/api/v1/destinations", &qs)
		if err != nil {
			t.Fatalf("destinations from %s with %s dead: %v", n.name, dead.name, err)
		}
		var hs []nodeStatus
		if err := json.Unmarshal([]byte(header), &hs); err != nil {
			t.Fatalf("Fanout-Nodes header %q: %v", header, err)
		}
		var evs struct {
			Nodes []nodeStatus `json:"nodes"`
		}
		if _, err := adminGet(ctx, n, "/api/v1/sources/"+src+"/events", &evs); err != nil {
			t.Fatalf("events from %s with %s dead: %v", n.name, dead.name, err)
		}
		took := time.Since(start)
		for what, ns := range map[string][]nodeStatus{"overview": o.Nodes, "destinations": hs, "events": evs.Nodes} {
			i := slices.IndexFunc(ns, func(s nodeStatus) bool { return s.Name == dead.name })
			if i < 0 || ns[i].Reachable || ns[i].Error == "" {
				t.Errorf("%s from %s: nodes %+v; want %s unreachable, with why", what, n.name, ns, dead.name)
			}
			if live := slices.IndexFunc(ns, func(s nodeStatus) bool { return s.Name == n.name }); live < 0 || !ns[live].Reachable {
				t.Errorf("%s from %s: nodes %+v; want itself reachable", what, n.name, ns)
			}
		}
		t.Logf("views from %s with %s dead: %v", n.name, dead.name, took.Round(time.Millisecond))
	}
}

// TestClusterReplay: events archived after their retry window on one
// node's watch are replayed from another node, the one not delivering the
// destination, and reach the destination: the archive is the cluster's.
func TestClusterReplay(t *testing.T) {
	dsn := pgtest.Start(t)
	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	got := map[string]int{}
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var ev struct {
			MessageID string `json:"messageId"`
		}
		json.NewDecoder(r.Body).Decode(&ev)
		mu.Lock()
		got[ev.MessageID]++
		mu.Unlock()
	}))
	defer sink.Close()
	yaml := fmt.Sprintf(`admin_token: %s
sources:
  - name: web
    write_key: wk_web
destinations:
  - name: hook
    type: webhook
    sources: [web]
    settings:
      url: %q
    delivery:
      timeout: 5s
      retry_window: 2s
`, viewToken, sink.URL)
	nodes := []*viewNode{
		{Server: fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml})},
		{Server: fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml})},
	}
	ctx := t.Context()
	// The node not delivering hook replays it.
	var replayer *viewNode
	split := func() bool {
		var v struct {
			Self  int64 `json:"self"`
			Nodes []struct {
				ID         int64 `json:"id"`
				Live       bool  `json:"live"`
				Partitions []int `json:"partitions"`
			} `json:"nodes"`
		}
		for _, n := range nodes {
			if _, err := adminGet(ctx, n, "/api/v1/cluster", &v); err != nil || len(v.Nodes) != 2 {
				return false
			}
			for _, ni := range v.Nodes {
				if !ni.Live || len(ni.Partitions) != cluster.DefaultPartitions/2 {
					return false
				}
				if ni.ID == v.Self && !slices.Contains(ni.Partitions, cluster.PartitionOf("hook", cluster.DefaultPartitions)) {
					replayer = n
				}
			}
		}
		return replayer != nil
	}
	if !fanouttest.Eventually(ctx, 30*time.Second, split) {
		t.Fatal("the two nodes did not share the partitions")
	}
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("rp-%d", i))
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for i, n := range nodes {
		if res, err := postTracks(client, n.TrackingURL+"/v1/batch", "wk_web", "Replayed", ids[i*10:(i+1)*10]); err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("send to node %d: %v %v", i, res, err)
		}
	}
	var archived struct {
		Archived int64 `json:"archived"`
	}
	// The destination's circuit opens after a few failures, and the jobs
	// wait for its probes to be archived: a minute, about.
	if !fanouttest.Eventually(ctx, 150*time.Second, func() bool {
		_, err := adminGet(ctx, replayer, "/api/v1/overview?range=1h", &archived)
		return err == nil && archived.Archived == int64(len(ids))
	}) {
		t.Fatalf("overview from the replaying node: %d archived, want %d", archived.Archived, len(ids))
	}
	failing.Store(false)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, replayer.AdminURL+"/api/v1/replay?source=web&destination=hook&range=1h", nil)
	req.Header.Set("Authorization", "Bearer "+viewToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var replayed struct {
		Replayed int `json:"replayed"`
	}
	json.NewDecoder(res.Body).Decode(&replayed)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || replayed.Replayed != len(ids) {
		t.Fatalf("replay from the node not delivering hook: %s, %d replayed; want %d", res.Status, replayed.Replayed, len(ids))
	}
	delivered := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if got[id] == 0 {
				return false
			}
		}
		return true
	}
	if !fanouttest.Eventually(ctx, 60*time.Second, delivered) {
		mu.Lock()
		t.Fatalf("after the replay the destination got %d of %d events", len(got), len(ids))
	}
}
