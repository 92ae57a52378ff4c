package bench

import (
	"context"
	"sync"
	"time"
)

// load drives events into one source.
type load struct {
	t      *tracker
	source string
	// rate is events per second; 0 sends as fast as the workers can.
	rate    float64
	batch   int
	workers int
	// prefix makes messageIds unique across loads.
	prefix string
	// keep records the messageIds of every acknowledged batch.
	keep bool
	// pick, when set, chooses the tracking API and source of batch i
	// instead of t and source: the cluster scenario spreads its load over
	// the nodes and sources with it.
	pick func(i int64) (*tracker, string)
}

type loadResult struct {
	acked, failed int64
	elapsed       time.Duration
	ids           []string
}

func (r loadResult) rate() float64 { return float64(r.acked) / r.elapsed.Seconds() }

// background runs l in its own goroutine until ctx ends or the returned
// stop is called; stop ends the load, waits for it and returns its result.
// stop may be called more than once.
func (l load) background(ctx context.Context) (stop func() loadResult) {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var res loadResult
	go func() {
		defer close(done)
		res = l.run(lctx, 0)
	}()
	return func() loadResult {
		cancel()
		<-done
		return res
	}
}

// run sends until ctx ends (or, with max > 0, until max events were tried).
func (l load) run(ctx context.Context, max int64) loadResult {
	tickets := make(chan int64)
	go func() {
		defer close(tickets)
		start := time.Now()
		for i := int64(0); max == 0 || i*int64(l.batch) < max; i++ {
			if l.rate > 0 {
				due := start.Add(time.Duration(float64(i*int64(l.batch)) / l.rate * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case tickets <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	var (
		res loadResult
		mu  sync.Mutex
		wg  sync.WaitGroup
	)
	start := time.Now()
	for range l.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One body buffer per sender, reused once send returns: the
			// tracking API reads a whole body before it answers, and the
			// transport's own retries happen inside Do.
			var body, id []byte
			var ids []string
			for i := range tickets {
				t, source := l.t, l.source
				if l.pick != nil {
					t, source = l.pick(i)
				}
				body = append(body[:0], `{"batch":[`...)
				ids = ids[:0]
				for j := range l.batch {
					if j > 0 {
						body = append(body, ',')
					}
					id = appendID(id[:0], l.prefix, i, j)
					body = appendEvent(body, id, source)
					if l.keep {
						ids = append(ids, string(id))
					}
				}
				body = append(body, `]}`...)
				// A request in flight when the load ends still counts: its
				// answer says whether the events were stored.
				err := t.send(context.WithoutCancel(ctx), body)
				mu.Lock()
				if err != nil {
					res.failed += int64(l.batch)
				} else {
					res.acked += int64(l.batch)
					if l.keep {
						res.ids = append(res.ids, ids...)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}
