package delivery

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/jobstore"
	"golang.org/x/time/rate"
)

// limitedSink is the soak run's rate-limited destination on a simulated
// clock: a token bucket of perSecond with burst, answering after latency,
// 429 with Retry-After: 1 when the bucket is empty.
type limitedSink struct {
	lim     *rate.Limiter
	latency time.Duration
}

// simulateQueue runs one queue with an endless backlog against sink for
// d of simulated time, through the same decide, pause and AIMD code the
// scheduler runs (complete), and returns the requests delivered per
// second.
func simulateQueue(sink limitedSink, concurrency int, d time.Duration) float64 {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	q := newQueue(jobstore.Queue{Source: "s", Destination: "d"}, concurrency)
	var inflight doneHeap
	rnd := rand.New(rand.NewPCG(1, 2))
	delivered := 0
	for now.Before(t0.Add(d)) {
		for !q.pausedUntil.After(now) && q.inflight < int(q.limit) {
			q.inflight++
			q.sent++
			// The sink decides when the request reaches it, half way.
			ok := sink.lim.AllowN(now.Add(sink.latency/2), 1)
			heap.Push(&inflight, simDone{at: now.Add(sink.latency), seq: q.sent, ok: ok})
		}
		next := q.pausedUntil
		if len(inflight) > 0 && (!next.After(now) || inflight[0].at.Before(next)) {
			next = inflight[0].at
		}
		now = next
		for len(inflight) > 0 && !inflight[0].at.After(now) {
			c := heap.Pop(&inflight).(simDone)
			q.inflight--
			r := destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
			if !c.ok {
				r = destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, RetryAfter: time.Second}
			} else {
				delivered++
			}
			v := decide(facts{Now: now, Wall: now, Streak: q.streak, Jitter: rnd.Float64()}, []destinations.SendResult{{Result: r}})
			if !v.PauseUntil.IsZero() {
				q.pauseUntil(v.PauseUntil, v.Pause)
			}
			q.streak = v.Streak
			switch v.Limit {
			case limitIncrease:
				q.increase(concurrency)
			case limitDecrease:
				q.decrease(c.seq)
			}
		}
	}
	return float64(delivered) / d.Seconds()
}

type simDone struct {
	at  time.Time
	seq uint64
	ok  bool
}

type doneHeap []simDone

func (h doneHeap) Len() int           { return len(h) }
func (h doneHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h doneHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *doneHeap) Push(x any)        { *h = append(*h, x.(simDone)) }
func (h *doneHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// The soak run's finding: a sink that allows 200 requests/s per source
// (burst 20, 50 ms latency) with 429 + Retry-After: 1 got 74 requests/s
// from one queue; this simulation of it, with the limit halved at every
// 429 as it was then, 72/s. Each 429 pauses the queue a whole second,
// which it must honour; what it can do is not come back to a 429 soon
// (queue.increase).
func TestPauseAndAIMDNearTheAllowedRate(t *testing.T) {
	for _, tc := range []struct {
		perSecond float64
		burst     int
		latency   time.Duration
		want      float64 // the least share of perSecond delivered
	}{
		{200, 20, 50 * time.Millisecond, 0.85}, // the soak run's sink
		{200, 200, 50 * time.Millisecond, 0.95},
		{50, 5, 100 * time.Millisecond, 0.85},
		// The right concurrency is 2: the limit's steps are coarse.
		{200, 20, 10 * time.Millisecond, 0.6},
	} {
		sink := limitedSink{lim: rate.NewLimiter(rate.Limit(tc.perSecond), tc.burst), latency: tc.latency}
		got := simulateQueue(sink, DefaultConcurrency, 5*time.Minute)
		t.Logf("%v/s, burst %d, latency %v: %.1f requests/s (%.0f%%)", tc.perSecond, tc.burst, tc.latency, got, 100*got/tc.perSecond)
		if got < tc.want*tc.perSecond {
			t.Errorf("%v/s, burst %d, latency %v: %.1f requests/s delivered, want at least %.0f%% of the allowed rate",
				tc.perSecond, tc.burst, tc.latency, got, 100*tc.want)
		}
	}
}
