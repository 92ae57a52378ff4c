package bench

import (
	"context"
	"fmt"
	"time"
)

// ClusterShrink is the cluster's database before a backlog, with it and
// once drained: a backlog piled up through 3 nodes while the sink is
// down, then delivered, then cleaned up by the nodes' Cleanup, each on its
// own ticker, on the database they share. As in the backlog scenario on
// PostgreSQL, the 10% is of the job tables; the dedupe records of the
// backlog's events stay for the dedupe window, as they must, and are
// reported apart.
type ClusterShrink struct {
	Nodes int `json:"nodes"`
	// Events is the backlog: what 32 senders got acknowledged in the
	// scenario's duration, in 100-event batches over every node.
	Events       int64   `json:"backlog_events"`
	IngestPerSec float64 `json:"backlog_ingest_per_sec"`
	// FirstDeliveryAfterSec is from the sink's recovery to its first
	// accepted event (the circuits' probes); DrainPerSec from that event
	// to the last, one event per request.
	FirstDeliveryAfterSec float64 `json:"first_delivery_after_recovery_sec"`
	DrainPerSec           float64 `json:"drain_per_sec"`
	Lost                  int64   `json:"lost"`
	// Before is measured once a warm-up has been delivered (the queues
	// exist, as in a cluster in service), Backlog at the backlog's peak,
	// once the load ended, and Drained as waitShrunk leaves it: the first
	// measure with the job tables within 10% of Before, or the last one
	// after shrinkWait.
	Before  StoreSize `json:"store_before"`
	Backlog StoreSize `json:"store_with_backlog"`
	Drained StoreSize `json:"store_drained"`
	// JobTablesRatio is Drained's job tables over Before's.
	// ShrunkAfterSec is how long after the drain they came within 10%,
	// -1 if not within shrinkWait; Within10Pct says whether they did.
	JobTablesRatio float64 `json:"job_tables_drained_vs_before"`
	Within10Pct    bool    `json:"job_tables_within_10pct"`
	ShrunkAfterSec float64 `json:"store_shrunk_after_sec"`
}

// clusterWarmup is the events delivered before the database is first
// measured: a few batches for each source.
const clusterWarmup = 100 * clusterDests

// clusterShrink measures shrinking after a drain on a fresh cluster of 3
// nodes and a sink of its own, which goes down for the backlog.
func clusterShrink(ctx context.Context, e *env) (ClusterShrink, error) {
	res := ClusterShrink{Nodes: 3}
	sinkAddr, sinkProc, err := e.startSink("sink-shrink")
	if err != nil {
		return res, err
	}
	defer sinkProc.stop()
	c, err := e.startCluster("shrink", sinkAddr, res.Nodes, 0)
	if err != nil {
		return res, err
	}
	defer c.stop()

	e.logf("shrink: %d warm-up events, delivered", clusterWarmup)
	w := c.load(clusterSteadyRate, 20, 8, "shrink-w", c.writeKeys, false).run(ctx, clusterWarmup)
	if _, _, err := waitAccepted(sinkAddr, uint64(w.acked), time.Minute); err != nil {
		return res, err
	}
	if res.Before, err = e.storeSize(c.name); err != nil {
		return res, err
	}
	if err := sinkPost(sinkAddr, "down"); err != nil {
		return res, err
	}
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return res, err
	}

	e.logf("shrink: the sink is down; 32 senders over %d nodes for %v", res.Nodes, e.opts.Duration)
	lctx, cancel := context.WithTimeout(ctx, e.opts.Duration)
	lr := c.load(0, 100, 32, "shrink", c.writeKeys, false).run(lctx, 0)
	cancel()
	res.Events, res.IngestPerSec = lr.acked, lr.rate()
	if res.Backlog, err = e.storeSize(c.name); err != nil {
		return res, err
	}

	e.logf("shrink: the sink comes back; %d events wait", res.Events)
	d, err := drain(sinkAddr, lr.acked)
	if err != nil {
		return res, err
	}
	res.FirstDeliveryAfterSec, res.DrainPerSec, res.Lost = d.firstAfter, d.perSec, d.lost
	if res.Drained, res.ShrunkAfterSec, err = e.waitShrunk(c.name, res.Before); err != nil {
		return res, err
	}
	res.JobTablesRatio = sizeRatio(res.Drained.JobTables, res.Before.JobTables)
	res.Within10Pct = res.ShrunkAfterSec >= 0
	return res, nil
}

// sizeRatio is after over before, 0 when before is not a size.
func sizeRatio(after, before int64) float64 {
	if before <= 0 {
		return 0
	}
	return float64(after) / float64(before)
}

// rows are the shrink phase's lines of the scenario's table, in the
// backlog scenario's terms.
func (s ClusterShrink) rows(e *env) [][2]string {
	return [][2]string{
		{fmt.Sprintf("backlog through %d nodes, sink down", s.Nodes), fmt.Sprintf("%d events, ingested at %.0f events/s", s.Events, s.IngestPerSec)},
		{"  drain, one event per request", fmt.Sprintf("%.0f events/s, first delivery %.1f s after recovery; lost %d", s.DrainPerSec, s.FirstDeliveryAfterSec, s.Lost)},
		{"  database: before / backlog waiting / drained", fmt.Sprintf("%s / %s / %s", mb(s.Before.Total), mb(s.Backlog.Total), mb(s.Drained.Total))},
		{"  job tables", e.sizes(s.Before.JobTables, s.Backlog.JobTables, s.Drained.JobTables)},
		{"  dedupe records (kept for the window)", e.sizes(s.Before.Dedupe, s.Backlog.Dedupe, s.Drained.Dedupe) +
			perEvent(s.Drained.Dedupe-s.Before.Dedupe, s.Events)},
		{"  stats", e.sizes(s.Before.Stats, s.Backlog.Stats, s.Drained.Stats)},
		{"  job tables drained / before", fmt.Sprintf("%.2f; back within 10%%: %s", s.JobTablesRatio, shrunk(e.storage, s.ShrunkAfterSec))},
	}
}
