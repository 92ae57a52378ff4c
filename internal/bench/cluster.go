package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/sink"
)

// clusterDests is how many (source, destination) pairs the cluster
// scenario spreads its load over: source s<i> feeds webhook d<i> alone, so
// that the queues fall into many partitions and so onto every node.
const clusterDests = 16

// clusterLimit is the rate limit, in requests/s, of destination "limited"
// (source "lim"), which the scenario floods at three times that through
// every node at once.
const clusterLimit = 200

// clusterKeyHeader names the destination on each request (the webhook's
// headers setting), so that the sink counts deliveries per destination.
const clusterKeyHeader = "X-Destination"

// clusterConfig is the configuration of every node of one cluster: the
// same pipeline on each, as a cluster's nodes must have, and the node's
// name. The shared database is the storage section startServerEnv adds
// (startCluster points every node's data dir at it).
func clusterConfig(sinkAddr, node string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cluster:\n  node_name: %s\nsources:\n", node)
	for i := range clusterDests {
		fmt.Fprintf(&b, "  - name: s%d\n    write_key: wk_s%d\n", i, i)
	}
	b.WriteString("  - name: lim\n    write_key: wk_lim\ndestinations:\n")
	dest := func(name, source, delivery string) {
		fmt.Fprintf(&b, "  - name: %s\n    type: webhook\n    sources: [%s]\n    settings:\n      url: http://%s/%s\n      headers: {%s: %s}\n", name, source, sinkAddr, name, clusterKeyHeader, name)
		if delivery != "" {
			fmt.Fprintf(&b, "    delivery: {%s}\n", delivery)
		}
	}
	for i := range clusterDests {
		dest(fmt.Sprintf("d%d", i), fmt.Sprintf("s%d", i), "")
	}
	dest("limited", "lim", fmt.Sprintf("rate_limit: %d", clusterLimit))
	return b.String()
}

// ClusterResult holds the cluster scenario's figures.
type ClusterResult struct {
	Scenario string `json:"scenario"`
	// Scale holds one ingest-and-drain run per cluster size (1, 2, 3
	// nodes), each on a fresh database of the same PostgreSQL.
	Scale []ClusterScaleRun `json:"scale"`
	// CPU3vs1 is the CPU per delivered event of 3 nodes over that of 1,
	// at the same steady rate (SteadyRate), the mean of two runs each.
	CPU3vs1 float64 `json:"cpu_per_event_3_vs_1"`
	// CPU3vs1Unshared is the same with each node given every core of the
	// machine (GOMAXPROCS=NumCPU in its environment), as before the nodes
	// shared them (cores.Share): what sharing saves.
	CPU3vs1Unshared float64 `json:"cpu_per_event_3_vs_1_cores_unshared"`
	// CPU3vs1WithPostgres is CPU3vs1 with the PostgreSQL server's CPU
	// added to the nodes' (SteadyWithPostgresMeanUs): the whole cost of an
	// event on the machine.
	CPU3vs1WithPostgres float64 `json:"cpu_per_event_3_vs_1_with_postgres"`
	// SteadyRate is the events/s of the steady runs: one every cluster
	// size sustains on the machine, so that each delivers the same load.
	SteadyRate float64 `json:"steady_events_per_sec"`
	// RateLimit is destination "limited" flooded through 3 nodes.
	RateLimit ClusterRateLimit `json:"rate_limit"`
	// Shrink is the database before a backlog on 3 nodes, with it and
	// once drained.
	Shrink ClusterShrink `json:"shrink"`
	// Kills is one node of 3 SIGKILLed repeatedly under load; none, and
	// no kill phase, with --kills 0.
	Kills ClusterKills `json:"kills"`
}

// ClusterScaleRun is one ingest-and-drain run on n nodes.
type ClusterScaleRun struct {
	Nodes int `json:"nodes"`
	// IngestEventsPerSec is durable events/s accepted in 100-event
	// batches, 32 senders spread over every node's tracking API, while
	// delivery runs.
	IngestEventsPerSec float64 `json:"ingest_events_per_sec"`
	IngestedEvents     int64   `json:"ingested_events"`
	// DeliveredEventsPerSec is events/s delivered (one per request) from
	// the start of the load until the last was delivered.
	DeliveredEventsPerSec float64 `json:"delivered_events_per_sec"`
	// CPUPerDeliveredEventUs is the CPU time of every fanout process of
	// the cluster (from /proc), ingest and delivery, per delivered event,
	// in that run: at each size's own top rate, so batches and group
	// commits differ in size from one size to the next.
	CPUPerDeliveredEventUs float64 `json:"cpu_per_delivered_event_us"`
	// SteadyCPUUs is the same at SteadyRate, one figure per run: the
	// sizes are run 1, 2, 3, then 3, 2, 1, each on a fresh cluster, so
	// that a drift in the shared machine's speed weighs on every size
	// alike. SteadyCPUMeanUs is their mean.
	SteadyCPUUs     []float64 `json:"steady_cpu_per_delivered_event_us"`
	SteadyCPUMeanUs float64   `json:"steady_cpu_per_delivered_event_mean_us"`
	// SteadyWithPostgresUs are the same runs with the CPU of the
	// PostgreSQL server (the postmaster and its children) added: the
	// database's share of the cost of an event, which a cluster changes
	// too. SteadyWithPostgresMeanUs is their mean.
	SteadyWithPostgresUs     []float64 `json:"steady_cpu_per_delivered_event_with_postgres_us"`
	SteadyWithPostgresMeanUs float64   `json:"steady_cpu_per_delivered_event_with_postgres_mean_us"`
	// Procs is GOMAXPROCS of the first node at the end of its steady
	// runs, from its /metrics: its share of the machine's cores, which it
	// sets itself once it counts the nodes on the machine (cores.Share).
	Procs int `json:"gomaxprocs"`
	// UnsharedCPUUs are the steady runs again, right after each, with
	// every node given every core (GOMAXPROCS=NumCPU in its environment,
	// which the node keeps); for one node, the steady runs' own figures.
	// UnsharedCPUMeanUs is their mean.
	UnsharedCPUUs     []float64 `json:"unshared_cpu_per_delivered_event_us"`
	UnsharedCPUMeanUs float64   `json:"unshared_cpu_per_delivered_event_mean_us"`
	Lost              int64     `json:"lost"`
	Duplicates        uint64    `json:"duplicates"`
}

// clusterSteadyRate is the steady runs' events/s: well under what one
// node on PostgreSQL takes on the 2-core machine the figures come from.
const clusterSteadyRate = 1000

// ClusterRateLimit is what destination "limited" received.
type ClusterRateLimit struct {
	Configured float64 `json:"configured_per_sec"`
	Offered    float64 `json:"offered_events_per_sec"`
	// Measured is the sink's accepted requests/s after the first 2 s (the
	// burst) until the load ended.
	Measured float64 `json:"measured_per_sec"`
	// Ratio is Measured / Configured: 1 is exact, 3 would be each node
	// applying the limit on its own.
	Ratio float64 `json:"ratio"`
}

// ClusterKills holds the kill runs' figures.
type ClusterKills struct {
	Kills int `json:"kills"`
	// TakeoverSec is, per kill, the time from the SIGKILL to the first
	// delivery of a job of the killed node's destinations by another node.
	TakeoverSec    []float64 `json:"takeover_sec"`
	TakeoverMaxSec float64   `json:"takeover_max_sec"`
	Acked          int       `json:"acked_events"`
	Delivered      uint64    `json:"delivered_unique"`
	Lost           int       `json:"lost"`
	Duplicates     uint64    `json:"duplicates"`
	// KillDuplicates are the duplicates the sink counted from each kill
	// until a second after the takeover: the killed node's deliveries
	// whose outcome it had not written, sent again by the new owner.
	// HandoverDuplicates are the rest, counted while the restarted node
	// takes its share back from the two others (a clean handover).
	KillDuplicates     uint64 `json:"kill_duplicates"`
	HandoverDuplicates uint64 `json:"handover_duplicates"`
	// InFlightAtKills is the sum, over the kills, of the killed node's
	// fanout_inflight_requests read just before each kill, and
	// UnwrittenAtKills of its fanout_unwritten_outcomes: the requests
	// that ended but whose outcome was not written yet, which a kill
	// has sent again just as those in flight. Both are read a few
	// milliseconds before the kill, once, at whatever point of its
	// turns each scheduler is (one reading jobs has none in flight yet):
	// a burst of jobs dispatched in between is not counted, which
	// SentAroundKills bounds.
	InFlightAtKills  int `json:"in_flight_at_kills"`
	UnwrittenAtKills int `json:"unwritten_at_kills"`
	// SentAroundKills is the sum, over the kills, of the requests of the
	// killed node's destinations the sink received from just before that
	// reading to 200 ms after the kill: all sent by the killed node (no
	// other takes a destination over before a Lease), so every request
	// in flight or unwritten at the kill that the reading missed is among
	// them. A bound, not a count: most of them were recorded in time.
	SentAroundKills uint64 `json:"sent_around_kills"`
	// DupFirstBeforeKillMaxMs is, over the duplicates the sink received
	// within a kill's window (from the kill to a second after its
	// takeover), the longest time from their first receipt to the kill:
	// how long before the kill the requests sent again had been
	// answered. DupsOlderThan1s counts those first received more than a
	// second before their kill, which no request in flight or outcome
	// unwritten at the kill explains (outcomes are written within
	// 20 ms of their answer, see delivery's flushAge).
	DupFirstBeforeKillMaxMs float64 `json:"dup_first_before_kill_max_ms"`
	DupsOlderThan1s         int     `json:"dups_first_received_over_1s_before_kill"`
}

func runCluster(ctx context.Context, e *env) (any, error) {
	// A cluster is nodes on one PostgreSQL, whatever --storage says: the
	// store's helpers (storageYAML, storeSize, waitShrunk) go by it.
	e.storage = StorePostgres
	res := ClusterResult{Scenario: "cluster"}
	sinkAddr, _, err := e.startSink("sink", "--rate-limit-key", "header:"+clusterKeyHeader)
	if err != nil {
		return nil, err
	}
	for n := 1; n <= 3; n++ {
		c, err := e.startCluster(fmt.Sprintf("scale%d", n), sinkAddr, n, 0)
		if err != nil {
			return nil, err
		}
		run, err := c.ingestAndDrain(ctx, sinkAddr)
		if err != nil {
			return nil, err
		}
		res.Scale = append(res.Scale, run)
		if n == 3 {
			// The three nodes are up and balanced: flood the limited
			// destination through all of them.
			if res.RateLimit, err = c.rateLimit(ctx, sinkAddr); err != nil {
				return nil, err
			}
		}
		c.stop()
	}
	res.SteadyRate = clusterSteadyRate
	// Each steady run at the defaults is followed by its unshared run,
	// so that a drift of the machine weighs on both alike.
	steady := func(name string, n, procs int) (steadyCPU, error) {
		c, err := e.startCluster(name, sinkAddr, n, procs)
		if err != nil {
			return steadyCPU{}, err
		}
		defer c.stop()
		return c.steady(ctx, sinkAddr, clusterSteadyRate)
	}
	for _, n := range []int{1, 2, 3, 3, 2, 1} {
		run := &res.Scale[n-1]
		i := len(run.SteadyCPUUs) + 1
		cpu, err := steady(fmt.Sprintf("steady%d-%d", n, i), n, 0)
		if err != nil {
			return nil, err
		}
		run.SteadyCPUUs = append(run.SteadyCPUUs, cpu.nodes)
		run.SteadyWithPostgresUs = append(run.SteadyWithPostgresUs, cpu.withPostgres)
		run.Procs = cpu.procs
		if n > 1 {
			if cpu, err = steady(fmt.Sprintf("unshared%d-%d", n, i), n, runtime.NumCPU()); err != nil {
				return nil, err
			}
		}
		run.UnsharedCPUUs = append(run.UnsharedCPUUs, cpu.nodes)
		run.SteadyCPUMeanUs, run.UnsharedCPUMeanUs = mean(run.SteadyCPUUs), mean(run.UnsharedCPUUs)
		run.SteadyWithPostgresMeanUs = mean(run.SteadyWithPostgresUs)
	}
	res.CPU3vs1 = res.Scale[2].SteadyCPUMeanUs / res.Scale[0].SteadyCPUMeanUs
	res.CPU3vs1Unshared = res.Scale[2].UnsharedCPUMeanUs / res.Scale[0].UnsharedCPUMeanUs
	res.CPU3vs1WithPostgres = res.Scale[2].SteadyWithPostgresMeanUs / res.Scale[0].SteadyWithPostgresMeanUs

	if res.Shrink, err = clusterShrink(ctx, e); err != nil {
		return nil, err
	}
	if e.opts.Kills > 0 {
		if res.Kills, err = clusterKills(ctx, e); err != nil {
			return nil, err
		}
	}

	rows := [][2]string{}
	for _, r := range res.Scale {
		v := fmt.Sprintf(" (%d node%s)", r.Nodes, map[bool]string{true: "s"}[r.Nodes > 1])
		rows = append(rows,
			[2]string{"durable ingest, 100-event batches" + v, fmt.Sprintf("%.0f events/s (%d events)", r.IngestEventsPerSec, r.IngestedEvents)},
			[2]string{"delivered, whole run" + v, fmt.Sprintf("%.0f events/s", r.DeliveredEventsPerSec)},
			[2]string{"CPU of all nodes per delivered event" + v, fmt.Sprintf("%.1f µs", r.CPUPerDeliveredEventUs)},
			[2]string{fmt.Sprintf("CPU per delivered event at %.0f events/s", res.SteadyRate) + v, fmt.Sprintf("%.1f µs (%s)", r.SteadyCPUMeanUs, us(r.SteadyCPUUs))},
			[2]string{"GOMAXPROCS each node set itself, of the machine's cores" + v, fmt.Sprintf("%d of %d", r.Procs, runtime.NumCPU())},
			[2]string{fmt.Sprintf("the same, every node GOMAXPROCS=%d (unshared)", runtime.NumCPU()) + v, fmt.Sprintf("%.1f µs (%s)", r.UnsharedCPUMeanUs, us(r.UnsharedCPUUs))},
			[2]string{"the same, with PostgreSQL's CPU" + v, fmt.Sprintf("%.1f µs (%s)", r.SteadyWithPostgresMeanUs, us(r.SteadyWithPostgresUs))},
			[2]string{"lost / duplicates" + v, fmt.Sprintf("%d / %d", r.Lost, r.Duplicates)})
	}
	rows = append(rows,
		[2]string{fmt.Sprintf("CPU per event at %.0f events/s, 3 nodes / 1 node", res.SteadyRate), fmt.Sprintf("%.2f", res.CPU3vs1)},
		[2]string{"the same, every node on every core (unshared)", fmt.Sprintf("%.2f", res.CPU3vs1Unshared)},
		[2]string{"the same, with PostgreSQL's CPU", fmt.Sprintf("%.2f", res.CPU3vs1WithPostgres)},
		[2]string{"rate limit across 3 nodes", fmt.Sprintf("%.0f req/s configured, %.0f offered, %.1f measured (%.2f x)",
			res.RateLimit.Configured, res.RateLimit.Offered, res.RateLimit.Measured, res.RateLimit.Ratio)})
	rows = append(rows, res.Shrink.rows(e)...)
	if res.Kills.Kills == 0 {
		e.table(append(rows, [2]string{"SIGKILLs of one node of 3 under load", "none (--kills 0)"}))
		return res, nil
	}
	takeovers := make([]string, len(res.Kills.TakeoverSec))
	for i, t := range res.Kills.TakeoverSec {
		takeovers[i] = fmt.Sprintf("%.1f", t)
	}
	rows = append(rows,
		[2]string{"SIGKILLs of one node of 3 under load", fmt.Sprint(res.Kills.Kills)},
		[2]string{"takeover, kill to first delivery (s)", fmt.Sprintf("max %.1f; %s", res.Kills.TakeoverMaxSec, strings.Join(takeovers, " "))},
		[2]string{"acknowledged / delivered (unique)", fmt.Sprintf("%d / %d", res.Kills.Acked, res.Kills.Delivered)},
		[2]string{"lost", fmt.Sprint(res.Kills.Lost)},
		[2]string{"duplicates after the kills / requests in flight + outcomes unwritten just before the kills; sent from then to the kills", fmt.Sprintf("%d / %d + %d; %d", res.Kills.KillDuplicates, res.Kills.InFlightAtKills, res.Kills.UnwrittenAtKills, res.Kills.SentAroundKills)},
		[2]string{"duplicates after the kills: longest from first receipt to the kill; first received over 1 s before", fmt.Sprintf("%.0f ms; %d", res.Kills.DupFirstBeforeKillMaxMs, res.Kills.DupsOlderThan1s)},
		[2]string{"duplicates after the restarted node took its share back", fmt.Sprint(res.Kills.HandoverDuplicates)})
	e.table(rows)
	return res, nil
}

// clusterKills is the kill phase: a fresh cluster of 3 nodes under load,
// one of them SIGKILLed e.opts.Kills times, and every acknowledged event
// looked for in the sink's record.
func clusterKills(ctx context.Context, e *env) (ClusterKills, error) {
	record := filepath.Join(e.opts.Dir, "kills-received.jsonl")
	killSinkAddr, killSink, err := e.startSink("sink-kills", "--record", record, "--record-times", "--rate-limit-key", "header:"+clusterKeyHeader)
	if err != nil {
		return ClusterKills{}, err
	}
	c, err := e.startCluster("kills", killSinkAddr, 3, 0)
	if err != nil {
		return ClusterKills{}, err
	}
	res, err := c.kills(ctx, killSinkAddr, e.opts.Kills)
	if err != nil {
		return res, err
	}
	// The sink's unique count may reach the acknowledged count before
	// every acknowledged event is in: events stored whose answer the
	// load never got (the node was killed first) are delivered too. So
	// wait for the acknowledged ones themselves, in the record (flushed
	// every second).
	missing := c.awaitRecorded(record, 2*time.Minute)
	if len(missing) > 0 {
		c.e.logf("%d acknowledged events not delivered; in the store: %s", len(missing), c.whereAre(missing))
	}
	c.stop()
	killSink.stop() // flushes its record file
	got, err := recordedTimes(record)
	if err != nil {
		return res, err
	}
	for _, id := range c.ackedIDs {
		if len(got[id]) == 0 {
			res.Lost++
		}
	}
	res.dupAges(got, c.killTimes)
	if res.Lost > 0 {
		fmt.Fprintf(os.Stderr, "LOST %d acknowledged events across the kills\n", res.Lost)
	}
	return res, nil
}

// fanoutCluster is the nodes of one cluster on a database of its own.
type fanoutCluster struct {
	e     *env
	name  string
	nodes []*server
	// names are the nodes' node_name, as the cluster view lists them.
	names []string
	// cfgs are the nodes' configuration files, to restart a killed node.
	cfgs []string
	// live are the tracking APIs the load goes to: the nodes not killed.
	live atomic.Pointer[[]*tracker]
	// writeKeys are the sources the load spreads over.
	writeKeys []string
	client    *http.Client
	ackedIDs  []string
	dsn       string
	// killTimes are the kills' times and ends of their windows (a
	// second after the takeover), for dupAges.
	killTimes [][2]time.Time
}

// awaitRecorded waits until every acknowledged event is in the sink's
// record, or timeout passes, and returns those still missing.
func (c *fanoutCluster) awaitRecorded(record string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		got, err := recordedTimes(record)
		var missing []string
		for _, id := range c.ackedIDs {
			if err != nil || len(got[id]) == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(time.Second)
	}
}

// whereAre says where the job store holds the jobs of the events ids: the
// queue, the Seq, the queue's drop_below and whether a finished row
// exists, for the first few.
func (c *fanoutCluster) whereAre(ids []string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dsn)
	if err != nil {
		return err.Error()
	}
	defer conn.Close(ctx)
	bs := make([][]byte, len(ids))
	for i, id := range ids {
		bs[i] = []byte(id)
	}
	rows, err := conn.Query(ctx, `SELECT q.source || '/' || q.destination, j.seq, q.drop_below,
			EXISTS (SELECT 1 FROM finished f WHERE f.queue_id = j.queue_id AND f.seq = j.seq)
		FROM jobs j JOIN queues q ON q.id = j.queue_id
		WHERE j.message_id = ANY($1) ORDER BY 1, 2 LIMIT 10`, bs)
	if err != nil {
		return err.Error()
	}
	var out []string
	var queue string
	var seq, below int64
	var finished bool
	_, err = pgx.ForEachRow(rows, []any{&queue, &seq, &below, &finished}, func() error {
		out = append(out, fmt.Sprintf("%s seq %d (drop_below %d, finished %v)", queue, seq, below, finished))
		return nil
	})
	if err != nil {
		return err.Error()
	}
	var dd int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM dedupe WHERE message_id = ANY($1)`, bs).Scan(&dd); err != nil {
		return err.Error()
	}
	out = append(out, fmt.Sprintf("%d dedupe records", dd))
	return strings.Join(out, "; ")
}

// dupAges fills DupFirstBeforeKillMaxMs and DupsOlderThan1s from the
// sink's receipts of each messageId.
func (k *ClusterKills) dupAges(got map[string][]time.Time, kills [][2]time.Time) {
	for _, ts := range got {
		if len(ts) < 2 {
			continue
		}
		for _, t := range ts[1:] {
			for _, w := range kills {
				if t.Before(w[0]) || t.After(w[1]) {
					continue
				}
				age := w[0].Sub(ts[0])
				k.DupFirstBeforeKillMaxMs = max(k.DupFirstBeforeKillMaxMs, float64(age.Microseconds())/1000)
				if age > time.Second {
					k.DupsOlderThan1s++
				}
			}
		}
	}
}

// startCluster starts n nodes on a fresh database of the scenario's
// PostgreSQL, each with GOMAXPROCS=procs unless procs is 0, and waits
// until they share the partitions. The database is the one e.dsn gives
// for name, so e.storeSize(name) measures it.
func (e *env) startCluster(name, sinkAddr string, n, procs int) (*fanoutCluster, error) {
	dsn, err := e.dsn(name)
	if err != nil {
		return nil, err
	}
	c := &fanoutCluster{e: e, name: name, client: newTracker("", "").client, dsn: dsn}
	for i := range clusterDests {
		c.writeKeys = append(c.writeKeys, fmt.Sprintf("wk_s%d", i))
	}
	e.logf("%s: starting %d node(s) on one database", name, n)
	for i := range n {
		node := fmt.Sprintf("%s-node%d", name, i+1)
		var environ []string
		if procs > 0 {
			environ = []string{fmt.Sprintf("GOMAXPROCS=%d", procs)}
		}
		// Every node's data dir is on the cluster's database, which its
		// storage section then names.
		dataDir := filepath.Join(e.opts.Dir, node+"-data")
		e.pg.dbs[dataDir] = dsn
		s, err := e.startServerEnv(node, clusterConfig(sinkAddr, node), dataDir, environ)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, s)
		c.names = append(c.names, node)
		c.cfgs = append(c.cfgs, filepath.Join(e.opts.Dir, node+".yaml"))
	}
	c.setLive(-1)
	return c, c.waitBalanced(n, 60*time.Second)
}

// setLive points the load at every node but the one at index skip.
func (c *fanoutCluster) setLive(skip int) {
	var ts []*tracker
	for i, s := range c.nodes {
		if i != skip {
			ts = append(ts, &tracker{url: s.track, client: c.client})
		}
	}
	c.live.Store(&ts)
}

// load is 100-event batches (or batch) spread over the live nodes in turn
// and over the sources in writeKeys.
func (c *fanoutCluster) load(rate float64, batch, workers int, prefix string, writeKeys []string, keep bool) load {
	return load{rate: rate, batch: batch, workers: workers, prefix: prefix, keep: keep,
		pick: func(i int64) (*tracker, string) {
			ts := *c.live.Load()
			t := *ts[i%int64(len(ts))]
			// Consecutive batches go to different nodes; the source moves
			// on once per round of the nodes.
			k := (i / int64(len(ts))) % int64(len(writeKeys))
			t.writeKey = writeKeys[k]
			return &t, strings.TrimPrefix(writeKeys[k], "wk_")
		}}
}

// view is GET /api/v1/cluster of one node.
type clusterView struct {
	Self  int64              `json:"self"`
	Nodes []cluster.NodeInfo `json:"nodes"`
}

func getClusterView(admin string) (clusterView, error) {
	var v clusterView
	resp, err := http.Get(admin + "/api/v1/cluster")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET %s/api/v1/cluster: %s", admin, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// waitBalanced waits until n live nodes hold every partition, each at
// least its share.
func (c *fanoutCluster) waitBalanced(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		v, err := getClusterView(c.nodes[0].admin)
		if err == nil {
			live, owned, fair := 0, 0, true
			for _, nd := range v.Nodes {
				if nd.Live {
					live++
					owned += len(nd.Partitions)
					fair = fair && len(nd.Partitions) >= cluster.DefaultPartitions/n
				}
			}
			if live == n && owned == cluster.DefaultPartitions && fair {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d nodes did not share the partitions within %v (last view %+v, %v)", c.name, n, timeout, v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpu is the CPU time of every node process started so far, the killed
// ones included (until their kill).
func (c *fanoutCluster) cpu() time.Duration {
	var sum time.Duration
	for _, s := range c.nodes {
		d, _ := cpuTime(s.cmd.Process.Pid)
		sum += d
	}
	return sum
}

func (c *fanoutCluster) stop() {
	for _, s := range c.nodes {
		s.stop()
	}
}

// ingestAndDrain ingests as fast as 32 senders go for the scenario's
// duration, spread over every node, then waits for the rest to drain.
func (c *fanoutCluster) ingestAndDrain(ctx context.Context, sinkAddr string) (ClusterScaleRun, error) {
	run := ClusterScaleRun{Nodes: len(c.nodes)}
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return run, err
	}
	c.e.logf("%s: ingest, 32 senders over %d node(s) and %d sources, 100-event batches, for %v", c.name, len(c.nodes), clusterDests, c.e.opts.Duration)
	cpu0, start := c.cpu(), time.Now()
	lctx, cancel := context.WithTimeout(ctx, c.e.opts.Duration)
	profiled := c.profile(lctx)
	lr := c.load(0, 100, 32, c.name, c.writeKeys, false).run(lctx, 0)
	cancel()
	profiled()
	run.IngestedEvents, run.IngestEventsPerSec = lr.acked, lr.rate()
	done, s, err := waitAccepted(sinkAddr, uint64(lr.acked), 10*c.e.opts.Duration+time.Minute)
	if err != nil {
		return run, err
	}
	cpu1 := c.cpu()
	run.DeliveredEventsPerSec = float64(s.Unique) / done.Sub(start).Seconds()
	run.CPUPerDeliveredEventUs = float64((cpu1 - cpu0).Microseconds()) / float64(s.Unique)
	run.Lost = lr.acked - int64(s.Unique)
	run.Duplicates = s.Duplicates
	return run, nil
}

// profile, with --keep, saves a CPU profile of each node (its admin
// /debug/pprof/profile) while ctx lasts into the work dir, as
// NAME.cpu.pprof, to see where a cluster's CPU per event goes; the
// returned function waits for the files. Without --keep it does nothing.
func (c *fanoutCluster) profile(ctx context.Context) (wait func()) {
	if !c.e.opts.Keep {
		return func() {}
	}
	deadline, _ := ctx.Deadline()
	secs := max(1, int(time.Until(deadline).Seconds()))
	done := make(chan struct{}, len(c.nodes))
	for i, s := range c.nodes {
		go func() {
			defer func() { done <- struct{}{} }()
			path := filepath.Join(c.e.opts.Dir, c.names[i]+".cpu.pprof")
			if err := download(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", s.admin, secs), path); err != nil {
				c.e.logf("profile %s: %v", c.names[i], err)
			}
		}()
	}
	return func() {
		for range c.nodes {
			<-done
		}
	}
}

func download(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// steadyCPU is a steady run's CPU time per delivered event, in µs: of the
// nodes, and of the nodes and the PostgreSQL server together; and the
// first node's GOMAXPROCS at its end.
type steadyCPU struct {
	nodes, withPostgres float64
	procs               int
}

// steady sends rate events/s in 20-event batches, spread over every node,
// for the scenario's duration, waits for them to be delivered and returns
// the CPU time per delivered event.
func (c *fanoutCluster) steady(ctx context.Context, sinkAddr string, rate float64) (steadyCPU, error) {
	s0, err := sinkStats(sinkAddr)
	if err != nil {
		return steadyCPU{}, err
	}
	pg, err := c.e.pg.srv.PID()
	if err != nil {
		return steadyCPU{}, err
	}
	c.e.logf("%s: %.0f events/s over %d node(s) for %v", c.name, rate, len(c.nodes), c.e.opts.Duration)
	cpu0 := c.cpu()
	pg0, err := treeCPU(pg)
	if err != nil {
		return steadyCPU{}, err
	}
	lctx, cancel := context.WithTimeout(ctx, c.e.opts.Duration)
	profiled := c.profile(lctx)
	lr := c.load(rate, 20, 8, c.name, c.writeKeys, false).run(lctx, 0)
	cancel()
	profiled()
	_, s, err := waitAccepted(sinkAddr, s0.Unique+uint64(lr.acked), time.Minute)
	if err != nil {
		return steadyCPU{}, err
	}
	nodes := c.cpu() - cpu0
	pg1, err := treeCPU(pg)
	if err != nil {
		return steadyCPU{}, err
	}
	m, err := scrape(c.nodes[0].admin + "/metrics")
	if err != nil {
		return steadyCPU{}, err
	}
	n := float64(s.Unique - s0.Unique)
	return steadyCPU{
		nodes:        float64(nodes.Microseconds()) / n,
		withPostgres: float64((nodes + pg1 - pg0).Microseconds()) / n,
		procs:        int(m["go_sched_gomaxprocs_threads"][""]),
	}, nil
}

func mean(fs []float64) float64 {
	var sum float64
	for _, f := range fs {
		sum += f
	}
	return sum / float64(len(fs))
}

// us writes figures in µs, one decimal, space separated.
func us(fs []float64) string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = fmt.Sprintf("%.1f", f)
	}
	return strings.Join(out, ", ")
}

// rateLimit sends three times the limited destination's rate limit,
// spread over every node, and measures what its sink receives.
func (c *fanoutCluster) rateLimit(ctx context.Context, sinkAddr string) (ClusterRateLimit, error) {
	r := ClusterRateLimit{Configured: clusterLimit, Offered: 3 * clusterLimit}
	d := max(c.e.opts.Duration, 6*time.Second)
	c.e.logf("rate limit: %.0f events/s into a destination limited to %.0f req/s, over %d nodes, for %v", r.Offered, r.Configured, len(c.nodes), d)
	lctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	stop := c.load(r.Offered, 10, 8, "lim", []string{"wk_lim"}, false).background(lctx)
	defer stop()
	// The first 2 s spend the limiter's burst; measure the rest.
	time.Sleep(2 * time.Second)
	s0, err := sinkStats(sinkAddr)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	<-lctx.Done()
	s1, err := sinkStats(sinkAddr)
	if err != nil {
		return r, err
	}
	r.Measured = float64(s1.Keys["limited"].Accepted-s0.Keys["limited"].Accepted) / time.Since(t0).Seconds()
	r.Ratio = r.Measured / r.Configured
	return r, nil
}

// kills runs a steady load over the three nodes and SIGKILLs one of them,
// each time the one that delivers the most destinations, kills times; it
// times the takeover of the killed node's destinations, then restarts it
// and waits for the partitions to be shared again.
func (c *fanoutCluster) kills(ctx context.Context, sinkAddr string, kills int) (ClusterKills, error) {
	res := ClusterKills{Kills: kills}
	c.e.logf("kills: 2,000 events/s in 20-event batches over the nodes; SIGKILL one of 3, %d times", kills)
	stopLoad := c.load(2000, 20, 8, "k", c.writeKeys, true).background(ctx)
	defer func() {
		if stopLoad != nil {
			stopLoad()
		}
	}()
	for k := range kills {
		sleepRandom(time.Second, 3*time.Second)
		v, err := getClusterView(c.nodes[0].admin)
		if err != nil {
			return res, err
		}
		vi, dests := c.busiest(v)
		if len(dests) == 0 {
			return res, fmt.Errorf("kill %d: no live node delivers any destination: %+v", k+1, v)
		}
		victim := c.nodes[vi]
		before, err := sinkStats(sinkAddr)
		if err != nil {
			return res, err
		}
		if m, err := scrape(victim.admin + "/metrics"); err == nil {
			for _, n := range m["fanout_inflight_requests"] {
				res.InFlightAtKills += int(n)
			}
			for _, n := range m["fanout_unwritten_outcomes"] {
				res.UnwrittenAtKills += int(n)
			}
		}
		c.setLive(vi)
		victim.kill()
		killed := time.Now()
		// A request the victim sent just before dying may still be
		// counted by the sink; none of its leases can be taken over this
		// soon (they run a Lease), so the count taken now is the baseline.
		time.Sleep(200 * time.Millisecond)
		base, err := sinkStats(sinkAddr)
		if err != nil {
			return res, err
		}
		res.SentAroundKills += delivered(base, dests) - delivered(before, dests)
		at, _, err := waitSink(sinkAddr, time.Minute, func(s sink.Stats) bool {
			return delivered(s, dests) > delivered(base, dests)
		})
		if err != nil {
			return res, fmt.Errorf("kill %d: no delivery of %v by another node: %w", k+1, dests, err)
		}
		t := at.Sub(killed).Seconds()
		res.TakeoverSec = append(res.TakeoverSec, t)
		res.TakeoverMaxSec = max(res.TakeoverMaxSec, t)
		// The new owner sends the killed node's unrecorded deliveries
		// first: they head their queues.
		time.Sleep(time.Second)
		after, err := sinkStats(sinkAddr)
		if err != nil {
			return res, err
		}
		dups := after.Duplicates - before.Duplicates
		res.KillDuplicates += dups
		c.killTimes = append(c.killTimes, [2]time.Time{killed, time.Now()})
		c.e.logf("kill %d/%d: %s delivered %v; taken over in %.1f s; %d duplicates", k+1, kills, c.names[vi], dests, t, dups)

		p, err := c.e.start(fmt.Sprintf("%s-restart-%d", c.names[vi], k+1), "serve", "--config", c.cfgs[vi], "--log-level", "warn")
		if err != nil {
			return res, err
		}
		victim.proc = p
		if err := waitHTTP(victim.admin+"/healthz", p); err != nil {
			return res, err
		}
		if err := c.waitBalanced(3, 60*time.Second); err != nil {
			return res, err
		}
		c.setLive(-1)
	}
	lr := stopLoad()
	stopLoad = nil
	c.ackedIDs = lr.ids
	res.Acked = len(lr.ids)
	c.e.logf("waiting for the %d acknowledged events", res.Acked)
	_, s, err := waitAccepted(sinkAddr, uint64(res.Acked), 2*time.Minute)
	if err != nil {
		c.e.logf("%v", err)
	}
	res.Delivered, res.Duplicates = s.Unique, s.Duplicates
	res.HandoverDuplicates = res.Duplicates - res.KillDuplicates
	return res, nil
}

// busiest returns the index in c.nodes of the node that delivers the most
// of the scenario's destinations, and those destinations. The view lists
// the nodes in the order they joined, dead ones too, and c.nodes is in the
// order they were started, a restarted node in its old place: they are
// matched by name.
func (c *fanoutCluster) busiest(v clusterView) (int, []string) {
	vi, best := 0, []string(nil)
	for _, nd := range v.Nodes {
		if !nd.Live {
			continue
		}
		var dests []string
		for d := range clusterDests {
			name := fmt.Sprintf("d%d", d)
			if slices.Contains(nd.Partitions, cluster.PartitionOf(name, cluster.DefaultPartitions)) {
				dests = append(dests, name)
			}
		}
		i := slices.Index(c.names, nd.Name)
		if i >= 0 && len(dests) > len(best) {
			vi, best = i, dests
		}
	}
	return vi, best
}

// delivered is the events the sink accepted for dests.
func delivered(s sink.Stats, dests []string) uint64 {
	var n uint64
	for _, d := range dests {
		n += s.Keys[d].Accepted
	}
	return n
}
