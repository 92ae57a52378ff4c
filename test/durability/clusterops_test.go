package durability_test

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/test/fanouttest"
)

// lease is the cluster's lease at the defaults the nodes run with: the
// longest a partition may go undelivered when a node dies, and more than
// it may when one joins or leaves.
const lease = cluster.DefaultLease

// receivers is one webhook receiver per destination d<i> of clusterYAML,
// so that a pause in one destination's deliveries shows.
type receivers []*fanouttest.Receiver

func newReceivers(t *testing.T) receivers {
	rs := make(receivers, clusterPairs)
	for i := range rs {
		rs[i] = fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: latency})
	}
	return rs
}

// yaml is clusterYAML with destination d<i> delivering to receiver i.
func (rs receivers) yaml() string {
	y := clusterYAML("RECEIVER")
	for _, r := range rs {
		y = strings.Replace(y, `"RECEIVER"`, fmt.Sprintf("%q", r.URL), 1)
	}
	return y
}

func (rs receivers) missing(ids []string) []string {
	var out []string
	for _, id := range ids {
		if !slices.ContainsFunc(rs, func(r *fanouttest.Receiver) bool { return r.Count(id) > 0 }) {
			out = append(out, id)
		}
	}
	return out
}

// watchPauses samples every receiver's count until stop is called, and
// returns, per destination, the longest time its count did not move. The
// load keeps every destination busy, so a pause is a destination nobody
// delivered.
func (rs receivers) watchPauses() (stop func() []time.Duration) {
	done := make(chan struct{})
	longest := make([]time.Duration, len(rs))
	var wg sync.WaitGroup
	wg.Go(func() {
		last := make([]int, len(rs))
		since := make([]time.Time, len(rs))
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			now := time.Now()
			for i, r := range rs {
				if n := r.Total(); n != last[i] || since[i].IsZero() {
					last[i], since[i] = n, now
				}
				longest[i] = max(longest[i], now.Sub(since[i]))
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() []time.Duration {
		close(done)
		wg.Wait()
		return longest
	}
}

// balanced reports whether n live nodes share every partition, each its
// share, as the node at adminURL sees them.
func balanced(t *testing.T, adminURL string, n int) bool {
	v, err := getCluster(t, adminURL)
	if err != nil {
		return false
	}
	live, owned := 0, 0
	for _, nd := range v.Nodes {
		if nd.Live {
			live++
			owned += len(nd.Partitions)
			if len(nd.Partitions) < cluster.DefaultPartitions/n {
				return false
			}
		}
	}
	return live == n && owned == cluster.DefaultPartitions
}

// destinationsOf lists the destinations d<i> whose partition the node
// with id holds in v.
func destinationsOf(v fanouttest.ClusterView, id int64) []int {
	var out []int
	for _, nd := range v.Nodes {
		if nd.ID != id {
			continue
		}
		for d := range clusterPairs {
			if slices.Contains(nd.Partitions, cluster.PartitionOf(fmt.Sprintf("d%d", d), cluster.DefaultPartitions)) {
				out = append(out, d)
			}
		}
	}
	return out
}

// TestClusterJoinLeave runs two nodes under load, starts a third, which
// joins and takes its share of the partitions from the two, then stops
// one node cleanly (SIGTERM), which hands its partitions to the others.
// Through both moves no destination goes undelivered for as long as a
// lease (a dead node's partitions wait that long; a node joining or
// leaving hands them over at once), and every acknowledged event is
// delivered.
func TestClusterJoinLeave(t *testing.T) {
	dsn := pgtest.Start(t)
	rs := newReceivers(t)
	yaml := rs.yaml()
	nodes := []*fanouttest.Server{
		fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}),
		fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}),
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return balanced(t, nodes[0].AdminURL, 2) }) {
		t.Fatal("the two nodes did not share the partitions")
	}
	var live atomic.Pointer[[]string]
	urls := []string{nodes[0].TrackingURL, nodes[1].TrackingURL}
	live.Store(&urls)
	l := &clusterLoad{client: &http.Client{Timeout: 30 * time.Second}}
	l.start(func() []string { return *live.Load() })
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= 2_000 })

	// Join: a third node starts and the partitions are shared by three.
	stopWatch := rs.watchPauses()
	joinedAt := time.Now()
	nodes = append(nodes, fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}))
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return balanced(t, nodes[0].AdminURL, 3) }) {
		v, _ := getCluster(t, nodes[0].AdminURL)
		t.Fatalf("the third node did not take its share: %+v", v)
	}
	t.Logf("join: balanced over 3 nodes %v after the third node started", time.Since(joinedAt).Round(time.Millisecond))
	checkCoresShared(t, nodes)
	all := []string{nodes[0].TrackingURL, nodes[1].TrackingURL, nodes[2].TrackingURL}
	live.Store(&all)
	time.Sleep(time.Second) // deliveries go on after the move
	checkPauses(t, "join", stopWatch())

	// Leave: the node delivering the most destinations stops cleanly; the
	// load moves off it first.
	v, err := getCluster(t, nodes[0].AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	vi := mostDestinations(v)
	leaving := nodes[vi]
	t.Logf("leave: node %s delivers d%v", v.Nodes[vi].Name, destinationsOf(v, v.Nodes[vi].ID))
	var rest []string
	for i, n := range nodes {
		if i != vi {
			rest = append(rest, n.TrackingURL)
		}
	}
	live.Store(&rest)
	watcher := nodes[(vi+1)%3]
	stopWatch = rs.watchPauses()
	leftAt := time.Now()
	if err := leaving.Stop(); err != nil {
		t.Errorf("the leaving node: %v", err)
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return balanced(t, watcher.AdminURL, 2) }) {
		v, _ := getCluster(t, watcher.AdminURL)
		t.Fatalf("the two remaining nodes did not take the partitions: %+v", v)
	}
	t.Logf("leave: balanced over 2 nodes %v after SIGTERM", time.Since(leftAt).Round(time.Millisecond))
	checkCoresShared(t, slices.Delete(slices.Clone(nodes), vi, vi+1))
	time.Sleep(time.Second)
	checkPauses(t, "leave", stopWatch())

	from := l.acked.Load()
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= from+2_000 })
	l.halt()
	acked := l.ackedIDs()
	ok := fanouttest.Eventually(t.Context(), deliverTimeout, func() bool { return len(rs.missing(acked)) == 0 })
	lost := rs.missing(acked)
	t.Logf("join and leave under load: %d events acknowledged, %d delivered, %d requests refused or failed",
		len(acked), len(acked)-len(lost), l.failed.Load())
	if !ok {
		t.Fatalf("%d acknowledged events not delivered; first: %v", len(lost), first(lost, 10))
	}
	for i, r := range rs {
		if bad := r.Bad(); len(bad) > 0 {
			t.Errorf("d%d: bad deliveries: %v", i, first(bad, 5))
		}
	}
}

// checkCoresShared waits until every node of nodes, all on this machine,
// runs on its share of the machine's cores: GOMAXPROCS (from /metrics) the
// cores over the nodes, rounded up, at most the runtime's default, which
// this test process has too.
func checkCoresShared(t *testing.T, nodes []*fanouttest.Server) {
	t.Helper()
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok {
		t.Log("GOMAXPROCS is set in the environment: the nodes keep it")
		return
	}
	want := min(runtime.GOMAXPROCS(0), (runtime.NumCPU()+len(nodes)-1)/len(nodes))
	procs := func(s *fanouttest.Server) string {
		lines := s.Metrics(t, "go_sched_gomaxprocs_threads ")
		if len(lines) != 1 {
			t.Fatalf("go_sched_gomaxprocs_threads: %q", lines)
		}
		return strings.Fields(lines[0])[1]
	}
	ok := fanouttest.Eventually(t.Context(), 10*time.Second, func() bool {
		for _, s := range nodes {
			if procs(s) != strconv.Itoa(want) {
				return false
			}
		}
		return true
	})
	var got []string
	for _, s := range nodes {
		got = append(got, procs(s))
	}
	if !ok {
		t.Errorf("%d nodes on %d cores: GOMAXPROCS %v, want %d each", len(nodes), runtime.NumCPU(), got, want)
	}
	t.Logf("%d nodes on %d cores: GOMAXPROCS %v", len(nodes), runtime.NumCPU(), got)
}

// checkPauses fails the test if a destination went undelivered for a
// lease or longer during a membership change.
func checkPauses(t *testing.T, move string, pauses []time.Duration) {
	t.Helper()
	worst := slices.Max(pauses)
	t.Logf("%s: longest pause of a destination's deliveries %v (per destination %v)", move, worst.Round(time.Millisecond), pauses)
	if worst >= lease {
		t.Errorf("%s: a destination went undelivered for %v, not less than a lease (%v)", move, worst.Round(time.Millisecond), lease)
	}
}

// TestClusterRateLimit floods one destination, limited to rateLimit
// requests/s, with three times that, spread over three nodes: it receives
// about rateLimit requests/s, as from one node, not three times that.
func TestClusterRateLimit(t *testing.T) {
	const (
		rateLimit = 40
		warmup    = 2 * time.Second // spends the limiter's burst
		window    = 4 * time.Second
	)
	dsn := pgtest.Start(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{})
	yaml := fmt.Sprintf(`sources:
  - name: lim
    write_key: wk_lim
destinations:
  - name: limited
    type: webhook
    sources: [lim]
    settings:
      url: %q
    delivery:
      rate_limit: %d
`, recv.URL, rateLimit)
	var nodes []*fanouttest.Server
	for range 3 {
		nodes = append(nodes, fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}))
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return balanced(t, nodes[0].AdminURL, 3) }) {
		t.Fatal("the three nodes did not share the partitions")
	}

	// Every 100 ms, a batch of three tenths of the limit to the next node.
	client := &http.Client{Timeout: 10 * time.Second}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			ids := make([]string, 3*rateLimit/10)
			for i := range ids {
				ids[i] = fmt.Sprintf("rl-%d-%d", n, i)
			}
			res, err := postTracks(client, nodes[n%3].TrackingURL+"/v1/batch", "wk_lim", "Limited", ids)
			if err != nil || res.StatusCode != http.StatusOK {
				t.Errorf("batch %d to node %d: %v %v", n, n%3, err, res)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()
	time.Sleep(warmup)
	n0, t0 := recv.Total(), time.Now()
	time.Sleep(window)
	got := float64(recv.Total()-n0) / time.Since(t0).Seconds()
	t.Logf("offered %d events/s over 3 nodes to a destination limited to %d requests/s: it received %.1f/s", 3*rateLimit, rateLimit, got)
	// Each node applying the limit on its own would give 3 x rateLimit.
	if got > 1.2*rateLimit || got < 0.7*rateLimit {
		t.Errorf("received %.1f requests/s, want about %d (within -30%%/+20%%)", got, rateLimit)
	}
}
