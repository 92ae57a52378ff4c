package shard_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/postgres"
	"github.com/fanout/fanout/internal/jobstore/shard"
	"github.com/fanout/fanout/internal/jobstore/storetest"
	"github.com/fanout/fanout/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// servers is how many servers the tests spread over. Each "server" is a
// database of its own on the test binary's PostgreSQL: to the store, a
// DSN is a server, and pgtest.Outage takes one database away as a down
// server would be.
const servers = 2

// databases maps a conformance subtest's Env.Dir to its DSNs, so that a
// reopen finds the same data.
var databases sync.Map

// open opens the sharded store over dsns with the suite's options.
func open(t *testing.T, dsns []string, env storetest.Env, opts shard.Options) jobstore.Store {
	t.Helper()
	applied := shard.OneAtATime(env.Applied)
	stores := make([]jobstore.Store, len(dsns))
	for i, dsn := range dsns {
		s, err := postgres.Open(t.Context(), dsn, postgres.Options{
			DedupeWindow:    env.DedupeWindow,
			Now:             env.Now,
			Applied:         applied,
			PartitionJobs:   16,
			CleanupInterval: -1,
		})
		if err != nil {
			t.Fatalf("Open server %d: %v", i, err)
		}
		stores[i] = s
	}
	s, err := shard.New(stores, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func freshDSNs(t *testing.T) []string {
	dsns := make([]string, servers)
	for i := range dsns {
		dsns[i] = pgtest.Start(t)
	}
	return dsns
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, env storetest.Env) jobstore.Store {
		dsns, ok := databases.Load(env.Dir)
		if !ok {
			dsns, _ = databases.LoadOrStore(env.Dir, freshDSNs(t))
		}
		return open(t, dsns.([]string), env, shard.Options{})
	})
}

// The conformance suite's destinations "hook" and "crm" live on different
// servers, so that the suite exercises both and an Append that spans them.
func TestSuiteSpansServers(t *testing.T) {
	hook := cluster.ServerOf("hook", cluster.DefaultPartitions, servers)
	crm := cluster.ServerOf("crm", cluster.DefaultPartitions, servers)
	if hook == crm {
		t.Fatalf("hook and crm both live on server %d: the conformance suite would test one server", hook)
	}
}

// bundle is a sharded store on two servers, one of which the test can take
// down, with what the test needs to look at each server.
type bundle struct {
	t      *testing.T
	store  jobstore.Store
	outage []func(down bool)
	now    time.Time
	holds  [servers]bool
	mu     sync.Mutex
}

func setup(t *testing.T) *bundle {
	dsns := freshDSNs(t)
	b := &bundle{t: t, now: time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)}
	for _, dsn := range dsns {
		b.outage = append(b.outage, pgtest.Outage(t, dsn))
	}
	env := storetest.Env{Now: func() time.Time { return b.now }, DedupeWindow: time.Hour}
	b.store = open(t, dsns, env, shard.Options{Holds: func(i int) bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.holds[i]
	}})
	t.Cleanup(func() { b.store.Close() })
	return b
}

func (b *bundle) setHolds(i int, v bool) {
	b.mu.Lock()
	b.holds[i] = v
	b.mu.Unlock()
}

func (b *bundle) entry(id string, dests ...string) jobstore.Entry {
	return jobstore.Entry{
		Event: event.Event{Source: "web", MessageID: id, Type: event.Track, ReceivedAt: b.now,
			Payload: []byte(`{"type":"track","event":"E","messageId":"` + id + `"}`)},
		Destinations: dests,
	}
}

// pendingIDs reads q's pending jobs' messageIds.
func (b *bundle) pendingIDs(q jobstore.Queue) []string {
	b.t.Helper()
	jobs, err := b.store.Pending(b.t.Context(), q, 0, 100)
	if err != nil {
		b.t.Fatalf("Pending %s: %v", q.Destination, err)
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.Event.MessageID)
	}
	return ids
}

// The case the package documentation promises: a batch whose events go to
// both servers, while one server is down, fails as a whole with
// ErrUnavailable (a 503) though the other server stored its part; the
// client's resend of the same batch, once the server is back, stores only
// what was missing, and every destination ends with each job exactly once.
func TestPartialFailureThenResend(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	hook := jobstore.Queue{Source: "web", Destination: "hook"} // server 0
	crm := jobstore.Queue{Source: "web", Destination: "crm"}   // server 1
	batch := []jobstore.Entry{
		b.entry("both", "hook", "crm"),
		b.entry("hook-only", "hook"),
		b.entry("crm-only", "crm"),
		b.entry("nowhere"),
	}

	b.outage[1](true)
	_, err := b.store.Append(ctx, batch)
	if !errors.Is(err, jobstore.ErrUnavailable) {
		t.Fatalf("Append with server 1 down = %v, want ErrUnavailable", err)
	}
	// Server 0 committed its part, and still serves it.
	if got, want := b.pendingIDs(hook), []string{"both", "hook-only"}; !slices.Equal(got, want) {
		t.Fatalf("hook (server 0) while server 1 is down: %v, want %v", got, want)
	}
	if _, err := b.store.Pending(ctx, crm, 0, 10); err == nil {
		t.Fatal("Pending of crm (server 1, down) succeeded")
	}
	// A batch for server 0 alone is taken.
	if dup, err := b.store.Append(ctx, []jobstore.Entry{b.entry("later", "hook")}); err != nil || dup[0] {
		t.Fatalf("Append for server 0 alone while server 1 is down: dup %v, err %v", dup, err)
	}

	b.outage[1](false)
	var dup []bool
	// The pool finds its connections cut and reconnects; the first call
	// after the outage may still meet a dead one.
	for range 20 {
		if dup, err = b.store.Append(ctx, batch); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("resend after server 1 is back: %v", err)
	}
	// "both" was new to server 1; "hook-only" and "nowhere" were stored
	// on server 0 the first time; "crm-only" is new.
	if want := []bool{false, true, false, true}; !slices.Equal(dup, want) {
		t.Errorf("resend: duplicate = %v, want %v", dup, want)
	}
	if got, want := b.pendingIDs(hook), []string{"both", "hook-only", "later"}; !slices.Equal(got, want) {
		t.Errorf("hook after the resend: %v, want %v (each once)", got, want)
	}
	if got, want := b.pendingIDs(crm), []string{"both", "crm-only"}; !slices.Equal(got, want) {
		t.Errorf("crm after the resend: %v, want %v (each once)", got, want)
	}
	// A third send is a duplicate everywhere.
	if dup, err = b.store.Append(ctx, batch); err != nil || slices.Contains(dup, false) {
		t.Errorf("third send: duplicate = %v, err %v; want all duplicates", dup, err)
	}
}

// Queues leaves out a server that does not answer only when the node owns
// none of its partitions.
func TestQueuesWithAServerDown(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	if _, err := b.store.Append(ctx, []jobstore.Entry{b.entry("a", "hook", "crm")}); err != nil {
		t.Fatal(err)
	}
	all, err := b.store.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []jobstore.Queue{{Source: "web", Destination: "crm"}, {Source: "web", Destination: "hook"}}; !slices.Equal(all, want) {
		t.Fatalf("Queues = %v, want %v", all, want)
	}
	b.outage[1](true)
	tests := []struct {
		name  string
		holds bool
		want  []jobstore.Queue
	}{
		{"owning partitions of the down server", true, nil},
		{"owning none of them", false, []jobstore.Queue{{Source: "web", Destination: "hook"}}},
	}
	// Listing server 0's partitions does not ask server 1, held or not.
	b.setHolds(1, true)
	pl := b.store.(interface {
		QueuesIn(ctx context.Context, partitions []int) ([]jobstore.Queue, error)
	})
	hookPart := cluster.PartitionOf("hook", cluster.DefaultPartitions)
	if got, err := pl.QueuesIn(ctx, []int{hookPart}); err != nil || !slices.Equal(got, []jobstore.Queue{{Source: "web", Destination: "hook"}}) {
		t.Errorf("QueuesIn(partition %d of server 0) with server 1 down = %v, %v; want [web/hook]", hookPart, got, err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.setHolds(1, tt.holds)
			got, err := b.store.Queues(ctx)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("Queues = %v, want an error", got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Queues = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// Apply splits an update by server: each server gets its queues' part.
func TestApplySplitsByServer(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	if _, err := b.store.Append(ctx, []jobstore.Entry{b.entry("a", "hook", "crm"), b.entry("b", "hook", "crm")}); err != nil {
		t.Fatal(err)
	}
	hook := jobstore.Queue{Source: "web", Destination: "hook"}
	crm := jobstore.Queue{Source: "web", Destination: "crm"}
	hj, _ := b.store.Pending(ctx, hook, 0, 10)
	cj, _ := b.store.Pending(ctx, crm, 0, 10)
	if len(hj) != 2 || len(cj) != 2 {
		t.Fatalf("pending: hook %d, crm %d, want 2 each", len(hj), len(cj))
	}
	err := b.store.Apply(ctx, jobstore.Update{
		Drops:      []jobstore.Drop{{Queue: hook, Below: hj[0].Seq + 1}},
		Reschedule: []jobstore.Reschedule{{Job: cj[0], DueAt: b.now.Add(time.Minute), Attempts: 1, LastError: "503"}},
		Finish:     []jobstore.Job{cj[1]},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.pendingIDs(hook); !slices.Equal(got, []string{"b"}) {
		t.Errorf("hook after the drop: %v, want [b]", got)
	}
	if got := b.pendingIDs(crm); len(got) != 0 {
		t.Errorf("crm after reschedule and finish: %v, want none pending", got)
	}
	retries, _, err := b.store.Retries(ctx, crm, b.now.Add(time.Hour), 10)
	if err != nil || len(retries) != 1 || retries[0].Event.MessageID != "a" {
		t.Errorf("crm retries = %v, %v; want [a]", retries, err)
	}
}

// PartitionServer names the server whose listing holds the partition's
// queues: the server each destination's jobs were stored on.
func TestPartitionServer(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	var dests []string
	for i := range 16 {
		dests = append(dests, fmt.Sprintf("d%d", i))
	}
	if _, err := b.store.Append(ctx, []jobstore.Entry{b.entry("a", dests...)}); err != nil {
		t.Fatal(err)
	}
	s := b.store.(*shard.Store)
	for _, d := range dests {
		p := cluster.PartitionOf(d, cluster.DefaultPartitions)
		srv := s.PartitionServer(p)
		if want := cluster.ServerOf(d, cluster.DefaultPartitions, servers); srv != want {
			t.Errorf("PartitionServer(%d) of %s = %d, want %d (cluster.ServerOf)", p, d, srv, want)
		}
		qs, err := s.QueuesIn(ctx, []int{p})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(qs, jobstore.Queue{Source: "web", Destination: d}) {
			t.Errorf("QueuesIn(%d) = %v, without web/%s", p, qs, d)
		}
	}
}
