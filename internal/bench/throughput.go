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
const webhookConfig = `listen: {{listen}}
admin_listen: {{admin}}
data_dir: {{data}}
network:
  allow_private: true
sources:
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
	// CPUPerDeliveredEvent is fanout's CPU time per delivered event during
	// the drain phase.
	CPUPerDeliveredEventUs float64 `json:"cpu_per_delivered_event_us"`
	// P50/P99 are end-to-end latencies (receivedAt to the sink's answer) at
	// a rate that does not saturate the machine.
	LatencyRate  float64 `json:"latency_phase_events_per_sec"`
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	Lost         int64   `json:"lost"`
	Duplicates   uint64  `json:"duplicates"`
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
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return nil, err
	}

	srv, err := e.startServer("fanout", fmt.Sprintf(webhookConfig, sinkAddr, 64), "")
	if err != nil {
		return nil, err
	}
	t := newTracker(srv.track, "wk_bench")
	e.logf("ingest: 32 senders, 100-event batches, as fast as they go, for %v", e.opts.Duration)
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, e.opts.Duration)
	lr := load{t: t, source: "web", batch: 100, workers: 32, prefix: "t"}.run(lctx, 0)
	cancel()
	res.IngestedEvents = lr.acked
	res.IngestEventsPerSec = lr.rate()

	s, err := sinkStats(sinkAddr)
	if err != nil {
		return nil, err
	}
	drainFrom, drainStart := s.Unique, time.Now()
	cpu0, _ := cpuTime(srv.cmd.Process.Pid)
	e.logf("drain: %d of %d delivered when ingest stopped", drainFrom, lr.acked)
	done, s, err := waitAccepted(sinkAddr, uint64(lr.acked), 10*e.opts.Duration)
	if err != nil {
		return nil, err
	}
	cpu1, _ := cpuTime(srv.cmd.Process.Pid)
	res.DeliveredEventsPerSec = float64(s.Unique) / done.Sub(start).Seconds()
	if drained := s.Unique - drainFrom; drained > 0 {
		res.DrainEventsPerSec = float64(drained) / done.Sub(drainStart).Seconds()
		res.CPUPerDeliveredEventUs = float64((cpu1 - cpu0).Microseconds()) / float64(drained)
	}
	res.DrainVsBare = res.DrainEventsPerSec / res.BareRequestsPerSec
	res.Duplicates = s.Duplicates
	res.Lost = lr.acked - int64(s.Unique)

	// Latency when not saturated: a steady 2,000 events/s in batches of 20.
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return nil, err
	}
	res.LatencyRate = 2000
	e.logf("latency: %.0f events/s for %v", res.LatencyRate, e.opts.Duration/2)
	lctx, cancel = context.WithTimeout(ctx, e.opts.Duration/2)
	lr2 := load{t: t, source: "web", rate: res.LatencyRate, batch: 20, workers: 8, prefix: "l"}.run(lctx, 0)
	cancel()
	if _, s, err = waitAccepted(sinkAddr, uint64(lr2.acked), time.Minute); err != nil {
		return nil, err
	}
	res.P50Ms, res.P99Ms = s.Latency.P50, s.Latency.P99
	res.PeakRSSBytes, _ = peakRSS(srv.cmd.Process.Pid)
	srv.stop()

	e.table([][2]string{
		{"bare client, one event per request", fmt.Sprintf("%.0f req/s", res.BareRequestsPerSec)},
		{"durable ingest, 100-event batches", fmt.Sprintf("%.0f events/s (%d events)", res.IngestEventsPerSec, res.IngestedEvents)},
		{"delivered, whole run", fmt.Sprintf("%.0f events/s", res.DeliveredEventsPerSec)},
		{"delivered, drain only", fmt.Sprintf("%.0f events/s = %.2f x bare client", res.DrainEventsPerSec, res.DrainVsBare)},
		{"CPU per delivered event", fmt.Sprintf("%.1f µs", res.CPUPerDeliveredEventUs)},
		{fmt.Sprintf("end-to-end at %.0f events/s", res.LatencyRate), fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", res.P50Ms, res.P99Ms)},
		{"peak RSS", mb(res.PeakRSSBytes)},
		{"lost / duplicates", fmt.Sprintf("%d / %d", res.Lost, res.Duplicates)},
	})
	return res, nil
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
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("bare-%d-%d", w, i)
				req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(event(id, "web")))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("webhook-id", id)
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
