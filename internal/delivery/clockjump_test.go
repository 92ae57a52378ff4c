package delivery_test

import (
	"context"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// The wall clock set forwards or backwards by an hour while jobs wait
// (for a retry, a pause, an open circuit's probe) neither loses them,
// nor archives them early, nor stalls the retry set: the engine measures
// intervals and due times on the steady clock (dest.now).
func TestWallClockJumps(t *testing.T) {
	fail := destinations.Result{Outcome: destinations.Retryable, StatusCode: 500, Reason: "HTTP 500"}
	wait := destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, RetryAfter: 5 * time.Second, Reason: "HTTP 503"}
	ok := destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	for _, tc := range []struct {
		name string
		jump time.Duration
		// first is the first attempt's answer; the second delivers.
		first destinations.Result
		// after is how long after the first attempt the second comes.
		after time.Duration
	}{
		{"retry set, wall set back", -time.Hour, fail, delivery.BackoffBase},
		{"retry set, wall set forward", time.Hour, fail, delivery.BackoffBase},
		{"pause, wall set back", -time.Hour, wait, 5 * time.Second},
		{"pause, wall set forward", time.Hour, wait, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A retry window shorter than the jump: set forward, the wall
			// clock alone would archive the job at its second attempt.
			b := setup(t, targetSpec{name: "hook", window: 30 * time.Minute, decide: func(ev event.Event, attempt int) destinations.Result {
				if attempt == 1 {
					return tc.first
				}
				return ok
			}})
			b.send(t, "web", 3, "hook")
			for _, r := range b.await(t, 3) {
				if r.End != delivery.EndRetrying {
					t.Fatalf("first attempt: %v", r.End)
				}
			}
			b.clk.Jump(tc.jump)
			// Before the wait is over nothing goes out, however the wall
			// clock moved.
			b.clk.Advance(tc.after/2 - time.Millisecond)
			b.state(t, "hook", "web")
			if n := len(b.dests["hook"].sent); n != 3 {
				t.Fatalf("%d requests before the wait was over, want 3", n)
			}
			b.clk.Advance(tc.after / 2)
			b.clk.Advance(time.Millisecond)
			for _, r := range b.await(t, 3) {
				if r.End != delivery.EndDelivered || r.Job.Attempts != 2 {
					t.Fatalf("%s: %v after %d attempts, want delivered on the second, %v after the first",
						r.Job.Event.MessageID, r.End, r.Job.Attempts, tc.after)
				}
			}
			eventually(t, "an empty store", func() bool {
				qs, err := b.store.Queues(context.Background())
				return err == nil && len(qs) == 0
			})
		})
	}
}

// A job's retry window ends by both clocks: set forward an hour, the wall
// clock does not archive a job early; set back, a job received after the
// jump still ends its window by the wall clock.
func TestRetryWindowAcrossWallClockJumps(t *testing.T) {
	fail := func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 409, Reason: "HTTP 409"}
	}
	t.Run("forward", func(t *testing.T) {
		b := setup(t, targetSpec{name: "hook", window: 30 * time.Minute, decide: fail})
		b.send(t, "web", 1, "hook")
		b.await(t, 1)
		b.clk.Jump(time.Hour) // the wall clock says the window ended half an hour ago
		b.clk.Advance(delivery.BackoffBase)
		if r := b.await(t, 1)[0]; r.End != delivery.EndRetrying {
			t.Fatalf("second attempt 2s after receipt, wall clock an hour ahead: %v, want retrying", r.End)
		}
		// By the steady clock too, the window ends: archived.
		for range 12 {
			b.clk.Advance(5 * time.Minute)
		}
		var last delivery.Report
		for last.End != delivery.EndArchived {
			last = b.await(t, 1)[0]
		}
		if age := b.clk.Steady().Sub(start); age < 30*time.Minute {
			t.Fatalf("archived %v after receipt, want at least the 30m window", age)
		}
	})
	t.Run("back", func(t *testing.T) {
		b := setup(t, targetSpec{name: "hook", window: 30 * time.Minute, decide: fail})
		b.clk.Jump(-time.Hour)
		// Received after the jump: its receipt is an hour behind the
		// steady clock, which alone would archive it at once.
		e := jobstore.Entry{Event: event.Event{Source: "web", MessageID: "web-0", Type: event.Track, ReceivedAt: b.clk.Now(),
			Payload: []byte(`{}`)}, Destinations: []string{"hook"}}
		if _, err := b.store.Append(context.Background(), []jobstore.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if r := b.await(t, 1)[0]; r.End != delivery.EndRetrying {
			t.Fatalf("first attempt of a job received after the wall clock was set back: %v, want retrying", r.End)
		}
	})
}
