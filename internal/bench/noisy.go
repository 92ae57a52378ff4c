package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
)

const noisyConfig = `sources:
  - {name: a, write_key: wk_a}
  - {name: b, write_key: wk_b}
  - {name: c, write_key: wk_c}
destinations:
  - name: shared
    type: webhook
    sources: [a, b, c]
    settings: {url: "http://%s/shared"}
  - name: broken
    type: webhook
    sources: [a]
    settings: {url: "http://%s/broken"}
`

// NoisyResult holds the noisy-neighbor scenario's figures.
type NoisyResult struct {
	Scenario string `json:"scenario"`
	// Quiet and Flood hold B's and C's end-to-end latencies with A silent
	// and with A flooding.
	Quiet map[string]Percentiles `json:"quiet"`
	Flood map[string]Percentiles `json:"flood"`
	// P99Ratio is flood p99 / quiet p99 per source.
	P99Ratio map[string]float64 `json:"p99_ratio"`
	// ASentPerSec is A's acknowledged rate; ADeliveredPerSec what reached the
	// rate-limited shared destination (its limit is 200 requests/s).
	ASentPerSec      float64 `json:"a_sent_per_sec"`
	ADeliveredPerSec float64 `json:"a_delivered_per_sec"`
	// Lost counts acknowledged events neither delivered nor still queued.
	Lost    int `json:"lost"`
	Pending int `json:"pending_at_end"`
}

// Percentiles are end-to-end latencies in milliseconds.
type Percentiles struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
}

func runNoisyNeighbor(ctx context.Context, e *env) (any, error) {
	record := filepath.Join(e.opts.Dir, "shared-received.jsonl")
	shared, sharedProc, err := e.startSink("shared", "--rate-limit", "200", "--rate-limit-key", "header:Fanout-Source",
		"--retry-after", "1s", "--record", record)
	if err != nil {
		return nil, err
	}
	broken, _, err := e.startSink("broken", "--down")
	if err != nil {
		return nil, err
	}
	srv, err := e.startServer("fanout", fmt.Sprintf(noisyConfig, shared, broken), "")
	if err != nil {
		return nil, err
	}
	res := NoisyResult{Scenario: "noisy-neighbor", Quiet: map[string]Percentiles{}, Flood: map[string]Percentiles{}, P99Ratio: map[string]float64{}}
	small := func(src, prefix string) load {
		return load{t: newTracker(srv.track, "wk_"+src), source: src, rate: 50, batch: 1, workers: 2, prefix: prefix, keep: true}
	}
	var acked []string

	phase := func(name string, loads []load) ([]loadResult, error) {
		lctx, cancel := context.WithTimeout(ctx, e.opts.Duration)
		defer cancel()
		out := make([]loadResult, len(loads))
		var wg sync.WaitGroup
		for i, l := range loads {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i] = l.run(lctx, 0)
			}()
		}
		wg.Wait()
		for _, r := range out {
			acked = append(acked, r.ids...)
		}
		return out, nil
	}
	// waitKeys waits until the sink has accepted want events from each key.
	waitKeys := func(want map[string]int64) error {
		deadline := time.Now().Add(time.Minute)
		for {
			s, err := sinkStats(shared)
			if err != nil {
				return err
			}
			done := true
			for k, n := range want {
				if int64(s.Keys[k].Accepted) < n {
					done = false
				}
			}
			if done {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("B and C not all delivered within a minute: %+v", s.Keys)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	e.logf("A silent: B and C send 50 events/s each for %v", e.opts.Duration)
	rs, _ := phase("quiet", []load{small("b", "qb"), small("c", "qc")})
	if err := waitKeys(map[string]int64{"b": rs[0].acked, "c": rs[1].acked}); err != nil {
		return nil, err
	}
	s, err := sinkStats(shared)
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"b", "c"} {
		res.Quiet[k] = Percentiles{s.Keys[k].Latency.Count, s.Keys[k].Latency.P50, s.Keys[k].Latency.P99}
	}
	if err := sinkPost(shared, "reset"); err != nil {
		return nil, err
	}

	e.logf("A floods 5,000 events/s (and its second destination answers 503), B and C 50/s, for %v", e.opts.Duration)
	flood := load{t: newTracker(srv.track, "wk_a"), source: "a", rate: 5000, batch: 100, workers: 4, prefix: "fa", keep: true}
	floodStart := time.Now()
	rs, _ = phase("flood", []load{flood, small("b", "fb"), small("c", "fc")})
	floodTime := time.Since(floodStart)
	if err := waitKeys(map[string]int64{"b": rs[1].acked, "c": rs[2].acked}); err != nil {
		return nil, err
	}
	s, err = sinkStats(shared)
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"b", "c"} {
		res.Flood[k] = Percentiles{s.Keys[k].Latency.Count, s.Keys[k].Latency.P50, s.Keys[k].Latency.P99}
		res.P99Ratio[k] = res.Flood[k].P99 / res.Quiet[k].P99
	}
	res.ASentPerSec = float64(rs[0].acked) / floodTime.Seconds()
	res.ADeliveredPerSec = float64(s.Keys["a"].Accepted) / floodTime.Seconds()

	// Nothing lost: every acknowledged event reached the shared sink or is
	// still queued in the store for it.
	srv.stop()
	sharedProc.stop() // flushes its record file
	lost, pending, err := e.unaccounted(srv.dataDir, "shared", acked, record)
	if err != nil {
		return nil, err
	}
	res.Lost, res.Pending = lost, pending

	rows := [][2]string{}
	for _, k := range []string{"b", "c"} {
		rows = append(rows, [2]string{fmt.Sprintf("%s, A silent", k), fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", res.Quiet[k].P50, res.Quiet[k].P99)})
		rows = append(rows, [2]string{fmt.Sprintf("%s, A flooding", k), fmt.Sprintf("p50 %.1f ms, p99 %.1f ms (p99 ratio %.2f)", res.Flood[k].P50, res.Flood[k].P99, res.P99Ratio[k])})
	}
	rows = append(rows,
		[2]string{"A sent / delivered to shared", fmt.Sprintf("%.0f / %.0f events/s (sink limit 200 req/s)", res.ASentPerSec, res.ADeliveredPerSec)},
		[2]string{"lost (still queued)", fmt.Sprintf("%d (%d)", res.Lost, res.Pending)})
	e.table(rows)
	return res, nil
}

// unaccounted opens a stopped server's store and counts the acknowledged
// events that neither reached the sink (its --record file) nor wait in the
// store for destination dest.
func (e *env) unaccounted(dataDir, dest string, acked []string, record string) (lost, pending int, err error) {
	got, err := recordedIDs(record)
	if err != nil {
		return 0, 0, err
	}
	queued, err := e.queuedIDs(dataDir, dest)
	if err != nil {
		return 0, 0, err
	}
	for _, id := range acked {
		if queued[id] {
			pending++
		} else if !got[id] {
			lost++
		}
	}
	return lost, pending, nil
}

// queuedIDs returns the messageIds of every job for dest in a stopped
// server's store.
func (e *env) queuedIDs(dataDir, dest string) (map[string]bool, error) {
	st, err := e.openStore(dataDir)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ctx := context.Background()
	qs, err := st.Queues(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	far := time.Now().Add(100 * 365 * 24 * time.Hour)
	for _, q := range qs {
		if q.Destination != dest {
			continue
		}
		var after uint64
		for {
			jobs, err := st.Pending(ctx, q, after, 10000)
			if err != nil {
				return nil, err
			}
			for _, j := range jobs {
				out[j.Event.MessageID] = true
			}
			if len(jobs) < 10000 {
				break
			}
			after = jobs[len(jobs)-1].Seq
		}
		jobs, _, err := st.Retries(ctx, q, far, 1<<30)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			out[j.Event.MessageID] = true
		}
	}
	return out, nil
}

var _ jobstore.Store = (*pebble.Store)(nil)
