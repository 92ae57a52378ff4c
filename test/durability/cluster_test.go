package durability_test

import (
	"encoding/json"
	"fmt"
	"net/http"
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

// clusterPairs is how many (source, destination) pairs the cluster test
// configures: source s<i> feeds webhook d<i> only, so that the queues spread
// over the partitions, and so over the nodes.
const clusterPairs = 8

// clusterYAML is the sources and destinations of every node of the cluster
// test: the same on each, as a cluster's nodes must be.
func clusterYAML(url string) string {
	var b strings.Builder
	b.WriteString("sources:\n")
	for i := range clusterPairs {
		fmt.Fprintf(&b, "  - name: s%d\n    write_key: wk_s%d\n", i, i)
	}
	b.WriteString("destinations:\n")
	for i := range clusterPairs {
		fmt.Fprintf(&b, "  - name: d%d\n    type: webhook\n    sources: [s%d]\n    settings:\n      url: %q\n    delivery:\n      timeout: 10s\n", i, i, url)
	}
	return b.String()
}

// clusterLoad sends batches to the nodes in turn, each batch to one source,
// until stopped, and records the messageIds acknowledged.
type clusterLoad struct {
	urls   []string // tracking URLs of the nodes taking load
	client *http.Client

	acked  atomic.Int64
	failed atomic.Int64 // refused or not answered (a node being killed)

	mu    sync.Mutex
	ids   []string
	nodes []atomic.Int64 // acknowledged per node
}

func (l *clusterLoad) run(w int, stop <-chan struct{}, urls func() []string) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		us := urls()
		node := (w + n) % len(us)
		src := (w*7 + n) % clusterPairs
		var ids []string
		for i := range batchSize / 4 {
			ids = append(ids, fmt.Sprintf("cl-%d-%d-%d", w, n, i))
		}
		res, err := postTracks(l.client, us[node]+"/v1/batch", fmt.Sprintf("wk_s%d", src), "Clustered", ids)
		if err != nil {
			l.failed.Add(1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if res.StatusCode != http.StatusOK {
			l.failed.Add(1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.mu.Lock()
		l.ids = append(l.ids, ids...)
		l.mu.Unlock()
		l.acked.Add(int64(len(ids)))
	}
}

// drain lets the load run on until 2,000 more events are acknowledged (30 s
// at most), stops it, and waits up to deliverTimeout for recv to have every
// event acknowledged: it returns those, the ones still missing, and whether
// none is.
func (l *clusterLoad) drain(t *testing.T, stop chan struct{}, wg *sync.WaitGroup, recv *fanouttest.Receiver) (acked, lost []string, ok bool) {
	t.Helper()
	from := l.acked.Load()
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= from+2_000 })
	close(stop)
	wg.Wait()
	acked = l.ackedIDs()
	ok = fanouttest.Eventually(t.Context(), deliverTimeout, func() bool { return len(recv.Missing(acked)) == 0 })
	return acked, recv.Missing(acked), ok
}

func (l *clusterLoad) ackedIDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ids...)
}

func getCluster(t *testing.T, adminURL string) (fanouttest.ClusterView, error) {
	var v fanouttest.ClusterView
	res, err := http.Get(adminURL + "/api/v1/cluster")
	if err != nil {
		return v, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /api/v1/cluster: %s", res.Status)
	}
	return v, json.NewDecoder(res.Body).Decode(&v)
}

// TestClusterFailover runs three `fanout serve` nodes on one PostgreSQL
// database. Events sent to any node are delivered; one node is SIGKILLed
// while events stream in and deliveries are in flight; the other two take
// its partitions over (within the lease, 5 s, plus a heartbeat), and every
// event any node acknowledged, before or after the kill, reaches the
// destination.
func TestClusterFailover(t *testing.T) {
	dsn := pgtest.Start(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: latency})
	yaml := clusterYAML(recv.URL)
	var nodes []*fanouttest.Server
	for range 3 {
		nodes = append(nodes, fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}))
	}
	// The three share the partitions.
	balanced := func() bool {
		v, err := getCluster(t, nodes[0].AdminURL)
		if err != nil || len(v.Nodes) != 3 {
			return false
		}
		for _, n := range v.Nodes {
			if !n.Live || len(n.Partitions) < 21 {
				return false
			}
		}
		return true
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, balanced) {
		v, err := getCluster(t, nodes[0].AdminURL)
		t.Fatalf("the three nodes did not share the partitions: %+v %v", v, err)
	}

	var live atomic.Pointer[[]string]
	urls := []string{nodes[0].TrackingURL, nodes[1].TrackingURL, nodes[2].TrackingURL}
	live.Store(&urls)
	l := &clusterLoad{client: &http.Client{Timeout: 30 * time.Second}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() { l.run(w, stop, func() []string { return *live.Load() }) })
	}
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= 3_000 })
	fanouttest.Eventually(t.Context(), inFlightTimeout, func() bool { return recv.InFlight() > 0 })

	// Kill the node that delivers the most destinations; the load goes on
	// to the two others.
	before, err := getCluster(t, nodes[0].AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	vi, most := 0, -1
	for i, n := range before.Nodes {
		var dests []string
		for d := range clusterPairs {
			if slices.Contains(n.Partitions, cluster.PartitionOf(fmt.Sprintf("d%d", d), cluster.DefaultPartitions)) {
				dests = append(dests, fmt.Sprintf("d%d", d))
			}
		}
		t.Logf("node %d (%s): %d partitions, delivers %v", n.ID, n.Name, len(n.Partitions), dests)
		if len(dests) > most {
			vi, most = i, len(dests)
		}
	}
	victim := nodes[vi]
	var rest []string
	for i, u := range urls {
		if i != vi {
			rest = append(rest, u)
		}
	}
	live.Store(&rest)
	victim.Kill()
	killedAt := time.Now()
	// Taken over: the victim holds no lease any more (its leases ran out),
	// and the two live nodes hold all 64 partitions.
	victimID := before.Nodes[vi].ID
	watcher := nodes[(vi+1)%3]
	taken := func() bool {
		v, err := getCluster(t, watcher.AdminURL)
		if err != nil {
			return false
		}
		owned := 0
		for _, n := range v.Nodes {
			if n.ID == victimID && len(n.Partitions) > 0 {
				return false
			}
			if n.Live {
				owned += len(n.Partitions)
			}
		}
		return owned == 64
	}
	if !fanouttest.Eventually(t.Context(), 20*time.Second, taken) {
		v, _ := getCluster(t, watcher.AdminURL)
		t.Fatalf("the killed node's partitions were not taken over within 20s: %+v", v)
	}
	takeover := time.Since(killedAt)
	if takeover > 10*time.Second {
		t.Errorf("takeover took %v, more than the 10 s promised", takeover)
	}
	acked, lost, ok := l.drain(t, stop, &wg, recv)
	t.Logf("3 nodes, one killed: takeover in %v; %d events acknowledged, %d delivered, %d duplicates, %d requests refused or failed",
		takeover.Round(time.Millisecond), len(acked), len(acked)-len(lost), duplicates(recv, acked), l.failed.Load())
	if !ok {
		t.Fatalf("%d acknowledged events not delivered %v after the takeover; first: %v",
			len(lost), deliverTimeout, first(lost, 10))
	}
	if bad := recv.Bad(); len(bad) > 0 {
		t.Errorf("bad deliveries: %v", first(bad, 5))
	}
}

// mostDestinations returns the index in v.Nodes of the node that delivers
// the most of the test's destinations.
func mostDestinations(v fanouttest.ClusterView) int {
	vi, most := 0, -1
	for i, n := range v.Nodes {
		k := 0
		for d := range clusterPairs {
			if slices.Contains(n.Partitions, cluster.PartitionOf(fmt.Sprintf("d%d", d), cluster.DefaultPartitions)) {
				k++
			}
		}
		if k > most {
			vi, most = i, k
		}
	}
	return vi
}

// TestClusterPausedNode pauses (SIGSTOP) one of two nodes under load, with
// deliveries in flight: its leases run out and the other node takes its
// partitions over. Resumed (SIGCONT), the paused node finds its partitions
// lost, drops its queues, rejoins and takes its share back from the other
// node, which hands over partitions it is delivering. Through both moves,
// every acknowledged event is delivered.
func TestClusterPausedNode(t *testing.T) {
	dsn := pgtest.Start(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: latency})
	yaml := clusterYAML(recv.URL)
	nodes := []*fanouttest.Server{
		fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}),
		fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}),
	}
	shared := func(watch *fanouttest.Server) func() bool {
		return func() bool {
			v, err := getCluster(t, watch.AdminURL)
			if err != nil {
				return false
			}
			live := 0
			for _, n := range v.Nodes {
				if n.Live && len(n.Partitions) == 32 {
					live++
				}
			}
			return live == 2
		}
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, shared(nodes[0])) {
		t.Fatal("the two nodes did not share the partitions")
	}
	before, err := getCluster(t, nodes[0].AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	vi := mostDestinations(before)
	victim, other := nodes[vi], nodes[1-vi]
	victimID := before.Nodes[vi].ID

	// The load goes to the node that stays up.
	l := &clusterLoad{client: &http.Client{Timeout: 30 * time.Second}}
	urls := []string{other.TrackingURL}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() { l.run(w, stop, func() []string { return urls }) })
	}
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= 2_000 })
	fanouttest.Eventually(t.Context(), inFlightTimeout, func() bool { return recv.InFlight() > 0 })
	if err := victim.Pause(); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	takenOver := func() bool {
		v, err := getCluster(t, other.AdminURL)
		if err != nil {
			return false
		}
		for _, n := range v.Nodes {
			if n.ID == victimID && len(n.Partitions) > 0 {
				return false
			}
			if n.ID != victimID && len(n.Partitions) == 64 {
				return true
			}
		}
		return false
	}
	if !fanouttest.Eventually(t.Context(), 20*time.Second, takenOver) {
		victim.Resume()
		t.Fatal("the paused node's partitions were not taken over within 20s")
	}
	t.Logf("paused node's partitions taken over in %v", time.Since(pausedAt).Round(time.Millisecond))
	time.Sleep(time.Second)
	if err := victim.Resume(); err != nil {
		t.Fatal(err)
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, shared(other)) {
		v, _ := getCluster(t, other.AdminURL)
		t.Fatalf("the resumed node did not take its share back: %+v", v)
	}
	ids, lost, ok := l.drain(t, stop, &wg, recv)
	t.Logf("one of two nodes paused and resumed: %d events acknowledged, %d delivered, %d duplicates",
		len(ids), len(ids)-len(lost), duplicates(recv, ids))
	if !ok {
		t.Fatalf("%d acknowledged events not delivered; first: %v", len(lost), first(lost, 10))
	}
	if victim.Exited() || other.Exited() {
		t.Errorf("a node exited")
	}
}
