package delivery_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/postgres"
	"github.com/fanout/fanout/internal/jobstore/shard"
	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/pgtest"
)

// spreadPartitions is the partition count of the two-server tests.
const spreadPartitions = 8

// spreadOwnership is fakeOwnership numbering partitions as the cluster
// does, so that partition p lives on server p mod 2 of the sharded store.
type spreadOwnership struct{ *fakeOwnership }

func (f spreadOwnership) PartitionOf(q jobstore.Queue) int {
	return cluster.PartitionOf(q.Destination, spreadPartitions)
}

// spreadBundle is an engine over a job store on two PostgreSQL databases,
// as two servers of storage.postgres, following a cluster share the test
// moves by hand: one destination on each server.
type spreadBundle struct {
	t       *testing.T
	dsns    [2]string
	store   jobstore.Store
	own     spreadOwnership
	dests   [2]string // dests[i] lives on server i
	reports chan delivery.Report
	logs    *logtest.Buffer // the engine's errors
}

// setupSpread stores events jobs for each destination, then starts the
// engine, owning nothing.
func setupSpread(t *testing.T, events int) *spreadBundle {
	b := &spreadBundle{t: t, reports: make(chan delivery.Report, 1024), logs: &logtest.Buffer{}}
	for i := 0; b.dests[0] == "" || b.dests[1] == ""; i++ {
		name := fmt.Sprintf("d%d", i)
		if srv := cluster.ServerOf(name, spreadPartitions, 2); b.dests[srv] == "" {
			b.dests[srv] = name
		}
	}
	stores := make([]jobstore.Store, 2)
	for i := range stores {
		b.dsns[i] = pgtest.Start(t)
		s, err := postgres.Open(t.Context(), b.dsns[i], postgres.Options{CleanupInterval: -1, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = s
	}
	store, err := shard.New(stores, shard.Options{Partitions: spreadPartitions, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b.store = store
	t.Cleanup(func() { store.Close() })

	var es []jobstore.Entry
	for i := range events {
		id := fmt.Sprintf("e%d", i)
		es = append(es, jobstore.Entry{Destinations: b.dests[:], Event: event.Event{Source: "web", MessageID: id,
			Type: event.Track, ReceivedAt: time.Now(), Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))}})
	}
	if _, err := store.Append(t.Context(), es); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	var targets []delivery.Target
	for _, d := range b.dests {
		s := &scripted{url: srv.URL, tries: map[string]int{}}
		targets = append(targets, delivery.Target{Name: d, Type: "test", Destination: decider{s},
			Client: srv.Client(), Sources: []string{"web"}})
	}
	b.own = spreadOwnership{&fakeOwnership{owned: map[int]int64{}, changes: make(chan cluster.Change, 16),
		wakes: make(chan int, 16)}}
	eng, err := delivery.New(delivery.Options{Store: store, Targets: targets, Clock: clock.Real{}, Ownership: b.own,
		Archive: archive.NewWriter(filepath.Join(t.TempDir(), "archive")),
		Logger:  b.logs.Logger(slog.LevelError),
		Observe: func(r delivery.Report) { b.reports <- r }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(run(eng))
	return b
}

// partition returns the partition of the destination on server srv.
func (b *spreadBundle) partition(srv int) int {
	return cluster.PartitionOf(b.dests[srv], spreadPartitions)
}

// expect waits up to within for n jobs of server srv's destination to be
// delivered, and fails the test if another destination's is.
func (b *spreadBundle) expect(what string, srv, n int, within time.Duration) {
	b.t.Helper()
	deadline := time.After(within)
	for got := 0; got < n; {
		select {
		case r := <-b.reports:
			if r.Queue.Destination != b.dests[srv] {
				b.t.Fatalf("%s: %s/%s delivered, want only %s's", what, r.Queue.Destination, r.Job.Event.MessageID, b.dests[srv])
			}
			got++
		case <-deadline:
			b.t.Fatalf("%s: %d of %d jobs of %s (server %d) delivered in %s; engine errors:\n%s",
				what, got, n, b.dests[srv], srv, within, b.logs.String())
		}
	}
}

// blockQueues holds a lock on the queues table of the database at dsn, so
// that listing its queues hangs as on a server that does not answer, until
// the returned function is called.
func blockQueues(t *testing.T, dsn string) (unblock func()) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), "LOCK TABLE queues IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	var once bool
	unblock = func() {
		if !once {
			once = true
			tx.Rollback(context.Background())
			conn.Close(context.Background())
		}
	}
	t.Cleanup(unblock)
	return unblock
}

// waitingOnLock reports how many queries on the database at dsn wait for a
// lock: a listing held up by blockQueues.
func waitingOnLock(t *testing.T, dsn string) func() int {
	pool := pgtest.Pool(t, dsn)
	return func() int {
		var n int
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// A gain of partitions on one server is listed and delivered at once while
// the listing of a gain on another server is pending because that server
// is down or does not answer: only the work stored on the server that is
// out waits, and it is delivered when the server is back.
func TestGainNotBehindAnotherServer(t *testing.T) {
	const events = 5
	for _, tc := range []struct {
		name string
		// out takes server 1's database out once the engine has jobs on
		// it, and returns when a listing of it is pending; back brings it
		// back.
		out func(b *spreadBundle) (back func())
	}{
		{name: "server stopped", out: func(b *spreadBundle) func() {
			outage := pgtest.Outage(b.t, b.dsns[1])
			outage(true)
			b.own.set(b.partition(1), true)
			eventually(b.t, "the listing of server 1 fails", func() bool {
				logs := b.logs.String()
				return strings.Contains(logs, "list the queues of partitions gained") && strings.Contains(logs, `err="server 1: `)
			})
			return func() { outage(false) }
		}},
		{name: "server not answering", out: func(b *spreadBundle) func() {
			unblock := blockQueues(b.t, b.dsns[1])
			waiting := waitingOnLock(b.t, b.dsns[1])
			b.own.set(b.partition(1), true)
			eventually(b.t, "the listing of server 1 hangs", func() bool { return waiting() > 0 })
			return unblock
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setupSpread(t, events)
			back := tc.out(b)
			// Well within the engine's 10 s store timeout, which a listing
			// of the server out waits for before trying again.
			b.own.set(b.partition(0), true)
			b.expect("gain on server 0 while server 1 is out", 0, events, 5*time.Second)
			back()
			b.expect("server 1 back", 1, events, 30*time.Second)
		})
	}
}

// A listing none of whose partitions the node still owns is called off,
// not left to wait for its server: the next gain on that server is listed
// as soon as the server answers.
func TestListingOfLostPartitionsCalledOff(t *testing.T) {
	const events = 3
	b := setupSpread(t, events)
	unblock := blockQueues(t, b.dsns[1])
	waiting := waitingOnLock(t, b.dsns[1])
	p := b.partition(1)
	b.own.set(p, true)
	eventually(t, "the listing of server 1 hangs", func() bool { return waiting() > 0 })

	b.own.set(p, false)
	// Called off, the listing's query is cancelled well before the
	// engine's 10 s store timeout would end it.
	for deadline := time.Now().Add(5 * time.Second); waiting() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the listing of a partition lost still waits for its server")
		}
	}

	b.own.set(p, true)
	eventually(t, "the listing of the partition gained again hangs", func() bool { return waiting() > 0 })
	unblock()
	b.expect("partition gained again, server answering", 1, events, 5*time.Second)
}
