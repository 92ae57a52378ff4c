package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/storetest"
	"github.com/fanout/fanout/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// databases maps each storetest Env (by its Dir) to its database, so that
// reopening an Env opens the same data.
var databases sync.Map

func openTest(t *testing.T, env storetest.Env) jobstore.Store {
	t.Helper()
	dsn, ok := databases.Load(env.Dir)
	if !ok {
		dsn, _ = databases.LoadOrStore(env.Dir, pgtest.Start(t))
	}
	s, err := Open(t.Context(), dsn.(string), Options{
		DedupeWindow:    env.DedupeWindow,
		Now:             env.Now,
		Applied:         env.Applied,
		PartitionJobs:   16,
		CleanupInterval: -1,
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, openTest)
}

// setup opens a store on a fresh database with small partitions and the
// test's own clock.
func setup(t *testing.T, opts Options) (*Store, string) {
	t.Helper()
	dsn := pgtest.Start(t)
	opts.CleanupInterval = -1
	if opts.PartitionJobs == 0 {
		opts.PartitionJobs = 100
	}
	s, err := Open(t.Context(), dsn, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dsn
}

func entries(source string, dests []string, prefix string, n int) []jobstore.Entry {
	es := make([]jobstore.Entry, n)
	for i := range es {
		id := fmt.Sprintf("%s-%d", prefix, i)
		es[i] = jobstore.Entry{Destinations: dests, Event: event.Event{
			Source: source, MessageID: id, Type: event.Track, ReceivedAt: time.Unix(1, 0),
			Payload: []byte(`{"type":"track","messageId":"` + id + `"}`),
		}}
	}
	return es
}

func (s *Store) countParts(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(t.Context(), "SELECT count(*) FROM job_parts").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDrainedPartitionsDropped: once every job of a partition has ended
// (dropped below the watermark, finished or moved to retries), Cleanup drops
// the partition whole, and the rest stays readable.
func TestDrainedPartitionsDropped(t *testing.T) {
	ctx := t.Context()
	s, _ := setup(t, Options{PartitionJobs: 100})
	hook := jobstore.Queue{Source: "web", Destination: "hook"}
	crm := jobstore.Queue{Source: "web", Destination: "crm"}
	for i := range 5 {
		if _, err := s.Append(ctx, entries("web", []string{"hook", "crm"}, fmt.Sprint("b", i), 50)); err != nil {
			t.Fatal(err)
		}
	}
	before := s.countParts(t)
	if before < 5 {
		t.Fatalf("%d partitions for 500 jobs of 100 each, want at least 5", before)
	}
	// hook drains everything by watermark; crm finishes the jobs one by
	// one, except its last 10, and reschedules one.
	hp, _ := s.Pending(ctx, hook, 0, 1000)
	cp, _ := s.Pending(ctx, crm, 0, 1000)
	u := jobstore.Update{
		Drops:      []jobstore.Drop{{Queue: hook, Below: hp[len(hp)-1].Seq + 1}},
		Finish:     cp[:len(cp)-11],
		Reschedule: []jobstore.Reschedule{{Job: cp[len(cp)-11], DueAt: time.Now().Add(time.Hour), Attempts: 1}},
	}
	if err := s.Apply(ctx, u); err != nil {
		t.Fatal(err)
	}
	dropped, err := s.Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := s.countParts(t)
	if dropped == 0 || after >= before {
		t.Fatalf("Cleanup dropped %d tables; partitions %d -> %d, want fewer", dropped, before, after)
	}
	// What is left: crm's last 10 pending jobs and its retry.
	got, err := s.Pending(ctx, crm, 0, 1000)
	if err != nil || len(got) != 10 {
		t.Fatalf("Pending(crm) = %d jobs, %v; want 10", len(got), err)
	}
	r, _, err := s.Retries(ctx, crm, time.Now().Add(2*time.Hour), 10)
	if err != nil || len(r) != 1 {
		t.Fatalf("Retries(crm) = %d jobs, %v; want 1", len(r), err)
	}
	// A late Finish of a job whose partition is gone is harmless.
	if err := s.Apply(ctx, jobstore.Update{Finish: cp[:1]}); err != nil {
		t.Fatalf("Apply of a Finish in a dropped partition: %v", err)
	}
	// Appends go on after the drops.
	if _, err := s.Append(ctx, entries("web", []string{"hook"}, "late", 3)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Pending(ctx, hook, 0, 100); len(got) != 3 {
		t.Errorf("Pending(hook) after drops = %d jobs, want 3", len(got))
	}
}

// TestDedupeAcrossStores: two stores on one database (two nodes) racing on
// the same messageIds store each exactly once, also across a bucket
// boundary.
func TestDedupeAcrossStores(t *testing.T) {
	for _, tt := range []struct {
		name   string
		offset time.Duration // from a bucket boundary
	}{
		{"inside a bucket", 30 * time.Minute},
		{"just before a boundary", -time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			base := time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC).Add(tt.offset)
			var mu sync.Mutex
			now := base
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			a, dsn := setup(t, Options{DedupeWindow: time.Hour, Now: clock})
			b, err := Open(ctx, dsn, Options{DedupeWindow: time.Hour, Now: func() time.Time { return clock().Add(2 * time.Millisecond) }, CleanupInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			const n = 200
			stored := make([][]bool, 2)
			var wg sync.WaitGroup
			for i, s := range []*Store{a, b} {
				wg.Go(func() {
					es := entries("web", []string{"hook"}, "m", n)
					stored[i] = make([]bool, n)
					for k := 0; k < n; k += 10 {
						dup, err := s.Append(ctx, es[k:k+10])
						if err != nil {
							t.Error(err)
							return
						}
						for j, d := range dup {
							stored[i][k+j] = !d
						}
					}
				})
			}
			wg.Wait()
			for k := range n {
				if stored[0][k] == stored[1][k] {
					t.Errorf("m-%d: stored by a %v, by b %v; want exactly one", k, stored[0][k], stored[1][k])
				}
			}
		})
	}
}

// TestUnavailable: a database that cannot be reached is ErrUnavailable, and
// the DSN's password appears in no error.
func TestUnavailable(t *testing.T) {
	const password = "s3cret-pw"
	dsn := "postgres://fanout:" + password + "@127.0.0.1:1/fanout?sslmode=disable&connect_timeout=2"
	_, err := Open(t.Context(), dsn, Options{})
	if err == nil {
		t.Fatal("Open of an unreachable database succeeded")
	}
	if !errors.Is(err, jobstore.ErrUnavailable) {
		t.Errorf("Open = %v, want an error wrapping jobstore.ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("error shows the password: %v", err)
	}
	_, err = Open(t.Context(), "postgres://fanout:"+password+"@127.0.0.1:bad/x", Options{})
	if err == nil || strings.Contains(err.Error(), password) {
		t.Errorf("Open of a bad DSN = %v, want an error without the password", err)
	}
}

// TestMigrateConcurrently: nodes starting together apply the schema once.
func TestMigrateConcurrently(t *testing.T) {
	dsn := pgtest.Start(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := Open(context.Background(), dsn, Options{CleanupInterval: -1})
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
}

// TestApplied: each Append's stored entries are announced with the Seq of
// their first job, duplicates left out, before Append returns.
func TestApplied(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	var got []jobstore.Appended
	s, _ := setup(t, Options{Applied: func(a jobstore.Appended) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, a)
	}})
	if _, err := s.Append(ctx, entries("web", []string{"hook", "crm"}, "a", 3)); err != nil {
		t.Fatal(err)
	}
	es := entries("web", []string{"hook", "crm"}, "a", 5) // a-0..a-2 are duplicates
	if _, err := s.Append(ctx, es); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || len(got[0].Entries) != 3 || len(got[1].Entries) != 2 {
		t.Fatalf("announced %+v, want 3 entries then 2", got)
	}
	want := map[uint64]string{}
	for _, a := range got {
		a.Runs(func(entries []jobstore.Entry, dests []string, first uint64) {
			for i, e := range entries {
				for k, d := range dests {
					want[first+uint64(i*len(dests)+k)] = d + "/" + e.Event.MessageID
				}
			}
		})
	}
	for _, dest := range []string{"hook", "crm"} {
		jobs, err := s.Pending(ctx, jobstore.Queue{Source: "web", Destination: dest}, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) != 5 {
			t.Fatalf("Pending(%s) = %d jobs, want 5", dest, len(jobs))
		}
		for _, j := range jobs {
			if w := want[j.Seq]; w != dest+"/"+j.Event.MessageID {
				t.Errorf("job %d is %s/%s, announced as %q", j.Seq, dest, j.Event.MessageID, w)
			}
		}
	}
}

// TestDatabaseDown: once the server is gone, Append fails with
// ErrUnavailable (the tracking API's 503) and reads fail.
func TestDatabaseDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster of its own")
	}
	ctx := t.Context()
	srv, err := pgtest.StartServer(pgtest.Options{Settings: pgtest.TestSettings})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dsn, err := srv.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, dsn, Options{CleanupInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Append(ctx, entries("web", []string{"hook"}, "up", 2)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Append(ctx, entries("web", []string{"hook"}, "down", 2))
	if !errors.Is(err, jobstore.ErrUnavailable) {
		t.Errorf("Append with the database down = %v, want an error wrapping jobstore.ErrUnavailable", err)
	}
	if _, err := s.Pending(ctx, jobstore.Queue{Source: "web", Destination: "hook"}, 0, 10); !errors.Is(err, jobstore.ErrUnavailable) {
		t.Errorf("Pending with the database down = %v, want an error wrapping jobstore.ErrUnavailable", err)
	}
}

// TestAppliedInCommitOrder: with two group commits in flight, the
// announcements still come in Seq order, as a reader paging by Seq sees
// the jobs.
func TestAppliedInCommitOrder(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	var firsts []uint64
	s, _ := setup(t, Options{Applied: func(a jobstore.Appended) {
		mu.Lock()
		defer mu.Unlock()
		firsts = append(firsts, a.First)
	}})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for c := range 25 {
				if _, err := s.Append(ctx, entries("web", []string{"hook"}, fmt.Sprintf("g%d-c%d", g, c), 4)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(firsts) != 8*25 {
		t.Fatalf("%d announcements, want %d", len(firsts), 8*25)
	}
	for i := 1; i < len(firsts); i++ {
		if firsts[i] <= firsts[i-1] {
			t.Fatalf("announcement %d has First %d after %d: not in Seq order", i, firsts[i], firsts[i-1])
		}
	}
}

// jobTablesSize is the size on disk, indexes included, of the job tables:
// every partition of jobs and finished, retries, queues, job_parts, meta.
func (s *Store) jobTablesSize(t *testing.T) int64 {
	t.Helper()
	var n int64
	if err := s.pool.QueryRow(t.Context(), `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relkind = 'r'
		  AND (c.relname IN ('retries', 'queues', 'job_parts', 'meta')
		       OR c.relname LIKE 'jobs\_p%' OR c.relname LIKE 'finished\_p%')`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// databaseSize is pg_database_size of the store's database.
func (s *Store) databaseSize(t *testing.T) int64 {
	t.Helper()
	var n int64
	if err := s.pool.QueryRow(t.Context(), "SELECT pg_database_size(current_database())").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestBacklogSpaceReturned: a backlog of 200,000 jobs, once drained (by
// the engine's Drop for one queue; for the other by Finish, half of each
// page out of order) and cleaned up, leaves the job tables within 10% of
// their size before it, with no VACUUM: every partition it filled is
// dropped, the last one included. Its dedupe records stay for the window,
// and once the window has passed (the store's clock moved on) Cleanup drops
// them too, and the whole database is back within 10%.
func TestBacklogSpaceReturned(t *testing.T) {
	if testing.Short() {
		t.Skip("appends 200,000 jobs")
	}
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Unix(1_000_000_000, 0)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	s, _ := setup(t, Options{PartitionJobs: 20_000, DedupeWindow: time.Hour, Now: clock})
	hook := jobstore.Queue{Source: "web", Destination: "hook"}
	crm := jobstore.Queue{Source: "web", Destination: "crm"}
	payload := []byte(strings.Repeat("x", 300))
	appendJobs := func(prefix string, events int) {
		t.Helper()
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for b := 0; b < events/4/100; b++ {
					es := entries("web", []string{"hook", "crm"}, fmt.Sprintf("%s-g%d-b%d", prefix, g, b), 100)
					for i := range es {
						es[i].Event.Payload = payload
					}
					if _, err := s.Append(ctx, es); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	apply := func(u jobstore.Update) {
		t.Helper()
		if err := s.Apply(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	// drain delivers every pending job: hook's by moving its watermark,
	// crm's by Finish, the odd jobs of each page before the even ones (the
	// odd ones end ahead of a pending job: finished rows).
	drain := func() {
		t.Helper()
		var last uint64
		for {
			jobs, err := s.Pending(ctx, hook, last, 5000)
			if err != nil {
				t.Fatal(err)
			}
			if len(jobs) == 0 {
				break
			}
			last = jobs[len(jobs)-1].Seq
		}
		apply(jobstore.Update{Drops: []jobstore.Drop{{Queue: hook, Below: last + 1}}})
		for after := uint64(0); ; {
			jobs, err := s.Pending(ctx, crm, after, 5000)
			if err != nil {
				t.Fatal(err)
			}
			if len(jobs) == 0 {
				break
			}
			var odd, even []jobstore.Job
			for i, j := range jobs {
				if i%2 == 1 {
					odd = append(odd, j)
				} else {
					even = append(even, j)
				}
			}
			apply(jobstore.Update{Finish: odd})
			apply(jobstore.Update{Finish: even})
			after = jobs[len(jobs)-1].Seq
		}
		if _, err := s.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Steady state before the backlog: some traffic, delivered.
	appendJobs("warm", 2_000)
	drain()
	before, dbBefore := s.jobTablesSize(t), s.databaseSize(t)
	appendJobs("backlog", 100_000) // two destinations: 200,000 jobs
	full := s.jobTablesSize(t)
	var lastSeq int64
	if err := s.pool.QueryRow(ctx, "SELECT last_seq FROM meta").Scan(&lastSeq); err != nil {
		t.Fatal(err)
	}
	drain()
	after, dbAfter := s.jobTablesSize(t), s.databaseSize(t)
	dedupe := func() int64 {
		var n int64
		if err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint
			FROM pg_inherits WHERE inhparent = 'dedupe'::regclass`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Logf("job tables: %d kB before the backlog, %d kB with 200,000 jobs, %d kB drained (%d partitions left); "+
		"database %d kB before, %d kB drained, of which the backlog's dedupe records, kept for the window, %d kB",
		before>>10, full>>10, after>>10, s.countParts(t), dbBefore>>10, dbAfter>>10, dedupe()>>10)
	// An empty partition pair takes 24 kB whatever came before it; the
	// current one and the next may be there or not.
	if limit := before + before/10 + 2*24<<10; after > limit {
		t.Errorf("job tables %d kB after the backlog drained, %d kB before: more than 10%% and two empty partitions over", after>>10, before>>10)
	}
	var left int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM job_parts WHERE lo <= $1", lastSeq).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left > 0 {
		t.Errorf("%d partitions holding the backlog's Seqs (up to %d) are left once it drained; want all dropped", left, lastSeq)
	}

	// The window passes: the dedupe buckets are dropped whole.
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	if _, err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	dbWindow := s.databaseSize(t)
	t.Logf("database %d kB once the window has passed (dedupe records %d kB)", dbWindow>>10, dedupe()>>10)
	if dbWindow > dbBefore+dbBefore/10 {
		t.Errorf("database %d kB once the backlog drained and its dedupe window passed, %d kB before: more than 10%% over", dbWindow>>10, dbBefore>>10)
	}

	// The store goes on working.
	appendJobs("after", 400)
	if got, err := s.Pending(ctx, hook, 0, 1000); err != nil || len(got) != 400 {
		t.Fatalf("Pending(hook) after the backlog = %d jobs, %v; want 400", len(got), err)
	}
}

// TestPinnedPartitionCompacted: a queue whose destination is down keeps one
// pending job in each partition; Cleanup rewrites those partitions with
// only their pending jobs, which keep their Seqs and order, and the store
// goes on as before: the jobs can be read, finished and dropped.
func TestPinnedPartitionCompacted(t *testing.T) {
	ctx := t.Context()
	s, _ := setup(t, Options{PartitionJobs: 1000})
	down := jobstore.Queue{Source: "web", Destination: "down"}
	ok := jobstore.Queue{Source: "web", Destination: "ok"}
	for i := range 5 {
		if _, err := s.Append(ctx, entries("web", []string{"down"}, fmt.Sprint("down", i), 1)); err != nil {
			t.Fatal(err)
		}
		es := entries("web", []string{"ok"}, fmt.Sprint("ok", i), 999)
		for i := range es {
			es[i].Event.Payload = []byte(strings.Repeat("x", 400))
		}
		if _, err := s.Append(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
	pinned, err := s.Pending(ctx, down, 0, 100)
	if err != nil || len(pinned) != 5 {
		t.Fatalf("Pending(down) = %d jobs, %v; want 5", len(pinned), err)
	}
	// ok delivers everything, the first half one Finish at a time.
	okJobs, err := s.Pending(ctx, ok, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, jobstore.Update{Finish: okJobs[:2500], Drops: []jobstore.Drop{{Queue: ok, Below: okJobs[len(okJobs)-1].Seq + 1}}}); err != nil {
		t.Fatal(err)
	}
	before := s.jobTablesSize(t)
	parts := s.countParts(t)
	if _, err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	after := s.jobTablesSize(t)
	t.Logf("job tables %d kB -> %d kB; partitions %d -> %d", before>>10, after>>10, parts, s.countParts(t))
	if after > before/3 {
		t.Errorf("job tables %d kB after compaction, %d kB before: want them to shrink", after>>10, before>>10)
	}
	got, err := s.Pending(ctx, down, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqs(got)) != fmt.Sprint(seqs(pinned)) {
		t.Fatalf("Pending(down) after compaction = Seqs %v, want %v", seqs(got), seqs(pinned))
	}
	for i := range got {
		if string(got[i].Event.Payload) != string(pinned[i].Event.Payload) || got[i].Event.MessageID != pinned[i].Event.MessageID {
			t.Errorf("job %d after compaction = %+v, want %+v", got[i].Seq, got[i].Event, pinned[i].Event)
		}
	}
	if n, err := s.Cleanup(ctx); err != nil || n != 0 {
		t.Errorf("second Cleanup dropped %d tables, %v; want nothing to do", n, err)
	}
	// The destination recovers: the jobs finish, the partitions go.
	if err := s.Apply(ctx, jobstore.Update{Finish: got}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Pending(ctx, down, 0, 100); len(got) != 0 {
		t.Errorf("Pending(down) after Finish = %d jobs, want 0", len(got))
	}
	if _, err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.countParts(t); n > 2 {
		t.Errorf("%d partitions left once drained, want at most 2", n)
	}
}

func seqs(jobs []jobstore.Job) []uint64 {
	s := make([]uint64, len(jobs))
	for i, j := range jobs {
		s[i] = j.Seq
	}
	return s
}

// TestDrainedTopPartitionRetired: the partition the Seq counter is in,
// once drained, is retired and dropped when it holds retireBytes, however
// few of its Seqs it has used, and kept while it is smaller.
func TestDrainedTopPartitionRetired(t *testing.T) {
	tests := []struct {
		name        string
		jobs        int
		payload     int
		wantDropped bool
	}{
		{"over retireBytes: dropped", 1500, 1000, true},
		{"small: kept for the next appends", 100, 100, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			s, _ := setup(t, Options{PartitionJobs: 1_000_000})
			q := jobstore.Queue{Source: "web", Destination: "hook"}
			es := entries("web", []string{"hook"}, "e", tt.jobs)
			for i := range es {
				es[i].Event.Payload = []byte(strings.Repeat("x", tt.payload))
			}
			if _, err := s.Append(ctx, es); err != nil {
				t.Fatal(err)
			}
			jobs, err := s.Pending(ctx, q, 0, tt.jobs)
			if err != nil || len(jobs) != tt.jobs {
				t.Fatalf("Pending = %d jobs, %v; want %d", len(jobs), err, tt.jobs)
			}
			if err := s.Apply(ctx, jobstore.Update{Finish: jobs}); err != nil {
				t.Fatal(err)
			}
			before := s.jobTablesSize(t)
			if _, err := s.Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
			var left int
			if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM job_parts WHERE lo <= $1", int64(jobs[len(jobs)-1].Seq)).Scan(&left); err != nil {
				t.Fatal(err)
			}
			t.Logf("job tables %d kB -> %d kB", before>>10, s.jobTablesSize(t)>>10)
			if dropped := left == 0; dropped != tt.wantDropped {
				t.Errorf("drained partition dropped = %v, want %v", dropped, tt.wantDropped)
			}
			// Appends go on either way.
			if _, err := s.Append(ctx, entries("web", []string{"hook"}, "after", 10)); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Pending(ctx, q, 0, 100); err != nil || len(got) != 10 {
				t.Fatalf("Pending after = %d jobs, %v; want 10", len(got), err)
			}
		})
	}
}
