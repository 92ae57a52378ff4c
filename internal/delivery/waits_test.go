package delivery_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
)

// statusDest sends each event in a request of its own to url and reads the
// answer as an integration does by default (destinations.ClassifyStatus),
// Retry-After header included.
type statusDest struct{ url string }

func (s statusDest) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var p destinations.Plan
	for i := range events {
		p.Requests = append(p.Requests, &destinations.Request{Method: "POST", URL: s.url, Body: []byte("{}"), Events: []int{i}})
	}
	return p, nil
}

func (statusDest) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	return destinations.Fill(len(req.Events), destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

// answering is an httptest destination that answers each request with
// what answer says, and records the (fake) time of each.
type answering struct {
	clk *clock.Fake
	mu  sync.Mutex
	at  []time.Time
}

func (a *answering) serve(t *testing.T, answer func(n int, w http.ResponseWriter)) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.at = append(a.at, a.clk.Now())
		n := len(a.at)
		a.mu.Unlock()
		answer(n, w)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (a *answering) times() []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.at...)
}

// A destination that answers 503 with Retry-After: 5 is not asked again
// sooner: the queue pauses for the wait, whatever the status.
func TestRetryAfterOn503PausesTheQueue(t *testing.T) {
	clk := clock.NewFake(start)
	a := &answering{clk: clk}
	url := a.serve(t, func(n int, w http.ResponseWriter) {
		if n <= 3 {
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	b := setupIn(t, t.TempDir(), clk, targetSpec{name: "hook", dest: statusDest{url}})
	b.send(t, "web", 1, "hook")
	rs := b.await(t, 1)
	for attempt := 2; attempt <= 4; attempt++ {
		if rs[0].End != delivery.EndRetrying {
			t.Fatalf("attempt %d: %v, want retrying", attempt-1, rs[0].End)
		}
		_, q := b.state(t, "hook", "web")
		last := a.times()[attempt-2]
		if want := last.Add(5 * time.Second); !q.PausedUntil.Equal(want) || q.PauseReason != "retry-after" {
			t.Fatalf("after a 503 with Retry-After: 5, paused until %v (%s), want %v (retry-after)", q.PausedUntil, q.PauseReason, want)
		}
		// A second at a time: nothing goes out before the wait is over.
		for range 4 {
			b.clk.Advance(time.Second)
			b.state(t, "hook", "web")
			if n := len(a.times()); n != attempt-1 {
				t.Fatalf("attempt %d came %v after the 503 asked for 5s", attempt, b.clk.Now().Sub(last))
			}
		}
		b.clk.Advance(time.Second)
		rs = b.await(t, 1)
		if gap := a.times()[attempt-1].Sub(last); gap < 5*time.Second {
			t.Fatalf("attempt %d came %v after the last, want 5s or more", attempt, gap)
		}
	}
	if rs[0].End != delivery.EndDelivered || rs[0].Job.Attempts != 4 {
		t.Fatalf("last attempt: %v after %d attempts, want delivered after 4", rs[0].End, rs[0].Job.Attempts)
	}
}

// A destination that answers 429 without Retry-After four times is asked
// again after longer and longer waits: the queue backs off exponentially.
func TestBare429sBackOffExponentially(t *testing.T) {
	clk := clock.NewFake(start)
	a := &answering{clk: clk}
	url := a.serve(t, func(n int, w http.ResponseWriter) {
		if n <= 4 {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	b := setupIn(t, t.TempDir(), clk, targetSpec{name: "hook", dest: statusDest{url}})
	b.send(t, "web", 1, "hook")
	b.await(t, 1)
	for range 4 {
		_, q := b.state(t, "hook", "web")
		if q.PauseReason != "throttled" {
			t.Fatalf("paused until %v for %q after a bare 429, want throttled", q.PausedUntil, q.PauseReason)
		}
		b.clk.Advance(q.PausedUntil.Sub(b.clk.Now()))
		b.await(t, 1)
	}
	at := a.times()
	if len(at) != 5 {
		t.Fatalf("%d requests, want 5", len(at))
	}
	for i := 1; i < len(at); i++ {
		gap := at[i].Sub(at[i-1])
		d := delivery.ThrottleBackoffBase << (i - 1)
		if gap < d/2 || gap >= d {
			t.Errorf("gap %d: %v, want in [%v, %v)", i, gap, d/2, d)
		}
		if i > 1 && gap <= at[i-1].Sub(at[i-2]) {
			t.Errorf("gap %d: %v, not longer than the one before, %v", i, gap, at[i-1].Sub(at[i-2]))
		}
	}
	// The delivery ended the streak: the next 429 starts over.
	_, q := b.state(t, "hook", "web")
	if !q.PausedUntil.IsZero() {
		t.Fatalf("still paused until %v after a delivery", q.PausedUntil)
	}
}

// A spent daily quota pauses the queue until midnight UTC, burns no
// attempt, and the queue's state says so.
func TestQuotaPausesUntilMidnight(t *testing.T) {
	midnight := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	var b *bundle
	b = setup(t, targetSpec{name: "hook", concurrency: 1, window: 48 * time.Hour, decide: func(ev event.Event, attempt int) destinations.Result {
		if b.clk.Now().Before(midnight) {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, Quota: true, Reason: "daily quota exceeded"}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}})
	b.send(t, "web", 3, "hook")
	rs := b.await(t, 1)
	if rs[0].End != delivery.EndRetrying || rs[0].Job.Attempts != 0 || !rs[0].Unattempted {
		t.Fatalf("quota answer: %v after %d attempts (unattempted %v), want retrying, no attempt counted", rs[0].End, rs[0].Job.Attempts, rs[0].Unattempted)
	}
	_, q := b.state(t, "hook", "web")
	if !q.PausedUntil.Equal(midnight) || q.PauseReason != "quota" || q.Limit != 1 {
		t.Fatalf("paused until %v (%s), limit %v; want %v (quota), limit untouched", q.PausedUntil, q.PauseReason, q.Limit, midnight)
	}
	b.clk.Advance(midnight.Sub(b.clk.Now()) - time.Second)
	b.state(t, "hook", "web")
	if n := len(b.dests["hook"].sent); n != 1 {
		t.Fatalf("%d requests before midnight, want 1", n)
	}
	b.clk.Advance(time.Second)
	rs = b.await(t, 3)
	for _, r := range rs {
		if r.End != delivery.EndDelivered || r.Job.Attempts != 1 {
			t.Fatalf("%s: %v after %d attempts, want delivered on the first counted attempt", r.Job.Event.MessageID, r.End, r.Job.Attempts)
		}
	}
}

// splitter refuses, as a whole and without naming it, any batch that
// carries the bad event (a 413).
type splitter struct {
	*scripted
	bad string
}

func (s splitter) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	return decider{s.scripted}.Transform(ctx, events)
}

func (s splitter) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	ids := req.Header.Values("X-Event")
	for _, id := range ids {
		if id == s.bad {
			return destinations.Fill(len(ids), destinations.Result{Outcome: destinations.Rejected, StatusCode: 413, Split: true,
				Reason: "HTTP 413 Request Entity Too Large"})
		}
	}
	return destinations.Fill(len(ids), destinations.Result{Outcome: destinations.Delivered, StatusCode: 200})
}

// A batch the destination refuses as a whole is bisected until the bad
// event is alone, which is rejected with the reason; the good halves are
// sent again at once and delivered.
func TestSplitBisectsToTheBadEvent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)
	s := &scripted{url: srv.URL, tries: map[string]int{}}
	b := setup(t, targetSpec{name: "hook", batch: 8, concurrency: 1, dest: splitter{s, "web/web-5"}})
	b.send(t, "web", 8, "hook")
	rs := b.await(t, 22) // 8+4+4+2+1+1+2, a report per job per attempt
	var delivered, failed int
	for _, r := range rs {
		switch r.End {
		case delivery.EndDelivered:
			delivered++
		case delivery.EndFailed:
			failed++
			if r.Job.Event.MessageID != "web-5" || r.Result.Outcome != destinations.Rejected ||
				r.Result.Reason != "the destination refused this event even when sent alone: HTTP 413 Request Entity Too Large" {
				t.Fatalf("failed %s: %v %q", r.Job.Event.MessageID, r.Result.Outcome, r.Result.Reason)
			}
		}
	}
	if delivered != 7 || failed != 1 {
		t.Fatalf("%d delivered, %d failed; want 7 and web-5", delivered, failed)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var sizes []int
	for _, batch := range s.batches {
		sizes = append(sizes, len(batch))
	}
	if fmt.Sprint(sizes) != "[8 4 4 2 1 1 2]" {
		t.Fatalf("batches of %v, want [8 4 4 2 1 1 2]: halves until web-5 is alone", sizes)
	}
	if _, q := b.state(t, "hook", "web"); !q.PausedUntil.IsZero() || len(s.batches) != 7 {
		t.Fatalf("paused until %v after splits, want not paused", q.PausedUntil)
	}
}

// One user throttled by the destination among a thousand: only that
// user's events wait, behind the held one and in order, while every other
// user's are delivered; the queue holds in memory only the held user's.
// The user is still throttled when its hold first ends: its first event
// is held again, and the later ones stay behind it.
func TestHoldWaitsOnlyTheThrottledUser(t *testing.T) {
	for _, tc := range []struct{ batch, concurrency int }{{100, 1}, {100, 4}, {1, 1}} {
		t.Run(fmt.Sprintf("batch %d, concurrency %d", tc.batch, tc.concurrency), func(t *testing.T) {
			user := func(ev event.Event) string {
				var n int
				fmt.Sscanf(ev.MessageID, "web-%d", &n)
				return fmt.Sprintf("u%d", n%1000)
			}
			var b *bundle
			b = setup(t, targetSpec{name: "hook", batch: tc.batch, concurrency: tc.concurrency, holdKey: user,
				decide: func(ev event.Event, attempt int) destinations.Result {
					if user(ev) == "u7" && b.clk.Now().Before(start.Add(20*time.Second)) {
						return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, Hold: "u7", RetryAfter: 10 * time.Second,
							Reason: "HTTP 429: user u7 is throttled"}
					}
					return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
				}})
			b.send(t, "web", 3000, "hook")
			delivered := func(n int) []string {
				var ids []string
				for len(ids) < n {
					if r := b.await(t, 1)[0]; r.End == delivery.EndDelivered {
						ids = append(ids, r.Job.Event.MessageID)
					}
				}
				return ids
			}
			for _, id := range delivered(2997) { // every other user's, without a wait
				if user(event.Event{MessageID: id}) == "u7" {
					t.Fatalf("%s delivered while u7 is throttled", id)
				}
			}
			_, q := b.state(t, "hook", "web")
			if q.Held != 3 || q.Holds != 1 || !q.PausedUntil.IsZero() {
				t.Fatalf("held %d jobs of %d users, paused until %v; want u7's 3 held, the queue not paused", q.Held, q.Holds, q.PausedUntil)
			}
			b.clk.Advance(10 * time.Second) // web-7 is held again
			b.clk.Advance(10 * time.Second)
			if got := fmt.Sprint(delivered(3)); got != "[web-7 web-1007 web-2007]" {
				t.Fatalf("u7's events delivered in the order %v, want web-7, web-1007, web-2007", got)
			}
			if _, q := b.state(t, "hook", "web"); q.Held != 0 || q.Holds != 0 {
				t.Fatalf("%d jobs of %d users still held", q.Held, q.Holds)
			}
		})
	}
}

// With more users throttled than a queue keeps holds for, the queue stops
// holding (its memory stays bounded) and pauses instead; nothing is lost.
func TestHoldsFullPauseTheQueue(t *testing.T) {
	defer delivery.SetHoldLimits(10, 100)()
	user := func(ev event.Event) string { return ev.MessageID }
	var b *bundle
	b = setup(t, targetSpec{name: "hook", batch: 50, concurrency: 1, holdKey: user,
		decide: func(ev event.Event, attempt int) destinations.Result {
			if b.clk.Now().Before(start.Add(10 * time.Second)) {
				return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, Hold: ev.MessageID, RetryAfter: 10 * time.Second}
			}
			return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
		}})
	b.send(t, "web", 50, "hook")
	b.await(t, 50)
	_, q := b.state(t, "hook", "web")
	if q.Holds != 10 || q.Held != 10 || q.PauseReason != "holds-full" || !q.PausedUntil.Equal(start.Add(10*time.Second)) {
		t.Fatalf("%d users, %d jobs held, paused until %v (%s); want 10, 10, the queue paused 10s (holds-full)", q.Holds, q.Held, q.PausedUntil, q.PauseReason)
	}
	b.clk.Advance(10 * time.Second)
	rs := b.await(t, 50)
	if n := count(rs, "web", delivery.EndDelivered); n != 50 {
		t.Fatalf("%d of 50 delivered after the holds ended", n)
	}
}

// A timeout or 5xx on a batch of an API that does not deduplicate is
// retried and reported as a risk of duplicates; where the API
// deduplicates, it is not.
func TestDuplicateRiskOnAmbiguousBatchFailures(t *testing.T) {
	for _, dedup := range []bool{false, true} {
		t.Run(fmt.Sprint("deduplicates=", dedup), func(t *testing.T) {
			b := setup(t, targetSpec{name: "hook", batch: 5, dedup: dedup, decide: func(ev event.Event, attempt int) destinations.Result {
				return destinations.Result{Outcome: destinations.Retryable, StatusCode: 502, Reason: "HTTP 502"}
			}})
			b.send(t, "web", 5, "hook")
			for _, r := range b.await(t, 5) {
				if r.End != delivery.EndRetrying || r.DuplicateRisk == dedup {
					t.Fatalf("%s: %v, duplicate risk %v; want retrying, risk %v", r.Job.Event.MessageID, r.End, r.DuplicateRisk, !dedup)
				}
			}
		})
	}
}

// The requests in flight when the destination first pushes back answer
// for the concurrency they were sent under: a burst of 429s halves the
// queue's limit once, not once per 429.
func TestBurstOf429sHalvesTheLimitOnce(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", concurrency: 16, decide: func(ev event.Event, attempt int) destinations.Result {
		if attempt == 1 {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, RetryAfter: time.Second, Reason: "HTTP 429"}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}})
	b.send(t, "web", 16, "hook")
	b.await(t, 16)
	_, q := b.state(t, "hook", "web")
	if q.Limit != 8 {
		t.Fatalf("limit %v after a burst of 16 429s sent together, want 16/2 = 8", q.Limit)
	}
	b.clk.Advance(time.Second)
	b.await(t, 16)
}
