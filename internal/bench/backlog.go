package bench

import (
	"context"
	"fmt"
	"sync"
	"time"
)

const backlogConfig = `listen: {{listen}}
admin_listen: {{admin}}
data_dir: {{data}}
network:
  allow_private: true
sources:
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
	DrainPerSec           float64 `json:"drain_per_sec"`
	Lost                  int64   `json:"lost"`
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
	stopRSS := make(chan struct{})
	var rssWG sync.WaitGroup
	rssWG.Add(1)
	go func() {
		defer rssWG.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				if r, err := rss(pid); err == nil {
					res.RSSMB = append(res.RSSMB, float64(r)/(1<<20))
				}
			case <-stopRSS:
				return
			}
		}
	}()
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

	e.logf("backlog: %d events pile up for the down destination while app keeps sending", e.opts.Events)
	appCtx, stopApp := context.WithCancel(ctx)
	var appRes loadResult
	var appWG sync.WaitGroup
	appWG.Add(1)
	go func() {
		defer appWG.Done()
		appRes = app("d").run(appCtx, 0)
	}()
	// A steady rate, below what ingest can take, so that the figure is the
	// other destination's latency beside a backlog, not beside a saturated CPU.
	bulk := load{t: newTracker(srv.track, "wk_bulk"), source: "bulk", rate: 20000, batch: 100, workers: 8, prefix: "b"}
	br := bulk.run(ctx, int64(e.opts.Events))
	stopApp()
	appWG.Wait()
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

	e.logf("recovery: the down destination comes back")
	recovered := time.Now()
	if err := sinkPost(down, "up"); err != nil {
		return nil, err
	}
	first, _, err := waitAccepted(down, 1, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	res.FirstDeliveryAfterSec = first.Sub(recovered).Seconds()
	done, s, err := waitAccepted(down, uint64(br.acked), 30*time.Minute)
	if err != nil {
		return nil, err
	}
	res.DrainPerSec = float64(s.Unique) / done.Sub(first).Seconds()
	res.Lost = br.acked - int64(s.Unique)

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
	close(stopRSS)
	rssWG.Wait()
	srv.stop()

	e.table([][2]string{
		{"backlog", fmt.Sprintf("%d events, ingested at %.0f events/s", res.Events, res.IngestPerSec)},
		{"peak RSS", mb(res.PeakRSSBytes)},
		{"up destination p99, quiet", fmt.Sprintf("%.1f ms (%.1f before the backlog, %.1f after its drain; %d events each)", res.QuietP99, res.Quiet.P99, res.QuietAfter.P99, res.Quiet.Count)},
		{"  while the backlog waits", fmt.Sprintf("%.1f ms (%d events), ratio %.2f", res.Waiting.P99, res.Waiting.Count, res.P99Ratio)},
		{"  while it is ingested beside", fmt.Sprintf("%.1f ms (%d events), ratio %.2f", res.Building.P99, res.Building.Count, res.BuildP99Ratio)},
		{"first delivery after recovery", fmt.Sprintf("%.1f s (circuit probe)", res.FirstDeliveryAfterSec)},
		{"drain", fmt.Sprintf("%.0f events/s", res.DrainPerSec)},
		{"lost", fmt.Sprint(res.Lost)},
	})
	return res, nil
}
