package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/sink"
)

const backlogConfig = `sources:
  - {name: bulk, write_key: wk_bulk}
  - {name: app, write_key: wk_app}
destinations:
  - name: down
    type: webhook
    sources: [bulk]
    settings: {url: "http://%s/down"}
  - name: up
    type: webhook
    sources: [app]
    settings: {url: "http://%s/up"}
`

// batchedConfig is the second backlog's server: one source, one webhook
// that sends backlogBatch events per request.
const batchedConfig = `sources:
  - {name: bulk, write_key: wk_bulk}
destinations:
  - name: down-batch
    type: webhook
    sources: [bulk]
    settings: {url: "http://%s/down-batch", batch: %d}
`

// backlogBatch is the down-batch destination's events per request.
const backlogBatch = 100

// backlogRate is how fast a backlog is sent: a steady rate, below what
// ingest can take, so that the figures beside it are the backlog's and
// not those of a saturated CPU.
const backlogRate = 20000

// BacklogResult holds the backlog scenario's figures.
type BacklogResult struct {
	Scenario string `json:"scenario"`
	Events   int64  `json:"backlog_events"`
	// IngestPerSec is how fast the backlog was accepted.
	IngestPerSec float64 `json:"backlog_ingest_per_sec"`
	// RSS samples, one per second, in MB.
	RSSMB        []float64 `json:"rss_mb_per_second"`
	PeakRSSBytes int64     `json:"peak_rss_bytes"`
	// The other destination's latency at 100 events/s: quiet before the
	// backlog and after its drain (the baseline is the mean of their p99s),
	// while the backlog is ingested beside it (20,000 events/s on the same
	// cores), and while it waits. The target is on the waiting figure; the
	// building one is CPU shared with the ingest, as in noisy-neighbor.
	Quiet         Percentiles `json:"up_quiet"`
	QuietAfter    Percentiles `json:"up_quiet_after_drain"`
	QuietP99      float64     `json:"up_quiet_p99_mean"`
	Building      Percentiles `json:"up_while_building"`
	Waiting       Percentiles `json:"up_while_waiting"`
	P99Ratio      float64     `json:"up_p99_ratio_waiting"`
	BuildP99Ratio float64     `json:"up_p99_ratio_building"`
	// FirstDeliveryAfter is how long after the destination came back its
	// circuit probe went through.
	FirstDeliveryAfterSec float64 `json:"first_delivery_after_recovery_sec"`
	// DrainPerSec is the drain with one event per request, and
	// DrainVsBare its ratio to a bare Go HTTP client posting one event per
	// request to the same kind of sink right after it: the machine's
	// request rate at that moment.
	DrainPerSec        float64 `json:"drain_per_sec"`
	BareRequestsPerSec float64 `json:"bare_requests_per_sec"`
	DrainVsBare        float64 `json:"drain_vs_bare"`
	Lost               int64   `json:"lost"`
	// The job store's size before the backlog, while it waits, and once
	// it has drained: the first measure within 10% of the one before,
	// taken every shrinkPoll, or the last one after shrinkWait.
	// ShrunkAfterSec is how long after the drain that was (-1: not
	// within shrinkWait). On PostgreSQL the 10% is of the job tables: the
	// dedupe records of the backlog's events stay for the dedupe window,
	// as they must (see BENCHMARKS.md).
	StoreBefore    StoreSize `json:"store_before"`
	StoreBacklog   StoreSize `json:"store_with_backlog"`
	StoreDrained   StoreSize `json:"store_drained"`
	ShrunkAfterSec float64   `json:"store_shrunk_after_sec"`
	// Batched is the same backlog again, on a fresh server, for a
	// destination whose webhook sends backlogBatch events per request (the
	// engine's batch path).
	Batched BatchedDrain `json:"batched"`
}

// BatchedDrain is the backlog scenario's second backlog, drained in batches.
type BatchedDrain struct {
	Events                int64     `json:"backlog_events"`
	IngestPerSec          float64   `json:"backlog_ingest_per_sec"`
	RSSMB                 []float64 `json:"rss_mb_per_second"`
	PeakRSSBytes          int64     `json:"peak_rss_bytes"`
	BatchSize             int       `json:"batch_size"`
	FirstDeliveryAfterSec float64   `json:"first_delivery_after_recovery_sec"`
	DrainPerSec           float64   `json:"drain_per_sec"`
	// EventsPerRequest is accepted events over requests answered 200.
	EventsPerRequest float64 `json:"events_per_request"`
	Lost             int64   `json:"lost"`
}

func runBacklog(ctx context.Context, e *env) (any, error) {
	down, _, err := e.startSink("down", "--down")
	if err != nil {
		return nil, err
	}
	up, _, err := e.startSink("up")
	if err != nil {
		return nil, err
	}
	srv, err := e.startServer("fanout", fmt.Sprintf(backlogConfig, down, up), "")
	if err != nil {
		return nil, err
	}
	res := BacklogResult{Scenario: "backlog"}
	pid := srv.cmd.Process.Pid
	stopRSS := sampleRSS(pid)
	app := func(prefix string) load {
		return load{t: newTracker(srv.track, "wk_app"), source: "app", rate: 100, batch: 1, workers: 2, prefix: prefix}
	}
	latency := func() (Percentiles, error) {
		s, err := sinkStats(up)
		return Percentiles{s.Latency.Count, s.Latency.P50, s.Latency.P99}, err
	}
	// window measures the up destination's latency while app sends for
	// the bench's duration, on a sink reset before and after.
	window := func(prefix, what string) (Percentiles, error) {
		e.logf("%s: app sends 100 events/s to the up destination for %v", what, e.opts.Duration)
		sinkPost(up, "reset")
		defer sinkPost(up, "reset")
		lctx, cancel := context.WithTimeout(ctx, e.opts.Duration)
		r := app(prefix).run(lctx, 0)
		cancel()
		if _, _, err := waitAccepted(up, uint64(r.acked), time.Minute); err != nil {
			return Percentiles{}, err
		}
		return latency()
	}

	if res.Quiet, err = window("q", "quiet"); err != nil {
		return nil, err
	}
	if res.StoreBefore, err = e.storeSize(srv.dataDir); err != nil {
		return nil, err
	}

	e.logf("backlog: %d events pile up for the down destination while app keeps sending", e.opts.Events)
	stopApp := app("d").background(ctx)
	bulk := load{t: newTracker(srv.track, "wk_bulk"), source: "bulk", rate: backlogRate, batch: 100, workers: 8, prefix: "b"}
	br := bulk.run(ctx, int64(e.opts.Events))
	appRes := stopApp()
	res.Events, res.IngestPerSec = br.acked, br.rate()
	if _, _, err := waitAccepted(up, uint64(appRes.acked), time.Minute); err != nil {
		return nil, err
	}
	if res.Building, err = latency(); err != nil {
		return nil, err
	}
	if res.Waiting, err = window("w", fmt.Sprintf("waiting (%d events wait)", res.Events)); err != nil {
		return nil, err
	}
	if res.StoreBacklog, err = e.storeSize(srv.dataDir); err != nil {
		return nil, err
	}

	e.logf("recovery: the down destination comes back")
	d, err := drain(down, br.acked)
	if err != nil {
		return nil, err
	}
	res.FirstDeliveryAfterSec, res.DrainPerSec, res.Lost = d.firstAfter, d.perSec, d.lost
	if res.StoreDrained, res.ShrunkAfterSec, err = e.waitShrunk(srv.dataDir, res.StoreBefore); err != nil {
		return nil, err
	}
	// The machine's request rate right after the drain, on a sink of its
	// own so that the up destination's counts stay fanout's.
	bareSink, bareProc, err := e.startSink("bare")
	if err != nil {
		return nil, err
	}
	e.logf("bare client: 64 workers posting one event per request for %v", e.opts.Duration/2)
	res.BareRequestsPerSec = bareClient(ctx, "http://"+bareSink+"/hook", 64, e.opts.Duration/2)
	res.DrainVsBare = res.DrainPerSec / res.BareRequestsPerSec
	bareProc.stop()

	// The quiet figure again, with the backlog gone: the machine is shared,
	// and a baseline taken only before the backlog would count the drift of
	// the next minutes as the backlog's effect.
	if res.QuietAfter, err = window("a", "quiet again (backlog drained)"); err != nil {
		return nil, err
	}
	res.QuietP99 = (res.Quiet.P99 + res.QuietAfter.P99) / 2
	res.P99Ratio = res.Waiting.P99 / res.QuietP99
	res.BuildP99Ratio = res.Building.P99 / res.QuietP99

	res.PeakRSSBytes, _ = peakRSS(pid)
	res.RSSMB = stopRSS()
	srv.stop()

	// The same backlog for a destination that takes batches: what the
	// drain becomes when a request carries many events. A server of its
	// own, so that it starts from the state the first one did.
	downBatch, _, err := e.startSink("down-batch", "--down")
	if err != nil {
		return nil, err
	}
	bsrv, err := e.startServer("fanout-batched", fmt.Sprintf(batchedConfig, downBatch, backlogBatch), "")
	if err != nil {
		return nil, err
	}
	defer bsrv.stop()
	stopRSS = sampleRSS(bsrv.cmd.Process.Pid)
	e.logf("batched: %d events pile up for down-batch, whose webhook sends %d per request", e.opts.Events, backlogBatch)
	b2 := load{t: newTracker(bsrv.track, "wk_bulk"), source: "bulk", rate: backlogRate, batch: 100, workers: 8, prefix: "c"}.run(ctx, int64(e.opts.Events))
	res.Batched = BatchedDrain{Events: b2.acked, IngestPerSec: b2.rate(), BatchSize: backlogBatch}
	e.logf("recovery: down-batch comes back")
	if d, err = drain(downBatch, b2.acked); err != nil {
		return nil, err
	}
	res.Batched.FirstDeliveryAfterSec, res.Batched.DrainPerSec, res.Batched.Lost = d.firstAfter, d.perSec, d.lost
	if n := d.stats.Status[200]; n > 0 {
		res.Batched.EventsPerRequest = float64(d.stats.Accepted) / float64(n)
	}
	res.Batched.PeakRSSBytes, _ = peakRSS(bsrv.cmd.Process.Pid)
	res.Batched.RSSMB = stopRSS()

	e.table([][2]string{
		{"backlog", fmt.Sprintf("%d events, ingested at %.0f events/s", res.Events, res.IngestPerSec)},
		{"peak RSS", mb(res.PeakRSSBytes)},
		{"up destination p99, quiet", fmt.Sprintf("%.1f ms (%.1f before the backlog, %.1f after its drain; %d events each)", res.QuietP99, res.Quiet.P99, res.QuietAfter.P99, res.Quiet.Count)},
		{"  while the backlog waits", fmt.Sprintf("%.1f ms (%d events), ratio %.2f", res.Waiting.P99, res.Waiting.Count, res.P99Ratio)},
		{"  while it is ingested beside", fmt.Sprintf("%.1f ms (%d events), ratio %.2f", res.Building.P99, res.Building.Count, res.BuildP99Ratio)},
		{"first delivery after recovery", fmt.Sprintf("%.1f s (circuit probe)", res.FirstDeliveryAfterSec)},
		{"drain, one event per request", fmt.Sprintf("%.0f events/s, %.2f x a bare client's %.0f req/s", res.DrainPerSec, res.DrainVsBare, res.BareRequestsPerSec)},
		{"lost", fmt.Sprint(res.Lost)},
		{"store: before / backlog waiting / drained", fmt.Sprintf("%s / %s / %s", mb(res.StoreBefore.Total), mb(res.StoreBacklog.Total), mb(res.StoreDrained.Total))},
		{"  job tables", e.sizes(res.StoreBefore.JobTables, res.StoreBacklog.JobTables, res.StoreDrained.JobTables)},
		{"  dedupe records", e.sizes(res.StoreBefore.Dedupe, res.StoreBacklog.Dedupe, res.StoreDrained.Dedupe) +
			perEvent(res.StoreDrained.Dedupe-res.StoreBefore.Dedupe, res.Events)},
		{"  stats", e.sizes(res.StoreBefore.Stats, res.StoreBacklog.Stats, res.StoreDrained.Stats)},
		{"back within 10% once drained", shrunk(e.storage, res.ShrunkAfterSec)},
		{"batched backlog (fresh server)", fmt.Sprintf("%d events, ingested at %.0f events/s", res.Batched.Events, res.Batched.IngestPerSec)},
		{"peak RSS", mb(res.Batched.PeakRSSBytes)},
		{"first delivery after recovery", fmt.Sprintf("%.1f s (circuit probe)", res.Batched.FirstDeliveryAfterSec)},
		{fmt.Sprintf("drain, batches of %d", res.Batched.BatchSize), fmt.Sprintf("%.0f events/s (%.1f events per request)", res.Batched.DrainPerSec, res.Batched.EventsPerRequest)},
		{"lost", fmt.Sprint(res.Batched.Lost)},
	})
	return res, nil
}

// sampleRSS records the resident set size of process pid every second
// until the returned function is called, which returns the samples in MB.
func sampleRSS(pid int) func() []float64 {
	var samples []float64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				if r, err := rss(pid); err == nil {
					samples = append(samples, float64(r)/(1<<20))
				}
			case <-stop:
				return
			}
		}
	}()
	return func() []float64 {
		close(stop)
		wg.Wait()
		return samples
	}
}

// drained is how a backlog left once its destination came back.
type drained struct {
	firstAfter float64 // seconds from recovery to the first event accepted
	perSec     float64 // events/s from the first event accepted to the last
	lost       int64
	stats      sink.Stats
}

// drain brings the sink at addr back up and waits until it has accepted
// all n events of its backlog.
func drain(addr string, n int64) (drained, error) {
	recovered := time.Now()
	if err := sinkPost(addr, "up"); err != nil {
		return drained{}, err
	}
	first, _, err := waitAccepted(addr, 1, 5*time.Minute)
	if err != nil {
		return drained{}, err
	}
	done, s, err := waitAccepted(addr, uint64(n), 30*time.Minute)
	if err != nil {
		return drained{}, err
	}
	return drained{
		firstAfter: first.Sub(recovered).Seconds(),
		perSec:     float64(s.Unique) / done.Sub(first).Seconds(),
		lost:       n - int64(s.Unique),
		stats:      s,
	}, nil
}

// shrinkWait is how long after a drain the store has to come back within
// 10% of its size before the backlog, measured every shrinkPoll.
const (
	shrinkWait = 2 * time.Minute
	shrinkPoll = 2 * time.Second
)

// waitShrunk measures the store on dataDir every shrinkPoll until it is
// within 10% of before (the job tables on PostgreSQL, the whole store on
// Pebble) or shrinkWait has passed. It returns the last measure and when
// it came back, in seconds (-1 if it did not).
func (e *env) waitShrunk(dataDir string, before StoreSize) (StoreSize, float64, error) {
	measure := func(s StoreSize) int64 {
		if e.storage == StorePostgres {
			return s.JobTables
		}
		return s.Total
	}
	e.logf("the store shrinks: its size every %v for at most %v", shrinkPoll, shrinkWait)
	start := time.Now()
	for {
		s, err := e.storeSize(dataDir)
		if err != nil {
			return s, 0, err
		}
		if m := measure(before); measure(s) <= m+m/10 {
			return s, time.Since(start).Seconds(), nil
		}
		if time.Since(start) >= shrinkWait {
			return s, -1, nil
		}
		time.Sleep(shrinkPoll)
	}
}

// sizes prints three sizes of a part of the PostgreSQL store, which the
// embedded store does not split.
func (e *env) sizes(before, backlog, drained int64) string {
	if e.storage != StorePostgres {
		return "-"
	}
	kb := func(b int64) string { return fmt.Sprintf("%.0f kB", float64(b)/1024) }
	return fmt.Sprintf("%s / %s / %s", kb(before), kb(backlog), kb(drained))
}

// perEvent says how many bytes a backlog's event left, when it left any.
func perEvent(bytes, events int64) string {
	if bytes <= 0 || events == 0 {
		return ""
	}
	return fmt.Sprintf(" (%.0f B per backlog event)", float64(bytes)/float64(events))
}

// shrunk says when the store came back within 10%, and of what.
func shrunk(storage string, sec float64) string {
	what := "the store"
	if storage == StorePostgres {
		what = "the job tables"
	}
	if sec < 0 {
		return fmt.Sprintf("no: %s not within %v", what, shrinkWait)
	}
	return fmt.Sprintf("%.0f s after the drain (%s)", sec, what)
}
