package delivery

import (
	"context"
	"slices"
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
	// At is when the snapshot was taken.
	At time.Time
	// StoreWaitSince, when set, is when the scheduler began the job store
	// call it is still waiting in: an outcome write or a read, which a
	// database that stops answering holds for up to storeTimeout. The
	// snapshot is its state as it is, but nothing moves meanwhile: no
	// request starts and no outcome is taken in (InFlight counts the
	// requests that ended since) until the store answers.
	StoreWaitSince time.Time
	// Stale says the scheduler did not let State look before the caller's
	// context ended (a long turn outside the store, or it has not started
	// or has stopped): the snapshot is the last one taken, at At, or, if
	// none was, only Name and Concurrency.
	Stale bool
}

// State returns a snapshot of every destination's scheduler, each taken
// while its scheduler rests: between two turns, or while a turn waits on
// the job store. It never leaves a destination out: one whose scheduler
// does not rest before ctx ends is given as its last snapshot, marked
// Stale.
//
// Why a scheduler lets its state be read while it waits on the store,
// rather than answering from its loop: the loop answered only between two
// turns, so a turn held by a database that stopped answering (up to
// storeTimeout, and again at each retry) held every /metrics scrape and
// admin view to its deadline, and those gave up on the destination. A
// scheduler waiting on the store changes none of its state, so that state
// read then is exact, not stale; what is true and worth saying is that it
// is waiting, and since when (StoreWaitSince). A copy published at every
// turn was the other way, but it allocates every queue's state per turn,
// on the hot path, for a reader that comes every few seconds. Here a turn
// costs a send and a receive on an uncontended channel (dest.turn), and a
// store call a clock read besides.
func (e *Engine) State(ctx context.Context) []DestinationState {
	out := make([]DestinationState, 0, len(e.dests))
	for _, d := range e.dests {
		out = append(out, d.state(ctx))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// state takes d's snapshot while its scheduler rests, or gives the last one
// marked Stale if it does not before ctx ends. Once ctx has ended, it
// still looks at a scheduler that rests now.
func (d *dest) state(ctx context.Context) DestinationState {
	select {
	case d.turn <- struct{}{}:
	default:
		select {
		case d.turn <- struct{}{}:
		case <-ctx.Done():
			s := DestinationState{Name: d.Name, Concurrency: d.Concurrency}
			if last := d.last.Load(); last != nil {
				s = *last
				s.Queues = slices.Clone(s.Queues) // the caller may change its copy
			}
			s.Stale = true
			return s
		}
	}
	s := d.snapshot()
	<-d.turn
	d.last.Store(&s)
	return s
}

// beginTurn takes the turn token back when the scheduler wakes.
func (d *dest) beginTurn() { d.turn <- struct{}{} }

// endTurn lets go of the turn token while the scheduler rests.
func (d *dest) endTurn() { <-d.turn }

// awaitStore lets State read the scheduler's state while it waits on the
// job store, and says since when; storeAnswered ends that.
func (d *dest) awaitStore() {
	d.storeWaitSince = d.e.opts.Clock.Now()
	d.endTurn()
}

func (d *dest) storeAnswered() {
	d.beginTurn()
	d.storeWaitSince = time.Time{}
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
		At: wall, StoreWaitSince: d.storeWaitSince,
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
