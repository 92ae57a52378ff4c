package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// CrashResult holds the crash scenario's figures.
type CrashResult struct {
	Scenario   string `json:"scenario"`
	Kills      int    `json:"kills"`
	Acked      int    `json:"acked_events"`
	Delivered  uint64 `json:"delivered_unique"`
	Lost       int    `json:"lost"`
	Duplicates uint64 `json:"duplicates"`
}

func runCrash(ctx context.Context, e *env) (any, error) {
	record := filepath.Join(e.opts.Dir, "received.jsonl")
	sinkAddr, sinkProc, err := e.startSink("sink", "--record", record)
	if err != nil {
		return nil, err
	}
	srv, err := e.startServer("fanout", fmt.Sprintf(webhookConfig, sinkAddr, 64), "")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(e.opts.Dir, "fanout.yaml")
	res := CrashResult{Scenario: "crash", Kills: 20}

	e.logf("load: 5,000 events/s in 100-event batches; SIGKILL the server %d times", res.Kills)
	lctx, stopLoad := context.WithCancel(ctx)
	var lr loadResult
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lr = load{t: newTracker(srv.track, "wk_bench"), source: "web", rate: 5000, batch: 100, workers: 8, prefix: "c", keep: true}.run(lctx, 0)
	}()
	cur := srv.proc
	for k := range res.Kills {
		time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond)
		cur.kill()
		p, err := e.start(fmt.Sprintf("fanout-restart-%d", k+1), "serve", "--config", cfgPath, "--log-level", "warn")
		if err != nil {
			stopLoad()
			wg.Wait()
			return nil, err
		}
		if err := waitHTTP(srv.admin+"/healthz", p); err != nil {
			stopLoad()
			wg.Wait()
			return nil, err
		}
		cur = p
	}
	time.Sleep(time.Second)
	stopLoad()
	wg.Wait()
	res.Acked = len(lr.ids)
	e.logf("waiting for the %d acknowledged events", res.Acked)
	_, s, err := waitAccepted(sinkAddr, uint64(res.Acked), 5*time.Minute)
	if err != nil {
		e.logf("%v", err)
	}
	res.Delivered, res.Duplicates = s.Unique, s.Duplicates
	cur.stop()
	sinkProc.stop() // flushes its record file
	res.Lost, _, err = unaccounted(srv.dataDir, "sink", lr.ids, record)
	if err != nil {
		return nil, err
	}
	if res.Lost > 0 {
		fmt.Fprintf(os.Stderr, "LOST %d acknowledged events\n", res.Lost)
	}
	e.table([][2]string{
		{"SIGKILLs under load", fmt.Sprint(res.Kills)},
		{"acknowledged events", fmt.Sprint(res.Acked)},
		{"delivered (unique)", fmt.Sprint(res.Delivered)},
		{"lost", fmt.Sprint(res.Lost)},
		{"duplicates", fmt.Sprint(res.Duplicates)},
	})
	return res, nil
}
