package delivery_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// fakeOwnership is a cluster share the test moves by hand: destination
// "a" is partition 0, "b" partition 1.
type fakeOwnership struct {
	mu      sync.Mutex
	owned   map[int]int64
	changes chan cluster.Change
	wakes   chan int
}

func (f *fakeOwnership) PartitionOf(q jobstore.Queue) int {
	if q.Destination == "a" {
		return 0
	}
	return 1
}

func (f *fakeOwnership) Owns(p int) (int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok, ok := f.owned[p]
	return tok, ok
}

func (f *fakeOwnership) Drained(p int, token int64) {}

func (f *fakeOwnership) Changes() <-chan cluster.Change { return f.changes }
func (f *fakeOwnership) Wakeups() <-chan int            { return f.wakes }

func (f *fakeOwnership) set(p int, owned bool) {
	f.mu.Lock()
	if owned {
		f.owned[p]++
	} else {
		delete(f.owned, p)
	}
	tok := f.owned[p]
	f.mu.Unlock()
	f.changes <- cluster.Change{Partition: p, Token: tok, Owned: owned}
}

// With Ownership, the engine delivers the queues of the partitions it owns
// only: a gained partition's queues are read from the store, jobs appended
// elsewhere are delivered on a wake-up, and a lost partition's are left
// alone until it is gained again.
func TestOwnership(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(start)
	store := openStore(t, dir, clk)
	defer store.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	var targets []delivery.Target
	for _, name := range []string{"a", "b"} {
		s := &scripted{url: srv.URL, tries: map[string]int{}}
		targets = append(targets, delivery.Target{Name: name, Type: "test", Destination: decider{s},
			Client: srv.Client(), Sources: []string{"web"}})
	}
	own := &fakeOwnership{owned: map[int]int64{}, changes: make(chan cluster.Change, 16), wakes: make(chan int, 16)}
	reports := make(chan delivery.Report, 1024)
	eng, err := delivery.New(delivery.Options{
		Store: store, Targets: targets, Clock: clk, Seed: 1, Ownership: own,
		Archive: archive.NewWriter(filepath.Join(dir, "archive")), Logger: quiet,
		Observe: func(r delivery.Report) { reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	send := func(k int, dests ...string) {
		t.Helper()
		var es []jobstore.Entry
		for range k {
			n++
			id := fmt.Sprintf("e%d", n)
			es = append(es, jobstore.Entry{Destinations: dests, Event: event.Event{Source: "web", MessageID: id,
				Type: event.Track, ReceivedAt: clk.Now(), Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))}})
		}
		if _, err := store.Append(context.Background(), es); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, want map[string]int) {
		t.Helper()
		got := map[string]int{}
		total := 0
		for _, w := range want {
			total += w
		}
		deadline := time.After(10 * time.Second)
		for i := 0; i < total; i++ {
			select {
			case r := <-reports:
				got[r.Queue.Destination]++
			case <-deadline:
				t.Fatalf("%s: delivered %v, want %v", what, got, want)
			}
		}
		select {
		case r := <-reports:
			t.Fatalf("%s: more delivered than %v: %s/%s", what, want, r.Queue.Destination, r.Job.Event.MessageID)
		case <-time.After(200 * time.Millisecond):
		}
		for d, w := range want {
			if got[d] != w {
				t.Fatalf("%s: delivered %v, want %v", what, got, want)
			}
		}
	}

	send(3, "a", "b") // before the start, owned by nobody
	defer run(eng)()
	expect("nothing owned", map[string]int{})

	own.set(0, true)
	expect("partition 0 gained", map[string]int{"a": 3})

	// Appended by another node: heard of by a wake-up only (this store
	// announces nothing to the engine).
	send(2, "a", "b")
	expect("before the wake-up", map[string]int{})
	own.wakes <- 0
	expect("partition 0 woken", map[string]int{"a": 2})

	own.set(0, false)
	send(2, "a")
	own.wakes <- 0
	expect("partition 0 lost", map[string]int{})

	own.set(1, true)
	expect("partition 1 gained", map[string]int{"b": 5})
	own.set(0, true)
	expect("partition 0 gained again", map[string]int{"a": 2})
}

// heldRead is a store whose Pending reads its gate holds up: a database
// that stops answering in the middle of a read.
type heldRead struct {
	jobstore.Store
	*gate
}

func (s *heldRead) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	if err := s.pass(ctx); err != nil {
		return nil, err
	}
	return s.Store.Pending(ctx, q, after, limit)
}

// A read of the store that ends after the lease's local deadline (Owns
// turned false while it waited, before the Change saying so) sends nothing
// of what it read; and if the lease turns out renewed after all, the jobs
// read are sent then, none lost.
func TestNoDispatchAfterLeaseEndsDuringRead(t *testing.T) {
	own := &fakeOwnership{owned: map[int]int64{}, changes: make(chan cluster.Change, 16), wakes: make(chan int, 16)}
	held := &heldRead{gate: newGate()}
	held.armed.Store(true)
	reports := runOwnedA(t, own, func(s jobstore.Store) jobstore.Store { held.Store = s; return held })

	own.set(0, true)
	select {
	case <-held.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the gained queue was not read")
	}
	// The local deadline passes while the read waits: Owns is false, and
	// the Change is not sent yet.
	own.mu.Lock()
	delete(own.owned, 0)
	own.mu.Unlock()
	close(held.release)
	select {
	case r := <-reports:
		t.Fatalf("sent %s after the lease's local deadline", r.Job.Event.MessageID)
	case <-time.After(300 * time.Millisecond):
	}

	// The renewal was only late: the lease is the node's again, same
	// token, and no Change comes. A wake-up sends what was read.
	own.mu.Lock()
	own.owned[0] = 1
	own.mu.Unlock()
	own.wakes <- 0
	got := map[string]bool{}
	for len(got) < 3 {
		select {
		case r := <-reports:
			got[r.Job.Event.MessageID] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("after the late renewal delivered %v, want e0, e1 and e2", got)
		}
	}
}

// runOwnedA runs an engine that delivers destination "a" (partition 0 of
// fakeOwnership) of source "web" under own, over the store that wrap makes
// of a fresh one, where three events of "a" (e0 to e2) are stored before
// the engine starts. It returns the engine's reports; the engine stops at
// the end of the test.
func runOwnedA(t *testing.T, own delivery.Ownership, wrap func(jobstore.Store) jobstore.Store) <-chan delivery.Report {
	t.Helper()
	dir := t.TempDir()
	clk := clock.NewFake(start)
	store := openStore(t, dir, clk)
	t.Cleanup(func() { store.Close() })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	s := &scripted{url: srv.URL, tries: map[string]int{}}
	targets := []delivery.Target{{Name: "a", Type: "test", Destination: decider{s}, Client: srv.Client(), Sources: []string{"web"}}}
	reports := make(chan delivery.Report, 16)
	eng, err := delivery.New(delivery.Options{Store: wrap(store), Targets: targets, Clock: clk, Seed: 1, Ownership: own,
		Archive: archive.NewWriter(filepath.Join(dir, "archive")), Logger: quiet,
		Observe: func(r delivery.Report) { reports <- r }})
	if err != nil {
		t.Fatal(err)
	}
	var es []jobstore.Entry
	for i := range 3 {
		id := fmt.Sprintf("e%d", i)
		es = append(es, jobstore.Entry{Destinations: []string{"a"}, Event: event.Event{Source: "web", MessageID: id,
			Type: event.Track, ReceivedAt: clk.Now(), Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))}})
	}
	if _, err := store.Append(context.Background(), es); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(run(eng))
	return reports
}
