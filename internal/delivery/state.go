package delivery

import (
	"context"
	"sort"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// QueueState is a snapshot of one virtual queue's scheduling state.
type QueueState struct {
	Queue jobstore.Queue
	// Buffered is how many jobs are loaded in memory, waiting to be sent.
	Buffered int
	// Backlog says more pending jobs wait in the store beyond those loaded.
	Backlog  bool
	InFlight int
	// Limit is the adaptive concurrency limit (AIMD).
	Limit float64
	// PausedUntil is set while the queue is paused: by a wait the
	// destination asked for, a 429, or a spent quota (PauseReason).
	PausedUntil time.Time
	// PauseReason says why it is paused: "retry-after" (the destination
	// asked for a wait), "throttled" (a 429 without a wait: exponential
	// backoff), "quota" (a quota is spent until its reset, the next
	// midnight UTC unless the destination said), "holds-full" (too many
	// users held, see Held). Empty when not paused.
	PauseReason string
	// Held is how many jobs wait behind users the destination throttles
	// alone (Result.Hold), and Holds how many users.
	Held  int
	Holds int
	// RetryNext is when the next retry falls due; zero when none waits.
	RetryNext time.Time
	// Throttled counts the 429s the queue has met since it was loaded.
	Throttled int
	// Oldest is when the oldest job of the queue was received: its oldest
	// pending job, or a retry job. For retry jobs still on disk it is the
	// oldest rescheduled since the retry set was last empty, so it may be
	// older than the oldest still waiting, never younger. Zero when none.
	Oldest time.Time
}

// DestinationState is a snapshot of one destination's scheduler.
type DestinationState struct {
	Name     string
	InFlight int
	// Unwritten counts the outcomes of ended requests gathered and not
	// yet written to the store (they are written together, see
	// dest.flushDue): a crash now has their jobs sent again, as those of
	// the requests in flight.
	Unwritten   int
	Concurrency int
	CircuitOpen bool
	// ProbeAt is when an open circuit sends its next probe. It and the
	// queues' times are wall times.
	ProbeAt time.Time
	Queues  []QueueState
}

// State returns a consistent snapshot of every destination's scheduler,
// taken by the schedulers themselves between two turns. It returns early
// with what it has when ctx ends.
func (e *Engine) State(ctx context.Context) []DestinationState {
	out := make([]DestinationState, 0, len(e.dests))
	for _, d := range e.dests {
		reply := make(chan DestinationState, 1)
		select {
		case d.snap <- reply:
		case <-ctx.Done():
			return out
		}
		select {
		case s := <-reply:
			out = append(out, s)
		case <-ctx.Done():
			return out
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (d *dest) snapshot() DestinationState {
	// The scheduler's times are steady (dest.now); the snapshot gives wall
	// times, which is what its readers compare them with.
	now, wall := d.now(), d.e.opts.Clock.Now()
	toWall := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return wall.Add(t.Sub(now))
	}
	s := DestinationState{
		Name: d.Name, InFlight: d.inflight, Concurrency: d.Concurrency,
		Unwritten:   d.update.Changes(),
		CircuitOpen: d.circuit.open, ProbeAt: toWall(d.circuit.probeAt),
	}
	for _, q := range d.queues {
		qs := QueueState{
			Queue: q.id, Buffered: len(q.buf), Backlog: q.diskMore, InFlight: q.inflight,
			Limit: q.limit, RetryNext: toWall(q.retryNext), Throttled: q.throttle,
			Oldest: q.oldest(), Held: q.held, Holds: len(q.holds),
		}
		if q.pausedUntil.After(now) {
			qs.PausedUntil, qs.PauseReason = toWall(q.pausedUntil), q.pause.String()
		}
		s.Queues = append(s.Queues, qs)
	}
	sort.Slice(s.Queues, func(i, j int) bool { return s.Queues[i].Queue.Source < s.Queues[j].Queue.Source })
	return s
}
