package bench

import (
	"context"

	"fmt"
	"github.com/fanout/fanout/internal/sink"
	"strings"
	"sync"
	"time"
)

// ManyQueuesResult holds the many-queues scenario's figures.
type ManyQueuesResult struct {
	Scenario string `json:"scenario"`
	// BaselineCPUUs is CPU per delivered event with one queue.
	BaselineCPUUs float64         `json:"baseline_cpu_per_event_us"`
	Runs          []ManyQueuesRun `json:"runs"`
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
	base, err := manyQueuesRun(ctx, e, sinkAddr, 1, 1, 100_000)
	if err != nil {
		return nil, err
	}
	res.BaselineCPUUs = base.CPUUs
	for _, size := range []struct{ sources, perSource int }{{100, 5}, {1000, 2}} {
		r, err := manyQueuesRun(ctx, e, sinkAddr, size.sources, 100, size.perSource)
		if err != nil {
			return nil, err
		}
		r.VsBase = r.CPUUs / base.CPUUs
		res.Runs = append(res.Runs, r)
	}
	rows := [][2]string{{"1 queue (baseline)", fmt.Sprintf("%.1f µs CPU per delivered event (%d events, %.1f s)", base.CPUUs, base.Delivered, base.Seconds)}}
	for _, r := range res.Runs {
		rows = append(rows, [2]string{fmt.Sprintf("%d queues", r.Pairs),
			fmt.Sprintf("%.1f µs CPU per delivered event = %.2f x baseline (%d events, %.1f s, peak RSS %s)", r.CPUUs, r.VsBase, r.Delivered, r.Seconds, mb(r.PeakRSS))})
	}
	e.table(rows)
	return res, nil
}

// manyQueuesRun starts a server with sources x dests pairs, sends perSource
// events from every source, and measures the server's CPU until all are
// delivered.
func manyQueuesRun(ctx context.Context, e *env, sinkAddr string, sources, dests, perSource int) (ManyQueuesRun, error) {
	var cfg strings.Builder
	cfg.WriteString("listen: {{listen}}\nadmin_listen: {{admin}}\ndata_dir: {{data}}\nnetwork:\n  allow_private: true\nsources:\n")
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
	srv, err := e.startServer(fmt.Sprintf("fanout-%d", pairs), cfg.String(), "")
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
				l := load{t: newTracker(srv.track, fmt.Sprintf("wk_s%d", i)), source: names[i], batch: batch, workers: 1, prefix: fmt.Sprintf("m%d-%d", pairs, i)}
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
