package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// webhookConfig is a one-source, one-destination configuration.
const webhookConfig = `sources:
  - name: web
    write_key: wk_bench
destinations:
  - name: sink
    type: webhook
    sources: [web]
    settings:
      url: http://%s/hook
    delivery:
      concurrency: %d
`

// ThroughputResult holds the throughput scenario's figures.
type ThroughputResult struct {
	Scenario string `json:"scenario"`
	// BareRequestsPerSec is a bare Go HTTP client posting one event per
	// request to the same sink: the machine's limit for delivery.
	BareRequestsPerSec float64 `json:"bare_requests_per_sec"`
	// Runs holds one ingest-and-drain run per visibility mode.
	Runs []ThroughputRun `json:"runs"`
	// VisibilityCost is 1 - (events/s with visibility on) / (events/s with
	// it off), for ingest and for delivery, when both were measured.
	IngestCostOfVisibility   float64 `json:"ingest_cost_of_visibility,omitempty"`
	DeliveryCostOfVisibility float64 `json:"delivery_cost_of_visibility,omitempty"`
	// P50/P99 are end-to-end latencies (receivedAt to the sink's answer) at
	// a rate that does not saturate the machine.
	LatencyRate float64 `json:"latency_phase_events_per_sec"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
}

// ThroughputRun is one ingest-and-drain run.
type ThroughputRun struct {
	Visibility string `json:"visibility"`
	// IngestEventsPerSec is durable events/s accepted in 100-event batches,
	// while delivery runs at the same time.
	IngestEventsPerSec float64 `json:"ingest_events_per_sec"`
	IngestedEvents     int64   `json:"ingested_events"`
	// DeliveredEventsPerSec is events/s delivered (one per request) over
	// the whole run, ingest and drain.
	DeliveredEventsPerSec float64 `json:"delivered_events_per_sec"`
	// DrainEventsPerSec is events/s delivered after ingest stopped: the
	// delivery engine alone, comparable with the bare client.
	DrainEventsPerSec float64 `json:"drain_events_per_sec"`
	DrainVsBare       float64 `json:"drain_vs_bare"`
	// CPUPerDeliveredEventUs is fanout's CPU time per delivered event during
	// the drain phase.
	CPUPerDeliveredEventUs float64 `json:"cpu_per_delivered_event_us"`
	PeakRSSBytes           int64   `json:"peak_rss_bytes"`
	Lost                   int64   `json:"lost"`
	Duplicates             uint64  `json:"duplicates"`
}

func runThroughput(ctx context.Context, e *env) (any, error) {
	sinkAddr, _, err := e.startSink("sink")
	if err != nil {
		return nil, err
	}
	res := ThroughputResult{Scenario: "throughput"}

	e.logf("bare client: 64 workers posting one event per request for %v", e.opts.Duration/2)
	res.BareRequestsPerSec = bareClient(ctx, "http://"+sinkAddr+"/hook", 64, e.opts.Duration/2)
	// Let requests cut off at the end of the phase land before the reset.
	time.Sleep(500 * time.Millisecond)

	modes := []string{"on"}
	switch e.opts.Visibility {
	case "off":
		modes = []string{"off"}
	case "both":
		// Twice each, in the order off, on, on, off: a shift in the
		// machine's speed that grows steadily through the run (load from
		// elsewhere, a disk slowing as it fills) then weighs on both modes
		// alike, where off, on, off, on would charge it to "on".
		modes = []string{"off", "on", "on", "off"}
	}
	sum := map[string]*[2]float64{"on": {}, "off": {}}
	for i, mode := range modes {
		run, srv, err := ingestAndDrain(ctx, e, sinkAddr, fmt.Sprintf("fanout-%d-%s", i, mode), mode)
		if srv != nil {
			srv.stop()
		}
		if err != nil {
			return nil, err
		}
		run.DrainVsBare = run.DrainEventsPerSec / res.BareRequestsPerSec
		res.Runs = append(res.Runs, run)
		sum[mode][0] += run.IngestEventsPerSec
		sum[mode][1] += run.DeliveredEventsPerSec
	}
	if e.opts.Visibility == "both" {
		res.IngestCostOfVisibility = 1 - sum["on"][0]/sum["off"][0]
		res.DeliveryCostOfVisibility = 1 - sum["on"][1]/sum["off"][1]
	}

	// Latency when not saturated: a steady 2,000 events/s in batches of 20,
	// on a fresh server (the last one is busy compacting what it drained).
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return nil, err
	}
	srv, err := e.startServer("fanout-latency", fmt.Sprintf(webhookConfig, sinkAddr, 64), "")
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	res.LatencyRate = 2000
	e.logf("latency: %.0f events/s for %v", res.LatencyRate, e.opts.Duration)
	lctx, cancel := context.WithTimeout(ctx, e.opts.Duration)
	lr := load{t: newTracker(srv.track, "wk_bench"), source: "web", rate: res.LatencyRate, batch: 20, workers: 8, prefix: "l"}.run(lctx, 0)
	cancel()
	_, s, err := waitAccepted(sinkAddr, uint64(lr.acked), time.Minute)
	if err != nil {
		return nil, err
	}
	res.P50Ms, res.P99Ms = s.Latency.P50, s.Latency.P99

	rows := [][2]string{{"bare client, one event per request", fmt.Sprintf("%.0f req/s", res.BareRequestsPerSec)}}
	for _, r := range res.Runs {
		v := " (visibility " + r.Visibility + ")"
		rows = append(rows,
			[2]string{"durable ingest, 100-event batches" + v, fmt.Sprintf("%.0f events/s (%d events)", r.IngestEventsPerSec, r.IngestedEvents)},
			[2]string{"delivered, whole run" + v, fmt.Sprintf("%.0f events/s", r.DeliveredEventsPerSec)},
			[2]string{"delivered, drain only" + v, fmt.Sprintf("%.0f events/s = %.2f x bare client", r.DrainEventsPerSec, r.DrainVsBare)},
			[2]string{"CPU per delivered event" + v, fmt.Sprintf("%.1f µs", r.CPUPerDeliveredEventUs)},
			[2]string{"peak RSS" + v, mb(r.PeakRSSBytes)},
			[2]string{"lost / duplicates" + v, fmt.Sprintf("%d / %d", r.Lost, r.Duplicates)})
	}
	if e.opts.Visibility == "both" {
		rows = append(rows, [2]string{"cost of stats + debugger + metrics (mean of runs)",
			fmt.Sprintf("ingest %.1f%%, delivery %.1f%% fewer events/s", 100*res.IngestCostOfVisibility, 100*res.DeliveryCostOfVisibility)})
	}
	rows = append(rows, [2]string{fmt.Sprintf("end-to-end at %.0f events/s", res.LatencyRate), fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", res.P50Ms, res.P99Ms)})
	e.table(rows)
	return res, nil
}

// ingestAndDrain starts a server, ingests as fast as 32 senders go for the
// scenario's duration while delivery runs, then waits for the rest to drain.
func ingestAndDrain(ctx context.Context, e *env, sinkAddr, name, visibility string) (ThroughputRun, *server, error) {
	run := ThroughputRun{Visibility: visibility}
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return run, nil, err
	}
	var flags []string
	if visibility == "off" {
		flags = append(flags, "--no-visibility")
	}
	srv, err := e.startServer(name, fmt.Sprintf(webhookConfig, sinkAddr, 64), "", flags...)
	if err != nil {
		return run, nil, err
	}
	e.logf("ingest (visibility %s): 32 senders, 100-event batches, as fast as they go, for %v", visibility, e.opts.Duration)
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, e.opts.Duration)
	lr := load{t: newTracker(srv.track, "wk_bench"), source: "web", batch: 100, workers: 32, prefix: name}.run(lctx, 0)
	cancel()
	run.IngestedEvents = lr.acked
	run.IngestEventsPerSec = lr.rate()

	s, err := sinkStats(sinkAddr)
	if err != nil {
		return run, srv, err
	}
	drainFrom, drainStart := s.Unique, time.Now()
	cpu0, _ := cpuTime(srv.cmd.Process.Pid)
	e.logf("drain: %d of %d delivered when ingest stopped", drainFrom, lr.acked)
	done, s, err := waitAccepted(sinkAddr, uint64(lr.acked), 10*e.opts.Duration)
	if err != nil {
		return run, srv, err
	}
	cpu1, _ := cpuTime(srv.cmd.Process.Pid)
	run.DeliveredEventsPerSec = float64(s.Unique) / done.Sub(start).Seconds()
	if drained := s.Unique - drainFrom; drained > 0 {
		run.DrainEventsPerSec = float64(drained) / done.Sub(drainStart).Seconds()
		run.CPUPerDeliveredEventUs = float64((cpu1 - cpu0).Microseconds()) / float64(drained)
	}
	run.Duplicates = s.Duplicates
	run.Lost = lr.acked - int64(s.Unique)
	run.PeakRSSBytes, _ = peakRSS(srv.cmd.Process.Pid)
	return run, srv, nil
}

// bareClient posts one event per request from workers goroutines for d and
// returns the rate of 2xx answers.
func bareClient(ctx context.Context, url string, workers int, d time.Duration) float64 {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxIdleConns: workers}}
	var ok atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body, id []byte
			for i := 0; ctx.Err() == nil; i++ {
				id = appendID(id[:0], "bare", int64(w), i)
				body = appendEvent(body[:0], id, "web")
				req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("webhook-id", string(id))
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(ok.Load()) / time.Since(start).Seconds()
}

func mb(b int64) string { return fmt.Sprintf("%.0f MB", float64(b)/(1<<20)) }
