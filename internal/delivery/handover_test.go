package delivery_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/postgres"
	"github.com/fanout/fanout/internal/pgtest"
)

// A node joining a cluster whose only node has requests in flight to a slow
// destination: the partitions handed over are drained under their leases
// before the newcomer takes them, so every job reaches its destination
// exactly once. Releasing at once, as before, had the outcomes in flight
// refused by the fencing and their jobs sent again by the newcomer.
func TestHandoverSendsNothingTwice(t *testing.T) {
	dsn := pgtest.Start(t)
	var inflight atomic.Int32
	var mu sync.Mutex
	got := map[string]int{} // "destination source/messageId" -> requests
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		defer inflight.Add(-1)
		time.Sleep(150 * time.Millisecond) // slow: requests are in flight at the join
		mu.Lock()
		for _, id := range r.Header.Values("X-Event") {
			got[r.URL.Query().Get("d")+" "+id]++
		}
		mu.Unlock()
	}))
	defer srv.Close()
	const nDests, nEvents = 8, 30
	var dests []string
	for i := range nDests {
		dests = append(dests, fmt.Sprintf("d%d", i))
	}

	// start runs one node as its own process would: its pools, store and engine.
	start := func(name string) *postgres.Store {
		t.Helper()
		node, err := cluster.Join(t.Context(), cluster.Options{Pool: pgtest.Pool(t, dsn), NodeName: name,
			Partitions: 8, Heartbeat: 100 * time.Millisecond, Lease: 2 * time.Second, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		store, err := postgres.Open(t.Context(), dsn, postgres.Options{Cluster: node, CleanupInterval: -1, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		var targets []delivery.Target
		for _, d := range dests {
			s := &scripted{url: srv.URL + "?d=" + d, tries: map[string]int{}}
			targets = append(targets, delivery.Target{Name: d, Type: "test", Destination: decider{s},
				Client: srv.Client(), Sources: []string{"web"}})
		}
		eng, err := delivery.New(delivery.Options{Store: store, Targets: targets, Clock: clock.Real{},
			Ownership: node, Archive: archive.NewWriter(filepath.Join(t.TempDir(), "archive")), Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); eng.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			<-done
			node.Leave(context.Background())
			for range node.Changes() {
			}
			store.Close()
		})
		return store
	}

	store := start("a")
	var es []jobstore.Entry
	for i := range nEvents {
		id := fmt.Sprintf("e%d", i)
		es = append(es, jobstore.Entry{Destinations: dests, Event: event.Event{Source: "web", MessageID: id,
			Type: event.Track, ReceivedAt: time.Now(), Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))}})
	}
	if _, err := store.Append(t.Context(), es); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for inflight.Load() < nDests/2 {
		if time.Now().After(deadline) {
			t.Fatal("no requests in flight on node a")
		}
		time.Sleep(2 * time.Millisecond)
	}
	start("b") // takes half the partitions while a has requests in flight on them

	total := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	for total() < nDests*nEvents {
		if time.Now().After(deadline) {
			t.Fatalf("delivered %d of %d jobs", total(), nDests*nEvents)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate would come now
	mu.Lock()
	defer mu.Unlock()
	for k, n := range got {
		if n != 1 {
			t.Errorf("%s sent %d times, want once", k, n)
		}
	}
}
