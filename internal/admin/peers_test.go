package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/debugger"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/internal/router"
	"github.com/fanout/fanout/internal/stats"
)

func at(s int) *time.Time {
	t := time.Date(2026, 12, 6, 10, 0, s, 0, time.UTC)
	return &t
}

// mergeStates adds the nodes' counts, keeps the latest pause, the earliest
// retry and probe, the concurrency of the nodes holding queues, and takes
// depth and pending retries from the cluster's gauges.
func TestMergeStates(t *testing.T) {
	a := []*State{
		{Name: "hook", InFlight: 3, Concurrency: 4, Owned: true, Queues: []QueueState{
			{Source: "web", Buffered: 5, InFlight: 3, Limit: 4, Depth: 40, PausedUntil: at(10), PauseReason: "retry-after", RetryNext: at(30)},
		}},
		{Name: "crm", Concurrency: 10, Queues: []QueueState{}},
	}
	b := []*State{
		{Name: "hook", InFlight: 1, Concurrency: 10, Queues: []QueueState{
			{Source: "web", Buffered: 2, InFlight: 1, Limit: 2, Depth: -7, PausedUntil: at(20), PauseReason: "throttled", RetryNext: at(25), Throttled: 1},
			{Source: "app", Backlog: true},
		}},
		{Name: "crm", Concurrency: 10, CircuitOpen: true, ProbeAt: at(50), Queues: []QueueState{}},
	}
	gauges := map[stats.Pair]stats.Gauges{
		{Source: "web", Destination: "hook"}: {Depth: 33, PendingRetry: 2},
		{Source: "app", Destination: "hook"}: {Depth: 1},
		{Source: "web", Destination: "crm"}:  {Depth: 4, PendingRetry: 4}, // on disk, held by no scheduler
		{Source: "web", Destination: "gone"}: {Depth: 9},                  // not a destination any node has
	}
	cases := []struct {
		name   string
		gauges map[stats.Pair]stats.Gauges
		hook   QueueState // web -> hook
		crm    []QueueState
	}{
		{"with the cluster's gauges", gauges,
			QueueState{Source: "web", Buffered: 7, InFlight: 4, Limit: 4, Depth: 33, PendingRetry: 2, PausedUntil: at(20),
				PauseReason: "throttled", RetryNext: at(25), Throttled: 1, Nodes: []string{"a", "b"}},
			[]QueueState{{Source: "web", Depth: 4, PendingRetry: 4}}},
		{"without", nil,
			QueueState{Source: "web", Buffered: 7, InFlight: 4, Limit: 4, Depth: 33, PausedUntil: at(20),
				PauseReason: "throttled", RetryNext: at(25), Throttled: 1, Nodes: []string{"a", "b"}},
			[]QueueState{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := mergeStates([]namedPart[[]*State]{{node: "a", v: a}, {node: "b", v: b}}, c.gauges)
			hook, crm := got["hook"], got["crm"]
			if len(got) != 2 || hook == nil || crm == nil {
				t.Fatalf("merged %v, want hook and crm", got)
			}
			if hook.InFlight != 4 || hook.Concurrency != 4 || len(hook.Nodes) != 2 || !hook.Nodes[0].Owner || hook.Nodes[1].Owner ||
				hook.Queues[1].Source != "web" {
				t.Errorf("hook: %+v, want 4 in flight, the concurrency of a (the owner), on a and b, app then web", hook)
			}
			if q := hook.Queues[1]; fmt.Sprint(q) != fmt.Sprint(c.hook) {
				t.Errorf("web -> hook\n got %+v\nwant %+v", q, c.hook)
			}
			if q := hook.Queues[0]; !q.Backlog || q.Nodes[0] != "b" {
				t.Errorf("app -> hook: %+v, want the backlog b has", q)
			}
			if !crm.CircuitOpen || !crm.ProbeAt.Equal(*at(50)) || len(crm.Nodes) != 1 || crm.Nodes[0].Node != "b" ||
				fmt.Sprint(crm.Queues) != fmt.Sprint(c.crm) {
				t.Errorf("crm: %+v, want the circuit b has open, queues %+v", crm, c.crm)
			}
		})
	}
}

// node is one admin API of a test cluster, on a real HTTP server, with
// its own stats and debugger.
type node struct {
	peer  Peer
	h     *handler
	dbg   *debugger.Debugger
	stats *stats.Stats
	srv   *httptest.Server
	clock *clock.Fake

	mu       sync.Mutex
	requests []string // the requests other nodes made
}

const testToken = "tok"

// clusterOptions shape a testCluster.
type clusterOptions struct {
	// stats opens a node's stats, on the clock now; default a Pebble
	// database of its own.
	stats func(t *testing.T, name string, now func() time.Time) *stats.Stats
	// idle: no node's scheduler holds a queue; otherwise the second
	// delivers hook, 3 jobs buffered and 2 in flight.
	idle bool
	// wrap, when set, wraps each node's admin API, to watch or hold
	// what it answers.
	wrap func(nd *node, api http.Handler) http.Handler
}

func pebbleStats(t *testing.T, _ string, now func() time.Time) *stats.Stats {
	st, err := stats.Open(stats.Options{Dir: filepath.Join(t.TempDir(), "stats"), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// testCluster starts n admin APIs that list each other, plus a node
// that died (no heartbeat), one whose listener is closed (live in the
// list, refusing connections) and one whose URL reaches another node.
func testCluster(t *testing.T, n int, o clusterOptions) []*node {
	t.Helper()
	cfg := &config.Config{
		Sources:      []config.Source{{Name: "web"}},
		Destinations: []config.Destination{{Name: "hook", Type: "webhook", Sources: []string{"web"}}},
	}
	var nodes []*node
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	list := func(self int64) []Peer {
		out := []Peer{{ID: 90, Name: "dead", AdminURL: closed.URL}, {ID: 91, Name: "closed", AdminURL: closed.URL, Live: true},
			// Its admin URL reaches n1, as a loopback admin_listen
			// advertised to another host would.
			{ID: 92, Name: "astray", AdminURL: nodes[0].srv.URL, Live: true}}
		for _, nd := range nodes {
			p := nd.peer
			p.Self = p.ID == self
			out = append(out, p)
		}
		return out
	}
	if o.stats == nil {
		o.stats = pebbleStats
	}
	// The nodes' clock, their stats' too, moves only when a test moves
	// it: until then every cluster-wide view of a node shares its first
	// flush round (minFlushGap).
	clk := clock.NewFake(time.Now())
	for i := range n {
		st := o.stats(t, fmt.Sprintf("n%d", i+1), clk.Now)
		nd := &node{dbg: debugger.New(nil), stats: st, clock: clk}
		id := int64(i + 1)
		state := func(context.Context) []delivery.DestinationState {
			ds := delivery.DestinationState{Name: "hook", Concurrency: 8}
			if i == 1 && !o.idle { // the second node delivers hook
				ds.InFlight = 2
				ds.Queues = []delivery.QueueState{{Queue: jobstore.Queue{Source: "web", Destination: "hook"}, Buffered: 3, InFlight: 2}}
			}
			return []delivery.DestinationState{ds}
		}
		nd.h = New(Options{Config: cfg, Registry: destinations.Registry{}, State: state, Stats: st, Debugger: nd.dbg, Token: testToken, NodeID: id, Clock: clk,
			Peers: func(context.Context) ([]Peer, error) { return list(id), nil }}).(*handler)
		var api http.Handler = nd.h
		if o.wrap != nil {
			api = o.wrap(nd, api)
		}
		nd.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get(localParam) == "1" {
				nd.mu.Lock()
				nd.requests = append(nd.requests, r.Method+" "+r.URL.Path)
				nd.mu.Unlock()
			}
			api.ServeHTTP(w, r)
		}))
		t.Cleanup(nd.srv.Close)
		nd.peer = Peer{ID: id, Name: fmt.Sprintf("n%d", i+1), AdminURL: nd.srv.URL, Live: true}
		nodes = append(nodes, nd)
	}
	return nodes
}

func getJSON(t *testing.T, url string, v any) http.Header {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
	return res.Header
}

// checkNodes wants n1..n3 reachable, the dead, the closed and the astray
// node not, each with a reason.
func checkNodes(t *testing.T, what string, ns []NodeStatus) {
	t.Helper()
	got := map[string]bool{}
	for _, s := range ns {
		got[s.Name] = s.Reachable
		if !s.Reachable && s.Error == "" {
			t.Errorf("%s: %s unreachable without a reason", what, s.Name)
		}
	}
	want := map[string]bool{"n1": true, "n2": true, "n3": true, "dead": false, "closed": false, "astray": false}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: nodes reachable %v, want %v", what, got, want)
	}
}

// The views of any node cover every node over real HTTP, with the token;
// the others are asked for their own part only (local=1), never in a
// loop; the dead and the unreachable node are listed, not fatal.
func TestClusterViews(t *testing.T) {
	nodes := testCluster(t, 3, clusterOptions{})
	received := time.Now().Add(-time.Second)
	// n3 takes the event in, n2 delivers it.
	e := jobstore.Entry{Event: event.Event{Source: "web", MessageID: "m1", Type: event.Track, ReceivedAt: received, Payload: []byte(`{}`)}}
	rep := ingest.Report{Source: "web", Status: 200, Accepted: []jobstore.Entry{e}, Routes: []router.Decision{{To: []string{"hook"}}}}
	nodes[2].dbg.ObserveIngest(rep)
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	dr := delivery.Report{Queue: q, Job: &jobstore.Job{Queue: q, Event: e.Event, Attempts: 1}, End: delivery.EndDelivered, At: received.Add(time.Second)}
	nodes[1].dbg.Observe(dr)

	for _, nd := range nodes {
		var qs []*State
		h := getJSON(t, nd.srv.URL+"/api/v1/queues", &qs)
		var ns []NodeStatus
		if err := json.Unmarshal([]byte(h.Get(nodesHeader)), &ns); err != nil {
			t.Fatalf("%s header %q: %v", nodesHeader, h.Get(nodesHeader), err)
		}
		checkNodes(t, nd.peer.Name+" queues", ns)
		if len(qs) != 1 || qs[0].InFlight != 2 || len(qs[0].Nodes) != 1 || qs[0].Nodes[0].Node != "n2" || qs[0].Queues[0].Buffered != 3 {
			t.Errorf("queues from %s: %+v, want hook with n2's 2 in flight and 3 buffered", nd.peer.Name, qs)
		}

		var evs struct {
			Events []debugger.Event `json:"events"`
			Nodes  []NodeStatus     `json:"nodes"`
		}
		getJSON(t, nd.srv.URL+"/api/v1/sources/web/events", &evs)
		checkNodes(t, nd.peer.Name+" events", evs.Nodes)
		if len(evs.Events) != 1 || evs.Events[0].Node != "n3" || evs.Events[0].Destinations[0].Status != debugger.StatusDelivered {
			t.Errorf("events from %s: %+v, want m1 from n3, delivered (by n2)", nd.peer.Name, evs.Events)
		}

		// The stats views ask every node to flush first (the sums are
		// the database's: TestClusterView in test/durability); the
		// queues' view and this one share the round (flushRounds).
		var o struct {
			Nodes []NodeStatus `json:"nodes"`
		}
		getJSON(t, nd.srv.URL+"/api/v1/overview?range=1h", &o)
		checkNodes(t, nd.peer.Name+" overview", o.Nodes)
	}
	// Every request a node got from the others was for its own part: two
	// nodes asked each, and n1 was asked for astray's by all three too.
	// Each node made one flush round, shared by its queues and overview.
	for i, nd := range nodes {
		nd.mu.Lock()
		reqs := slices.Clone(nd.requests)
		nd.mu.Unlock()
		k := 2
		if i == 0 {
			k += 3
		}
		want := map[string]int{
			"GET /api/v1/queues": k, "POST /api/v1/stats/flush": k, "GET /api/v1/sources/web/events": k,
		}
		got := map[string]int{}
		for _, r := range reqs {
			got[r]++
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s was asked %v, want %v (its queues, one flush for queues and overview, events)", nd.peer.Name, got, want)
		}
	}
	// Without the token, another node's part is refused like any request.
	res, err := http.Get(nodes[0].srv.URL + "/api/v1/queues?local=1")
	if err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Errorf("local part without the token: %v %v, want 401", res, err)
	}
}

// The merged stream of one node shows an event another took in with the
// outcome a third reported, and says which nodes it follows.
func TestClusterStream(t *testing.T) {
	nodes := testCluster(t, 3, clusterOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, nodes[0].srv.URL+"/api/v1/sources/web/events/stream", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v %v", res, err)
	}
	defer res.Body.Close()
	type item struct {
		kind string
		data []byte
	}
	items := make(chan item, 64)
	go func() {
		defer close(items)
		readSSE(res.Body, func(kind string, data []byte) error {
			items <- item{kind, slices.Clone(data)}
			return nil
		})
	}()
	// Sent once n2 and n3 are followed.
	for it := range items {
		var ns []NodeStatus
		if it.kind == "nodes" && json.Unmarshal(it.data, &ns) == nil &&
			len(slices.DeleteFunc(ns, func(s NodeStatus) bool { return !s.Reachable })) == 3 {
			break
		}
	}
	now := time.Now()
	e := jobstore.Entry{Event: event.Event{Source: "web", MessageID: "m1", Type: event.Track, ReceivedAt: now, Payload: []byte(`{}`)}}
	nodes[2].dbg.ObserveIngest(ingest.Report{Source: "web", Status: 200, Accepted: []jobstore.Entry{e}, Routes: []router.Decision{{To: []string{"hook"}}}})
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	nodes[1].dbg.Observe(delivery.Report{Queue: q, Job: &jobstore.Job{Queue: q, Event: e.Event, Attempts: 1}, End: delivery.EndDelivered, At: now.Add(time.Millisecond)})
	var last debugger.Event
	for it := range items {
		if it.kind != "event" && it.kind != "outcome" {
			continue
		}
		json.Unmarshal(it.data, &last)
		if last.MessageID == "m1" && last.Destinations[0].Status == debugger.StatusDelivered {
			break
		}
	}
	if last.Node != "n3" || last.Destinations[0].Status != debugger.StatusDelivered {
		t.Fatalf("last streamed %+v, want m1 from n3, delivered", last)
	}
}

// Nodes sharing a PostgreSQL database for their stats answer with the
// same figures at once: a view asks every node to write what it counted
// in memory before it reads. Here no node flushes on its own (no Run):
// only the views' flushes put n1's and n3's counts where n2 reads them.
func TestClusterStatsAgree(t *testing.T) {
	pool := pgtest.Pool(t, pgtest.Start(t))
	nodes := testCluster(t, 3, clusterOptions{idle: true, stats: postgresStats(pool)})
	// n1 takes 3 events in, n2 delivers 2 of them; n3 counts nothing.
	received := nodes[0].clock.Now().Add(-time.Second)
	rep := tracks(3, received)
	nodes[0].stats.ObserveIngest(rep)
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	for _, e := range rep.Accepted[:2] {
		nodes[1].stats.Observe(delivery.Report{Queue: q, Job: &jobstore.Job{Queue: q, Event: e.Event, Attempts: 1},
			End: delivery.EndDelivered, At: received.Add(time.Millisecond)})
	}
	for _, nd := range []*node{nodes[2], nodes[1], nodes[0]} {
		var o struct {
			stats.Overview
			Nodes []NodeStatus `json:"nodes"`
		}
		getJSON(t, nd.srv.URL+"/api/v1/overview?range=1h", &o)
		if o.Received != 3 || o.DeliveredFirst != 2 || o.Ingest.Accepted != 3 || o.Latency.Count != 2 {
			t.Errorf("overview from %s: %+v, ingest %+v; want 3 received (n1's), 2 delivered (n2's)", nd.peer.Name, o.Counts, o.Ingest)
		}
		var qs []*State
		getJSON(t, nd.srv.URL+"/api/v1/queues", &qs)
		if len(qs) != 1 || len(qs[0].Queues) != 1 || qs[0].Queues[0].Depth != 1 {
			t.Errorf("queues from %s: %+v, want hook with web's depth 1 (3 made on n1, 2 ended on n2)", nd.peer.Name, qs)
		}
	}
}

// postgresStats opens each node's stats on pool, rows of its own in the
// database the nodes share.
func postgresStats(pool *pgxpool.Pool) func(t *testing.T, name string, now func() time.Time) *stats.Stats {
	return func(t *testing.T, name string, now func() time.Time) *stats.Stats {
		pg, err := stats.NewPostgres(t.Context(), pool, stats.PostgresOptions{Node: name})
		if err != nil {
			t.Fatal(err)
		}
		st, err := stats.Open(stats.Options{Backend: pg, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
}

// tracks is a tracking API request of n track events of source web, each
// routed to hook, received at received.
func tracks(n int, received time.Time) ingest.Report {
	rep := ingest.Report{Source: "web", Status: 200}
	for i := range n {
		rep.Accepted = append(rep.Accepted, jobstore.Entry{Event: event.Event{Source: "web", MessageID: fmt.Sprint("m", i),
			Type: event.Track, ReceivedAt: received, Payload: []byte(`{}`)}})
		rep.Routes = append(rep.Routes, router.Decision{To: []string{"hook"}})
	}
	return rep
}

// FuzzReadSSE: any stream parses without panicking, and an event written
// by the admin API's stream reads back as written.
func FuzzReadSSE(f *testing.F) {
	f.Add([]byte(": hi\n\nevent: outcome\nid: 3\ndata: {\"seq\":1}\n\n"), "event", `{"a":1}`)
	f.Add([]byte("data: a\r\ndata: b\r\n\r\nevent:x\n"), "nodes", "[]")
	f.Fuzz(func(t *testing.T, junk []byte, kind, data string) {
		readSSE(strings.NewReader(string(junk)), func(string, []byte) error { return nil })
		if kind == "" || strings.ContainsAny(kind+data, "\r\n") {
			return
		}
		stream := fmt.Sprintf(": following\n\nevent: %s\nid: 1\ndata: %s\n\n", kind, data)
		var got []string
		err := readSSE(strings.NewReader(stream), func(k string, d []byte) error {
			got = append(got, k, string(d))
			return nil
		})
		// The one space after the colon goes, as the format says; the
		// value's own stay.
		want := []string{kind, data}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("read %q: %q, %v; want %q", stream, got, err, want)
		}
	})
}
