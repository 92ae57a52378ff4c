package durability_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

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

	stop chan struct{} // closed by halt
	wg   sync.WaitGroup
}

// start runs senders goroutines sending to the nodes urls returns at each
// batch, until halt.
func (l *clusterLoad) start(urls func() []string) {
	l.stop = make(chan struct{})
	for w := range senders {
		l.wg.Go(func() { l.run(w, l.stop, urls) })
	}
}

// halt stops the senders and waits for them.
func (l *clusterLoad) halt() {
	close(l.stop)
	l.wg.Wait()
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
func (l *clusterLoad) drain(t *testing.T, recv *fanouttest.Receiver) (acked, lost []string, ok bool) {
	t.Helper()
	from := l.acked.Load()
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= from+2_000 })
	l.halt()
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
	l.start(func() []string { return *live.Load() })
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
	acked, lost, ok := l.drain(t, recv)
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
	if !fanouttest.Eventually(t.Context(), 30*time.Second, twoShare(t, nodes[0])) {
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
	l.start(func() []string { return urls })
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
	if !fanouttest.Eventually(t.Context(), 30*time.Second, twoShare(t, other)) {
		v, _ := getCluster(t, other.AdminURL)
		t.Fatalf("the resumed node did not take its share back: %+v", v)
	}
	ids, lost, ok := l.drain(t, recv)
	t.Logf("one of two nodes paused and resumed: %d events acknowledged, %d delivered, %d duplicates",
		len(ids), len(ids)-len(lost), duplicates(recv, ids))
	if !ok {
		t.Fatalf("%d acknowledged events not delivered; first: %v", len(lost), first(lost, 10))
	}
	if victim.Exited() || other.Exited() {
		t.Errorf("a node exited")
	}
}

// The slow destination of TestClusterLostNetwork keeps the cut-off node
// busy: lostNetworkEvents events, sent one request at a time to a receiver
// that holds each for lostNetworkLatency, so that the jobs the node has
// loaded before the cut last it the whole cut. A node that went on
// delivering without its lease would still be sending them; with the fast
// destinations alone, it would have run out of loaded jobs within
// milliseconds of the cut, and its stillness would prove nothing.
const (
	lostNetworkLatency = 200 * time.Millisecond
	lostNetworkEvents  = 150
)

// lostNetworkSlowName is a destination name in partitions 0-31: the node
// started first keeps those when the second joins (a node over its share
// hands its highest partitions over), and the first node is the one cut off.
func lostNetworkSlowName() string {
	for i := 0; ; i++ {
		if name := fmt.Sprintf("slow%d", i); cluster.PartitionOf(name, cluster.DefaultPartitions) < cluster.DefaultPartitions/2 {
			return name
		}
	}
}

// proxiedDSN starts a Partition in front of the PostgreSQL of dsn (a Unix
// socket, as pgtest's) and returns it with the DSN that reaches the same
// database through it.
func proxiedDSN(t *testing.T, dsn string) (*fanouttest.Partition, string) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(cfg.Host, fmt.Sprintf(".s.PGSQL.%d", cfg.Port))
	p := fanouttest.NewPartition(t, "unix", socket)
	host, port, err := net.SplitHostPort(p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return p, fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", host, port, cfg.User, cfg.Database)
}

// scrape reads a node's admin /metrics once: every sample, by series.
// The counters and gauges are read when the scrape starts, however long
// the rest of it takes.
func scrape(t *testing.T, s *fanouttest.Server) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, line := range s.Metrics(t, "fanout_") {
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// sumSeries adds the samples of m whose series starts with prefix.
func sumSeries(m map[string]float64, prefix string) float64 {
	total := 0.0
	for series, v := range m {
		if strings.HasPrefix(series, prefix) {
			total += v
		}
	}
	return total
}

// TestClusterLostNetwork cuts one of two nodes off from PostgreSQL, as a
// network partition would (its connections stay open, nothing moves), under
// load sent to the other node and with deliveries in flight, for 15 s, at
// the default lease settings (Heartbeat 1 s, Lease 5 s, Margin 1 s). The
// cut-off node's admin API is not behind the cut: the test reads its
// /metrics.
//
//   - The cut-off node owns no partition past its local deadline, its last
//     renewal (before the cut) plus Lease-Margin, which comes before the
//     other node takes over.
//   - The other node owns every partition within 10 s of the cut.
//   - The cut-off node starts no delivery while cut off: its attempts
//     counter stays still while the other node delivers the slow
//     destination, whose jobs the cut-off node still holds in memory.
//   - Healed, the node takes its share back, every acknowledged event is
//     delivered, and the duplicates are no more than the outcomes the
//     node's fence refused (its log counts them): the attempts whose
//     outcomes the cut kept from the database.
func TestClusterLostNetwork(t *testing.T) {
	const (
		lease, margin   = cluster.DefaultLease, cluster.DefaultLease / 5
		attempts        = "fanout_delivery_attempts_total{"
		ownedPartitions = "fanout_cluster_owned_partitions"
	)
	dsn := pgtest.Start(t)
	link, victimDSN := proxiedDSN(t, dsn)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: latency})
	slowRecv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: lostNetworkLatency})
	slow := lostNetworkSlowName()
	yaml := strings.Replace(clusterYAML(recv.URL), "destinations:\n", "  - name: slow\n    write_key: wk_slow\ndestinations:\n", 1) +
		fmt.Sprintf("  - name: %s\n    type: webhook\n    sources: [slow]\n    settings:\n      url: %q\n    delivery:\n      timeout: 10s\n      concurrency: 1\n", slow, slowRecv.URL)

	// The victim first, alone: it owns every partition, and keeps the
	// lowest half when the other joins.
	victim := fanouttest.Start(t, bin, fanouttest.Config{Postgres: victimDSN, YAML: yaml})
	owns := func(s *fanouttest.Server, n int) func() bool {
		return func() bool { return sumSeries(scrape(t, s), ownedPartitions) == float64(n) }
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, owns(victim, 64)) {
		t.Fatal("the first node did not take every partition")
	}
	other := fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml})
	shared := twoShare(t, other)
	if !fanouttest.Eventually(t.Context(), 30*time.Second, shared) {
		t.Fatal("the two nodes did not share the partitions")
	}
	before, err := getCluster(t, other.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	var victimID int64
	for _, n := range before.Nodes {
		if n.ID != before.Self {
			victimID = n.ID
			if !slices.Contains(n.Partitions, cluster.PartitionOf(slow, cluster.DefaultPartitions)) {
				t.Fatalf("the cut-off node does not deliver %s (partition %d): %v", slow,
					cluster.PartitionOf(slow, cluster.DefaultPartitions), n.Partitions)
			}
		}
	}

	// The load goes to the node that stays connected; the slow destination
	// gets its events once, before the cut.
	client := &http.Client{Timeout: 30 * time.Second}
	var slowIDs []string
	for i := range lostNetworkEvents {
		slowIDs = append(slowIDs, fmt.Sprintf("slow-%d", i))
	}
	if res, err := postTracks(client, other.TrackingURL+"/v1/batch", "wk_slow", "Slow", slowIDs); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("post to the slow source: %v %v", res, err)
	}
	l := &clusterLoad{client: client}
	urls := []string{other.TrackingURL}
	l.start(func() []string { return urls })
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= 2_000 })
	fanouttest.Eventually(t.Context(), inFlightTimeout, func() bool {
		return recv.InFlight() > 0 && slowRecv.InFlight() > 0 && len(slowRecv.Missing(slowIDs)) < lostNetworkEvents-3
	})
	slowAttempts := attempts + "destination=\"" + slow + "\""
	atCut := scrape(t, victim)
	link.Cut()
	cutAt := time.Now()

	// The takeover is watched from the other node, whose view does not go
	// through the cut; the victim's /metrics is slow while it is cut off
	// (a scrape waits up to 2 s for its delivery engine's state), so that
	// its scrapes do not delay the watch.
	takenOver := make(chan time.Duration, 1)
	go func() {
		ok := fanouttest.Eventually(t.Context(), 20*time.Second, func() bool {
			v, err := getCluster(t, other.AdminURL)
			if err != nil {
				return false
			}
			for _, n := range v.Nodes {
				if n.ID != victimID && len(n.Partitions) == 64 {
					return true
				}
			}
			return false
		})
		if !ok {
			takenOver <- -1
			return
		}
		takenOver <- time.Since(cutAt)
	}()

	// At its local deadline, at most Lease-Margin after the cut, the victim
	// stops: it owns no partition on its own clock.
	// Its lease age, read with the owned count, dates its last renewal and
	// so its deadline: the renewal's send time plus Lease-Margin.
	time.Sleep(time.Until(cutAt.Add(lease - margin + 250*time.Millisecond)))
	scraped := time.Now()
	m := scrape(t, victim)
	if sumSeries(m, ownedPartitions) != 0 {
		t.Errorf("the cut-off node still owns %v partitions %v after the cut, past its local deadline (Lease-Margin = %v); its leases were renewed %vs before",
			sumSeries(m, ownedPartitions), scraped.Sub(cutAt).Round(time.Millisecond), lease-margin, sumSeries(m, "fanout_cluster_lease_age_seconds"))
	}
	renewed := scraped.Add(-time.Duration(sumSeries(m, "fanout_cluster_lease_age_seconds") * float64(time.Second))).Sub(cutAt)
	if renewed > 50*time.Millisecond {
		t.Errorf("the cut-off node renewed its leases %v after the cut: the cut let bytes through", renewed)
	}
	deadline := renewed + lease - margin
	takeover := <-takenOver
	if takeover < 0 {
		link.Heal()
		t.Fatal("the cut-off node's partitions were not taken over within 20s")
	}
	if takeover > 10*time.Second {
		t.Errorf("takeover took %v, more than the 10 s promised", takeover)
	}
	if takeover <= deadline {
		t.Errorf("the other node took over %v after the cut, before the cut-off node's local deadline (%v after the cut)", takeover, deadline)
	}

	// And it starts nothing more while cut off. Its attempts counter says
	// so only once its scheduler is free: a destination's scheduler that
	// was writing outcomes or reading jobs at the cut waits for that store
	// call to time out (delivery's storeTimeout, 10 s) before it counts
	// the requests that ended meanwhile. From then on the counter must not
	// move, while the other node delivers the slow destination, whose jobs
	// the victim still holds in memory and would go on sending if it
	// dispatched without its lease.
	const storeTimeout = 10 * time.Second
	time.Sleep(time.Until(cutAt.Add(storeTimeout + 2*time.Second)))
	quiet := scrape(t, victim)
	slowQuiet := slowRecv.Total()
	time.Sleep(3 * time.Second)
	now := scrape(t, victim)
	if slowRecv.Total() < slowQuiet+5 {
		t.Errorf("the other node delivered %d requests to %s in 3 s after the takeover", slowRecv.Total()-slowQuiet, slow)
	}
	if got, was := sumSeries(now, attempts), sumSeries(quiet, attempts); got != was {
		for series, v := range now {
			if strings.HasPrefix(series, attempts) && v != quiet[series] {
				t.Logf("%s: %v then, %v 3 s later", series, quiet[series], v)
			}
		}
		t.Errorf("the cut-off node made %v delivery attempts while cut off, after its lease was gone", got-was)
	}
	healedAt := time.Since(cutAt)
	link.Heal()

	// Healed: the node takes its share back.
	if !fanouttest.Eventually(t.Context(), 30*time.Second, shared) {
		v, _ := getCluster(t, other.AdminURL)
		t.Fatalf("the healed node did not take its share back: %+v", v)
	}
	ids, lost, ok := l.drain(t, recv)
	slowOK := fanouttest.Eventually(t.Context(), deliverTimeout, func() bool { return len(slowRecv.Missing(slowIDs)) == 0 })
	// The outcomes the victim could not write before its lease was gone
	// are refused, not written late: the store's fence (its local check,
	// then the database's) drops them, and the engine logs how many. Those
	// jobs, and only those, are sent again. (The other node's log counts
	// too: a partition handed back with a request still in flight at the
	// end of the grace is the same case.)
	refused, refusals := 0, 0
	for _, s := range []*fanouttest.Server{victim, other} {
		for _, m := range refusedRE.FindAllStringSubmatch(logText(t, s), -1) {
			n, _ := strconv.Atoi(m[1])
			refused += n
			if s == victim {
				refusals++
			}
		}
	}
	dups := duplicates(recv, ids) + duplicates(slowRecv, slowIDs)
	t.Logf("one of two nodes cut off from PostgreSQL: last renewal %v after the cut, local deadline %v after it, taken over in %v, healed at %v; "+
		"its attempts: %v before the cut, %v after it (%v of %s); %d outcomes refused (%d writes of the cut-off node); "+
		"%d events acknowledged, %d delivered, %d duplicates (%d of %s)",
		renewed.Round(time.Millisecond), deadline.Round(time.Millisecond), takeover.Round(time.Millisecond), healedAt.Round(time.Millisecond),
		sumSeries(atCut, attempts), sumSeries(now, attempts)-sumSeries(atCut, attempts), sumSeries(now, slowAttempts)-sumSeries(atCut, slowAttempts), slow,
		refused, refusals, len(ids)+len(slowIDs), len(ids)+len(slowIDs)-len(lost)-len(slowRecv.Missing(slowIDs)),
		dups, duplicates(slowRecv, slowIDs), slow)
	if !ok {
		t.Fatalf("%d acknowledged events not delivered; first: %v", len(lost), first(lost, 10))
	}
	if !slowOK {
		t.Fatalf("%d events of %s not delivered; first: %v", len(slowRecv.Missing(slowIDs)), slow, first(slowRecv.Missing(slowIDs), 10))
	}
	if refusals == 0 {
		t.Errorf("the healed node's log has no outcome write refused: the outcomes of its attempts during the cut were written")
	}
	if dups > refused {
		t.Errorf("%d duplicates, more than the %d outcomes refused: events were sent again that the cut-off node had written", dups, refused)
	}
	if bad := recv.Bad(); len(bad) > 0 {
		t.Errorf("bad deliveries: %v", first(bad, 5))
	}
	if victim.Exited() || other.Exited() {
		t.Errorf("a node exited")
	}
}

// refusedRE matches the engine's log line of outcomes the store's fence
// refused, and their count.
var refusedRE = regexp.MustCompile(`msg="delivery outcomes refused[^"]*".* changes=(\d+)`)

func logText(t *testing.T, s *fanouttest.Server) string {
	t.Helper()
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// twoShare returns whether, as watch's cluster view says, two live nodes
// hold 32 partitions each.
func twoShare(t *testing.T, watch *fanouttest.Server) func() bool {
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
