package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/sink"
)

// ManyQueuesResult holds the many-queues scenario's figures.
type ManyQueuesResult struct {
	Scenario string `json:"scenario"`
	// BaselineCPUUs is CPU per delivered event with one queue: the mean of
	// BaselineFirstUs and BaselineLastUs, measured before and after the
	// other sizes.
	BaselineCPUUs   float64         `json:"baseline_cpu_per_event_us"`
	BaselineFirstUs float64         `json:"baseline_first_cpu_per_event_us"`
	BaselineLastUs  float64         `json:"baseline_last_cpu_per_event_us"`
	Runs            []ManyQueuesRun `json:"runs"`
}

// ManyQueuesRun is one size of the scenario.
type ManyQueuesRun struct {
	Pairs     int     `json:"pairs"`
	Delivered int64   `json:"delivered"`
	CPUUs     float64 `json:"cpu_per_event_us"`
	VsBase    float64 `json:"vs_baseline"`
	Seconds   float64 `json:"seconds"`
	PeakRSS   int64   `json:"peak_rss_bytes"`
}

func runManyQueues(ctx context.Context, e *env) (any, error) {
	sinkAddr, _, err := e.startSink("sink")
	if err != nil {
		return nil, err
	}
	res := ManyQueuesResult{Scenario: "many-queues"}
	// The baseline runs first and last, and the sizes are compared with the
	// mean of the two: on a shared machine whose speed drifts during the
	// run, a baseline taken only at the start charges the drift to the
	// sizes measured after it.
	first, err := manyQueuesRun(ctx, e, sinkAddr, "first", 1, 1, 100_000)
	if err != nil {
		return nil, err
	}
	for _, size := range []struct{ sources, perSource int }{{100, 5}, {1000, 2}} {
		r, err := manyQueuesRun(ctx, e, sinkAddr, "", size.sources, 100, size.perSource)
		if err != nil {
			return nil, err
		}
		res.Runs = append(res.Runs, r)
	}
	last, err := manyQueuesRun(ctx, e, sinkAddr, "last", 1, 1, 100_000)
	if err != nil {
		return nil, err
	}
	res.BaselineFirstUs, res.BaselineLastUs = first.CPUUs, last.CPUUs
	res.BaselineCPUUs = (first.CPUUs + last.CPUUs) / 2
	for i := range res.Runs {
		res.Runs[i].VsBase = res.Runs[i].CPUUs / res.BaselineCPUUs
	}
	rows := [][2]string{{"1 queue (baseline)", fmt.Sprintf("%.1f µs CPU per delivered event (%.1f before the others, %.1f after; %d events each)",
		res.BaselineCPUUs, first.CPUUs, last.CPUUs, first.Delivered)}}
	for _, r := range res.Runs {
		rows = append(rows, [2]string{fmt.Sprintf("%d queues", r.Pairs),
			fmt.Sprintf("%.1f µs CPU per delivered event = %.2f x baseline (%d events, %.1f s, peak RSS %s)", r.CPUUs, r.VsBase, r.Delivered, r.Seconds, mb(r.PeakRSS))})
	}
	e.table(rows)
	return res, nil
}

// manyQueuesRun starts a server with sources x dests pairs, sends perSource
// events from every source, and measures the server's CPU until all are
// delivered. tag tells apart runs of the same size: their servers, data
// dirs and messageIds.
func manyQueuesRun(ctx context.Context, e *env, sinkAddr, tag string, sources, dests, perSource int) (ManyQueuesRun, error) {
	var cfg strings.Builder
	cfg.WriteString("sources:\n")
	names := make([]string, sources)
	for i := range sources {
		names[i] = fmt.Sprintf("s%d", i)
		fmt.Fprintf(&cfg, "  - {name: s%d, write_key: wk_s%d}\n", i, i)
	}
	list := strings.Join(names, ", ")
	cfg.WriteString("destinations:\n")
	conc := 64
	if dests > 1 {
		conc = 8
	}
	for d := range dests {
		fmt.Fprintf(&cfg, "  - name: d%d\n    type: webhook\n    sources: [%s]\n    settings: {url: \"http://%s/d%d\"}\n    delivery: {concurrency: %d}\n", d, list, sinkAddr, d, conc)
	}
	if err := sinkPost(sinkAddr, "reset"); err != nil {
		return ManyQueuesRun{}, err
	}
	pairs := sources * dests
	srv, err := e.startServer(fmt.Sprintf("fanout-%d%s", pairs, tag), cfg.String(), "")
	if err != nil {
		return ManyQueuesRun{}, err
	}
	defer srv.stop()
	e.logf("%d queues: %d sources x %d destinations, %d events per source", pairs, sources, dests, perSource)
	pid := srv.cmd.Process.Pid
	cpu0, _ := cpuTime(pid)
	start := time.Now()
	var acked int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				batch := min(perSource, 100)
				l := load{t: newTracker(srv.track, fmt.Sprintf("wk_s%d", i)), source: names[i], batch: batch, workers: 1, prefix: fmt.Sprintf("m%d%s-%d", pairs, tag, i)}
				r := l.run(ctx, int64(perSource))
				mu.Lock()
				acked += r.acked
				mu.Unlock()
			}
		}()
	}
	for i := range sources {
		work <- i
	}
	close(work)
	wg.Wait()
	// Every destination receives the same messageIds, so count accepted
	// events, not distinct ids.
	want := uint64(acked) * uint64(dests)
	done, s, err := waitSink(sinkAddr, 10*time.Minute, func(s sink.Stats) bool { return s.Accepted >= want })
	if err != nil {
		return ManyQueuesRun{}, err
	}
	cpu1, _ := cpuTime(pid)
	peak, _ := peakRSS(pid)
	return ManyQueuesRun{
		Pairs: pairs, Delivered: int64(s.Accepted),
		CPUUs:   float64((cpu1 - cpu0).Microseconds()) / float64(s.Accepted),
		Seconds: done.Sub(start).Seconds(), PeakRSS: peak,
	}, nil
}
