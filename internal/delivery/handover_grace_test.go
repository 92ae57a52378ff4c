package delivery_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/postgres"
	"github.com/fanout/fanout/internal/pgtest"
)

// gate holds up the calls that pass it while armed, until released, as a
// loaded or unreachable database holds them up for seconds.
type gate struct {
	armed   atomic.Bool
	held    chan struct{} // closed when a call is held
	release chan struct{} // closed to let the calls through
	once    sync.Once
}

func newGate() *gate { return &gate{held: make(chan struct{}), release: make(chan struct{})} }

// pass waits while the gate is armed and not released, or until ctx ends.
func (g *gate) pass(ctx context.Context) error {
	if !g.armed.Load() {
		return nil
	}
	g.once.Do(func() { close(g.held) })
	select {
	case <-g.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// heldScan is the job store with its listing of queues, the engine's scan
// of the partitions it gains, held up by its gate.
type heldScan struct {
	jobstore.Store
	*gate
}

func (s *heldScan) Queues(ctx context.Context) ([]jobstore.Queue, error) {
	if err := s.pass(ctx); err != nil {
		return nil, err
	}
	return s.Store.Queues(ctx)
}

// A partition handed over is released as soon as the engine has nothing in
// flight on it, whatever its destinations are doing and whatever else the
// engine is busy with, never by the end of the grace: with requests in
// flight, once their outcomes are written; with a queue waiting for its
// retry or its rate limit, no queue, or no destination at all, at once;
// and while the engine is still listing the queues of partitions it has
// just gained.
//
// Node a holds partitions 4 to 7 (a destination in each of 4, 5 and 6,
// none in 7) and takes 0 to 3 over from node c, which leaves; then node b
// joins, and a hands 4 to 7 over to it.
func TestHandoverWithinGrace(t *testing.T) {
	const grace = 1500 * time.Millisecond
	delivered := func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}
	retried := func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 503}
	}
	for _, tc := range []struct {
		name string
		// events per destination, sent before the handover, and how long
		// the sink takes to answer each request.
		events  int
		latency time.Duration
		limits  delivery.Limits
		decide  func(ev event.Event, attempt int) destinations.Result
		// heldScan holds a's listing of the queues of 0 to 3, which it
		// gains from c, until b has its share.
		heldScan bool
		// once checks that every event reaches its destination once.
		once bool
	}{
		{name: "requests in flight", events: 60, latency: 100 * time.Millisecond,
			limits: delivery.Limits{Concurrency: 2}, decide: delivered, once: true},
		{name: "requests in flight, gain scan held up", events: 60, latency: 100 * time.Millisecond,
			limits: delivery.Limits{Concurrency: 2}, decide: delivered, heldScan: true, once: true},
		{name: "queues waiting for their retry", events: 3, decide: retried},
		{name: "queues waiting for their retry, gain scan held up", events: 3, decide: retried, heldScan: true},
		{name: "queues behind the rate limit", events: 5, limits: delivery.Limits{RateLimit: 0.5}, decide: delivered},
		{name: "no queue", decide: delivered},
		{name: "no queue, gain scan held up", decide: delivered, heldScan: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &handoverBundle{node: cluster.Options{Partitions: 8, Heartbeat: 100 * time.Millisecond,
				Lease: 3 * time.Second, Grace: grace}, limits: tc.limits, decide: tc.decide}
			in := map[int]bool{}
			for i := 0; len(b.dests) < 3; i++ {
				name := fmt.Sprintf("d%d", i)
				if p := cluster.PartitionOf(name, 8); p >= 4 && p <= 6 && !in[p] {
					in[p] = true
					b.dests = append(b.dests, name)
				}
			}
			setupHandover(t, tc.latency, b)

			// c holds every partition, then hands 4 to 7 over to a.
			c, err := cluster.Join(t.Context(), cluster.Options{Pool: pgtest.Pool(t, b.dsn), NodeName: "c",
				Partitions: 8, Heartbeat: 100 * time.Millisecond, Lease: 3 * time.Second, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Leave(context.Background()) })
			go func() {
				for ch := range c.Changes() {
					if ch.Draining {
						c.Drained(ch.Partition, ch.Token)
					}
				}
			}()
			scan := &heldScan{gate: newGate()}
			let := sync.OnceFunc(func() { close(scan.release) })
			t.Cleanup(let)
			a := b.start("a", func(s *postgres.Store) jobstore.Store { scan.Store = s; return scan })
			eventually(t, "a takes its share from c", func() bool { return len(a.node.Owned()) == 4 })

			if tc.events > 0 {
				b.send(a.store, tc.events)
				eventually(t, "a sends to every destination", func() bool {
					b.mu.Lock()
					defer b.mu.Unlock()
					seen := map[string]bool{}
					for k := range b.got {
						seen[strings.Fields(k)[0]] = true
					}
					return len(seen) == len(b.dests) || b.inflight.Load() >= int32(len(b.dests))
				})
			}
			scan.armed.Store(tc.heldScan)
			if err := c.Leave(t.Context()); err != nil {
				t.Fatal(err)
			}
			eventually(t, "a takes c's partitions over", func() bool { return len(a.node.Owned()) == 8 })
			if tc.heldScan {
				select {
				case <-scan.held:
				case <-time.After(10 * time.Second):
					t.Fatal("a never listed the queues of the partitions it took over")
				}
			}

			joined := time.Now()
			nb := b.start("b", nil)
			eventually(t, "b takes its share from a", func() bool { return len(nb.node.Owned()) == 4 })
			pause := time.Since(joined)
			let()
			t.Logf("b had its share %s after joining (grace %s)", pause.Round(time.Millisecond), grace)
			if logs := a.logs.String(); pause >= grace || strings.Contains(logs, "handover grace over") {
				t.Errorf("a released partitions at the end of the grace, not when drained; its log:\n%s", logs)
			}
			if tc.once {
				b.awaitOnce(tc.events)
			}
		})
	}
}

// drainingOwnership is fakeOwnership that records Drained.
type drainingOwnership struct {
	*fakeOwnership
	drained chan [2]int64 // partition, token
}

func (f drainingOwnership) Drained(p int, token int64) { f.drained <- [2]int64{int64(p), token} }

// A handover of a partition whose queues the engine is still listing (it
// has just gained it) is drained at once, not after the listing; and the
// listing, once back, is not applied to the partition handed over: its
// queues would be delivered again on a lease the node is giving up.
func TestHandoverDuringGainScan(t *testing.T) {
	own := drainingOwnership{&fakeOwnership{owned: map[int]int64{}, changes: make(chan cluster.Change, 16),
		wakes: make(chan int, 16)}, make(chan [2]int64, 16)}
	scan := &heldScan{gate: newGate()}
	let := sync.OnceFunc(func() { close(scan.release) })
	t.Cleanup(let)
	reports := runOwnedA(t, own, func(s jobstore.Store) jobstore.Store { scan.Store = s; return scan })

	scan.armed.Store(true)
	own.set(0, true)
	select {
	case <-scan.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the gain of partition 0 was never listed")
	}
	// Handed over while listed: the lease stays valid for writes (Owns).
	tok, _ := own.Owns(0)
	own.changes <- cluster.Change{Partition: 0, Token: tok, Draining: true}
	select {
	case got := <-own.drained:
		if got != [2]int64{0, tok} {
			t.Fatalf("Drained(%d, %d), want Drained(0, %d)", got[0], got[1], tok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("partition 0 handed over during its listing: never drained")
	}
	let()
	select {
	case r := <-reports:
		t.Fatalf("%s/%s delivered on a partition handed over", r.Queue.Destination, r.Job.Event.MessageID)
	case <-time.After(300 * time.Millisecond):
	}
}
