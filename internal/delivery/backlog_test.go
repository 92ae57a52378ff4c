package delivery_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// A large backlog behind a down destination waits on disk, not in memory,
// and does not hold up another destination.
func TestBacklogStaysOnDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("appends 200,000 jobs")
	}
	const backlog = 200_000
	down := func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503"}
	}
	b := setup(t, targetSpec{name: "down", decide: down}, targetSpec{name: "up"})

	heapBefore := heapInUse()
	// 2 KB events: 400 MB if the backlog were held in memory, far above
	// what the store itself keeps on the heap (memtables, caches, batches).
	pad := []byte(strings.Repeat("x", 2000) + `"}`)
	for i := 0; i < backlog; i += 5000 {
		entries := make([]jobstore.Entry, 5000)
		for j := range entries {
			id := fmt.Sprintf("d-%d", i+j)
			entries[j] = jobstore.Entry{
				Event: event.Event{Source: "web", MessageID: id, Type: event.Track, ReceivedAt: b.clk.Now(),
					Payload: append(append(append([]byte(`{"messageId":"`), id...), `","pad":"`...), pad...)},
				Destinations: []string{"down"},
			}
		}
		if _, err := b.store.Append(context.Background(), entries); err != nil {
			t.Fatal(err)
		}
	}
	// The down destination's circuit opens after a few failures; the backlog
	// stays in the store while the other destination keeps delivering.
	for round := range 5 {
		b.send(t, fmt.Sprintf("app%d", round), 100, "up")
		rs := b.awaitFrom(t, "up", 100)
		for _, r := range rs {
			if r.End != delivery.EndDelivered {
				t.Fatalf("up: %v", r.End)
			}
		}
	}
	d, q := b.state(t, "down", "web")
	if !d.CircuitOpen {
		t.Fatal("the down destination's circuit is not open")
	}
	if q.Buffered > 2*64 {
		t.Fatalf("%d jobs of the backlog are in memory, want at most a page or two", q.Buffered)
	}
	grown := int64(heapInUse()) - int64(heapBefore)
	// 200,000 jobs of ~2 KB would be ~400 MB in memory; the bound leaves
	// room for the store's memtables and caches, not for the backlog. Race
	// builds of Pebble allocate its memtables on the Go heap (four of 32 MB
	// at most), so the bound grows by as much there.
	bound := int64(100 << 20)
	if raceEnabled {
		bound += 4 * 32 << 20
	}
	t.Logf("heap grew by %.1f MB with %d jobs waiting", float64(grown)/(1<<20), backlog)
	if grown > bound {
		t.Fatalf("heap grew by %d bytes with a backlog of %d jobs, want under %d", grown, backlog, bound)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// awaitFrom collects n reports of one destination, skipping the others'.
func (b *bundle) awaitFrom(t *testing.T, dest string, n int) []delivery.Report {
	t.Helper()
	var out []delivery.Report
	for len(out) < n {
		for _, r := range b.await(t, 1) {
			if r.Queue.Destination == dest {
				out = append(out, r)
			}
		}
	}
	return out
}
