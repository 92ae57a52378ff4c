package delivery_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/postgres"
	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/pgtest"
)

// handoverBundle is a cluster on one real PostgreSQL for the handover
// tests: nodes, each with its own pools, job store and engine as in its
// own process, delivering to one sink that counts what it receives.
type handoverBundle struct {
	t   *testing.T
	dsn string
	// node is the nodes' cluster options, without Pool, NodeName, Logger.
	node   cluster.Options
	dests  []string
	limits delivery.Limits
	// decide, when set, is the destinations' verdict on each event.
	decide func(ev event.Event, attempt int) destinations.Result

	srv      *httptest.Server
	inflight atomic.Int32
	mu       sync.Mutex
	got      map[string]int // "destination source/messageId" -> requests
}

// handoverNode is one node of a handoverBundle.
type handoverNode struct {
	node  *cluster.Node
	store *postgres.Store
	logs  *logtest.Buffer // the node's and its engine's warnings
}

// setupHandover starts the sink, which answers each request after latency.
func setupHandover(t *testing.T, latency time.Duration, b *handoverBundle) *handoverBundle {
	t.Helper()
	b.t, b.dsn, b.got = t, pgtest.Start(t), map[string]int{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.inflight.Add(1)
		defer b.inflight.Add(-1)
		time.Sleep(latency)
		b.mu.Lock()
		for _, id := range r.Header.Values("X-Event") {
			b.got[r.URL.Query().Get("d")+" "+id]++
		}
		b.mu.Unlock()
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// start runs one node as its own process would: its pools, store and
// engine. wrap, when set, stands between the engine and the store.
func (b *handoverBundle) start(name string, wrap func(*postgres.Store) jobstore.Store) *handoverNode {
	t := b.t
	t.Helper()
	logs := &logtest.Buffer{}
	log := logs.Logger(slog.LevelWarn).With("node", name)
	opts := b.node
	opts.Pool, opts.NodeName, opts.Logger = pgtest.Pool(t, b.dsn), name, log
	node, err := cluster.Join(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	// The store announces its appends to the node's engine, as the server
	// wires it: the jobs of partitions the node owns wake no one else.
	var eng *delivery.Engine
	var engine atomic.Pointer[delivery.Engine]
	store, err := postgres.Open(t.Context(), b.dsn, postgres.Options{Cluster: node, CleanupInterval: -1, Logger: quiet,
		Applied: func(a jobstore.Appended) {
			if e := engine.Load(); e != nil {
				e.Notify(a)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	var es jobstore.Store = store
	if wrap != nil {
		es = wrap(store)
	}
	var targets []delivery.Target
	for _, d := range b.dests {
		s := &scripted{url: b.srv.URL + "?d=" + d, tries: map[string]int{}, decide: b.decide}
		targets = append(targets, delivery.Target{Name: d, Type: "test", Destination: decider{s},
			Client: b.srv.Client(), Sources: []string{"web"}, Limits: b.limits})
	}
	eng, err = delivery.New(delivery.Options{Store: es, Targets: targets, Clock: clock.Real{},
		Ownership: node, Archive: archive.NewWriter(filepath.Join(t.TempDir(), "archive")), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	engine.Store(eng)
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
	return &handoverNode{node: node, store: store, logs: logs}
}

// send appends n events of source "web" to every destination.
func (b *handoverBundle) send(store jobstore.Store, n int) {
	b.t.Helper()
	var es []jobstore.Entry
	for i := range n {
		id := fmt.Sprintf("e%d", i)
		es = append(es, jobstore.Entry{Destinations: b.dests, Event: event.Event{Source: "web", MessageID: id,
			Type: event.Track, ReceivedAt: time.Now(), Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))}})
	}
	if _, err := store.Append(b.t.Context(), es); err != nil {
		b.t.Fatal(err)
	}
}

// awaitOnce waits until the sink has received every one of n events per
// destination, then a little longer, and fails the test for each sent more
// than once.
func (b *handoverBundle) awaitOnce(n int) {
	b.t.Helper()
	total := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.got)
	}
	deadline := time.Now().Add(20 * time.Second)
	for total() < len(b.dests)*n {
		if time.Now().After(deadline) {
			b.t.Fatalf("delivered %d of %d jobs", total(), len(b.dests)*n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate would come now
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, n := range b.got {
		if n != 1 {
			b.t.Errorf("%s sent %d times, want once", k, n)
		}
	}
}

// A node joining a cluster whose only node has requests in flight to a slow
// destination: the partitions handed over are drained under their leases
// before the newcomer takes them, so every job reaches its destination
// exactly once. Releasing at once, as before, had the outcomes in flight
// refused by the fencing and their jobs sent again by the newcomer.
func TestHandoverSendsNothingTwice(t *testing.T) {
	const nDests, nEvents = 8, 30
	b := &handoverBundle{node: cluster.Options{Partitions: 8, Heartbeat: 100 * time.Millisecond, Lease: 2 * time.Second}}
	for i := range nDests {
		b.dests = append(b.dests, fmt.Sprintf("d%d", i))
	}
	setupHandover(t, 150*time.Millisecond, b) // slow: requests are in flight at the join

	a := b.start("a", nil)
	b.send(a.store, nEvents)
	eventually(t, "requests in flight on node a", func() bool { return b.inflight.Load() >= nDests/2 })
	b.start("b", nil) // takes half the partitions while a has requests in flight on them
	b.awaitOnce(nEvents)
}
