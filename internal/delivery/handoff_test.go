package delivery_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// reads counts the pages a scheduler reads from the store, and the
// updates it writes.
type reads struct {
	jobstore.Store
	pending, applies atomic.Int64
}

func (r *reads) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	r.pending.Add(1)
	return r.Store.Pending(ctx, q, after, limit)
}

func (r *reads) Apply(ctx context.Context, u jobstore.Update) error {
	r.applies.Add(1)
	return r.Store.Apply(ctx, u)
}

// runOver runs a second engine, with target, over b's store seen through
// store, and returns the channel of its reports. b's store announces to it.
func runOver(t *testing.T, b *bundle, store jobstore.Store, target delivery.Target) chan delivery.Report {
	t.Helper()
	reports := make(chan delivery.Report, 1<<16)
	eng, err := delivery.New(delivery.Options{
		Store: store, Clock: b.clk, Seed: 1, Logger: quiet,
		Targets: []delivery.Target{target},
		Archive: archive.NewWriter(filepath.Join(b.dataDir, "archive2")),
		Observe: func(r delivery.Report) { reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	b.listen.Store(eng)
	t.Cleanup(run(eng))
	eng.State(t.Context()) // answered once the schedulers run: the store is listed
	return reports
}

// A queue that has read everything the store holds takes newly announced
// jobs without reading them back; one announced more than a page reads them
// from the store; and whichever way a job comes, it is delivered once, also
// while appends race with the scheduler's reads.
func TestAnnouncedJobsAreNotReadBack(t *testing.T) {
	b := setup(t, targetSpec{name: "hook"})
	store := &reads{Store: b.store}
	hook := &scripted{url: b.dests["hook"].url, tries: map[string]int{}}
	reports := runOver(t, b, store, delivery.Target{Name: "hook", Type: "test", Destination: decider{hook}, Limits: delivery.Limits{Concurrency: 4}})

	appendIDs := func(t *testing.T, source string, ids ...string) {
		t.Helper()
		entries := make([]jobstore.Entry, len(ids))
		for i, id := range ids {
			entries[i] = jobstore.Entry{
				Event: event.Event{Source: source, MessageID: id, Type: event.Track, ReceivedAt: b.clk.Now(),
					Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))},
				Destinations: []string{"hook"},
			}
		}
		if _, err := b.store.Append(context.Background(), entries); err != nil {
			t.Fatal(err)
		}
	}
	await := func(t *testing.T, n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for _, r := range (&bundle{reports: reports}).await(t, n) {
			if r.End != delivery.EndDelivered {
				t.Fatalf("%s ended %s", r.Job.Event.MessageID, r.End)
			}
			got[r.Job.Event.MessageID]++
		}
		return got
	}

	// One at a time: every job is announced to a caught-up queue.
	for i := range 50 {
		appendIDs(t, "web", fmt.Sprintf("one-%d", i))
		await(t, 1)
	}
	if n := store.pending.Load(); n != 0 {
		t.Errorf("%d store reads for 50 jobs announced to a caught-up queue, want 0", n)
	}

	// More than a page at once: read from the store, each job once.
	var ids []string
	for i := range 1000 {
		ids = append(ids, fmt.Sprintf("burst-%d", i))
	}
	appendIDs(t, "web", ids...)
	for id, n := range await(t, len(ids)) {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
	if store.pending.Load() == 0 {
		t.Error("a burst of 1,000 jobs was taken without reading the store")
	}

	// Appends from several goroutines race with the scheduler's reads.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				appendIDs(t, "web", fmt.Sprintf("race-%d-%d-a", w, i), fmt.Sprintf("race-%d-%d-b", w, i))
			}
		}()
	}
	wg.Wait()
	got := await(t, 800)
	for id, n := range got {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
	select {
	case r := <-reports:
		t.Errorf("%s delivered more than once", r.Job.Event.MessageID)
	default:
	}

}
