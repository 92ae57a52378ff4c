package delivery_test

import (
	"context"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/jobstore"
)

// pendingIDs lists the messageIds of q's pending jobs in the store.
func pendingIDs(t *testing.T, store jobstore.Store, q jobstore.Queue) []string {
	t.Helper()
	jobs, err := store.Pending(context.Background(), q, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.Event.MessageID)
	}
	return ids
}

// eventually polls until cond holds: the scheduler writes outcomes after it
// reports them.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A drain writes its outcomes to the store many at a time, not after each
// wake-up of the scheduler, and leaves the store empty.
func TestOutcomesAreWrittenTogether(t *testing.T) {
	b := setup(t, targetSpec{name: "hook"})
	store := &reads{Store: b.store}
	hook := &scripted{url: b.dests["hook"].url, tries: map[string]int{}}
	reports := runOver(t, b, store, delivery.Target{Name: "hook", Type: "test", Destination: decider{hook}})
	b.send(t, "web", 2000, "hook")
	(&bundle{reports: reports}).await(t, 2000)
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	eventually(t, "an empty queue", func() bool { return len(pendingIDs(t, b.store, q)) == 0 })
	if n := store.applies.Load(); n > 2000/32 {
		t.Errorf("%d store updates for 2,000 outcomes, want at most %d", n, 2000/32)
	}
}

// An outcome waits for others to join it only so long: while another
// request hangs, the delivered job is removed once the age limit passes,
// and the last one as soon as nothing is in flight.
func TestOutcomeIsWrittenWhileOthersAreInFlight(t *testing.T) {
	gate := make(chan struct{})
	b := setup(t, targetSpec{name: "hook", concurrency: 2, gate: gate})
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	b.send(t, "web", 2, "hook")
	gate <- struct{}{} // one request goes; the other waits in Transform
	first := b.await(t, 1)[0].Job.Event.MessageID
	if got := pendingIDs(t, b.store, q); len(got) != 2 {
		t.Fatalf("pending %v right after the first outcome, want both until it is written", got)
	}
	// The snapshot (and fanout_unwritten_outcomes) shows the outcome
	// waiting, apart from the request still in flight.
	if d, _ := b.state(t, "hook", "web"); d.InFlight != 1 || d.Unwritten != 1 {
		t.Fatalf("snapshot with one request in flight and one outcome unwritten: InFlight %d, Unwritten %d", d.InFlight, d.Unwritten)
	}
	b.clk.Advance(time.Second) // beyond any age limit
	eventually(t, "the first outcome written", func() bool {
		got := pendingIDs(t, b.store, q)
		return len(got) == 1 && got[0] != first
	})
	gate <- struct{}{}
	b.await(t, 1)
	eventually(t, "the second outcome written", func() bool { return len(pendingIDs(t, b.store, q)) == 0 })
}
