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
	// PausedUntil is set while a 429 pauses the queue.
	PausedUntil time.Time
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
	Name        string
	InFlight    int
	Concurrency int
	CircuitOpen bool
	// ProbeAt is when an open circuit sends its next probe.
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
	s := DestinationState{
		Name: d.Name, InFlight: d.inflight, Concurrency: d.Concurrency,
		CircuitOpen: d.circuit.open, ProbeAt: d.circuit.probeAt,
	}
	for _, q := range d.queues {
		s.Queues = append(s.Queues, QueueState{
			Queue: q.id, Buffered: len(q.buf), Backlog: q.diskMore, InFlight: q.inflight,
			Limit: q.limit, PausedUntil: q.pausedUntil, RetryNext: q.retryNext, Throttled: q.throttle,
			Oldest: q.oldest(),
		})
	}
	sort.Slice(s.Queues, func(i, j int) bool { return s.Queues[i].Queue.Source < s.Queues[j].Queue.Source })
	return s
}
