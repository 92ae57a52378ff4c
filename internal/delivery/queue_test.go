package delivery

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// While a backlog drains, some jobs of the queue are always in flight, so
// its bookkeeping of loaded jobs is never wholly settled; it must still stay
// the size of what is in memory, not grow with every job the queue loaded.
func TestQueueBookkeepingStaysBoundedWhileDraining(t *testing.T) {
	q := newQueue(jobstore.Queue{Source: "web", Destination: "hook"}, 64)
	const inflight = 64
	rnd := rand.New(rand.NewPCG(1, 2))
	var open []uint64 // loaded, not yet settled, oldest first
	seq := uint64(0)
	for range 100_000 / pageSize {
		page := make([]jobstore.Job, pageSize)
		for i := range page {
			seq++
			page[i] = jobstore.Job{Seq: seq, Event: jobEvent(seq)}
		}
		q.cursor = seq
		q.track(page)
		for _, j := range page {
			open = append(open, j.Seq)
		}
		// Jobs end in about the order they were sent, never all at once.
		for len(open) > inflight {
			i := rnd.IntN(inflight)
			q.settle(open[i])
			open = append(open[:i], open[i+1:]...)
		}
	}
	if c := cap(q.out); c > 8*(inflight+pageSize) {
		t.Errorf("bookkeeping holds room for %d jobs after draining 100,000 with %d in flight", c, inflight)
	}
	if got, want := q.oldest(), jobEvent(open[0]).ReceivedAt; !got.Equal(want) {
		t.Errorf("oldest = %v, want %v", got, want)
	}
}

func jobEvent(seq uint64) event.Event {
	return event.Event{Source: "web", MessageID: fmt.Sprint(seq), ReceivedAt: time.Unix(int64(seq), 0)}
}
