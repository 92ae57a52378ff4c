package postgres

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// setupNodes opens n stores on one fresh database, as the nodes of a
// cluster, with partitions of 100 Seqs. All but the first have one
// connection: a step of Cleanup must not need a second one.
func setupNodes(t *testing.T, n int) []*Store {
	t.Helper()
	now := time.Unix(1_700_000_000, 0)
	opts := Options{PartitionJobs: 100, Now: func() time.Time { return now }}
	first, dsn := setup(t, opts)
	stores := []*Store{first}
	for range n - 1 {
		opts.CleanupInterval, opts.MaxConns = -1, 1
		s, err := Open(t.Context(), dsn, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		stores = append(stores, s)
	}
	return stores
}

// cleanupAll runs Cleanup on every store at the same moment and returns
// the tables each dropped, failing the test on any error.
func cleanupAll(t *testing.T, stores []*Store) (dropped []int, total int) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	dropped = make([]int, len(stores))
	errs := make([]error, len(stores))
	for i, s := range stores {
		wg.Go(func() {
			<-start
			dropped[i], errs[i] = s.Cleanup(t.Context())
		})
	}
	close(start)
	wg.Wait()
	for i := range stores {
		if errs[i] != nil {
			t.Errorf("node %d: Cleanup: %v", i, errs[i])
		}
		total += dropped[i]
	}
	return dropped, total
}

// TestCleanupAcrossStores: several stores on one database (the nodes of a
// cluster) running Cleanup at the same moment over drained partitions
// return no error, and between them drop each drained partition once.
// Without a lock they listed the same partitions and the later DROP (or
// the check before it) failed: table "jobs_p1" does not exist.
func TestCleanupAcrossStores(t *testing.T) {
	ctx := t.Context()
	stores := setupNodes(t, 4)
	first := stores[0]
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	for round := range 5 {
		for i := range 5 {
			if _, err := first.Append(ctx, entries("web", []string{"hook"}, fmt.Sprint("r", round, "b", i), 50)); err != nil {
				t.Fatal(err)
			}
		}
		jobs, err := first.Pending(ctx, q, 0, 1000)
		if err != nil || len(jobs) != 250 {
			t.Fatalf("round %d: Pending = %d jobs, %v; want 250", round, len(jobs), err)
		}
		if err := first.Apply(ctx, jobstore.Update{Drops: []jobstore.Drop{{Queue: q, Below: jobs[len(jobs)-1].Seq + 1}}}); err != nil {
			t.Fatal(err)
		}
		before := first.countParts(t)
		dropped, total := cleanupAll(t, stores)
		var last int64
		if err := first.pool.QueryRow(ctx, "SELECT last_seq FROM meta").Scan(&last); err != nil {
			t.Fatal(err)
		}
		var below int
		if err := first.pool.QueryRow(ctx, "SELECT count(*) FROM job_parts WHERE lo <= $1", last).Scan(&below); err != nil {
			t.Fatal(err)
		}
		after := first.countParts(t)
		if below != 0 || total != 2*(before-after) {
			t.Fatalf("round %d: partitions %d -> %d (%d left at or below the counter %d), nodes dropped %v tables; want every drained partition dropped once (2 tables each)",
				round, before, after, below, last, dropped)
		}
	}
}

// TestCompactionAcrossStores: nodes cleaning up at the same moment
// partitions that each hold one pending job compact each partition once,
// and the pending jobs stay readable.
func TestCompactionAcrossStores(t *testing.T) {
	ctx := t.Context()
	stores := setupNodes(t, 4)
	first := stores[0]
	hook := jobstore.Queue{Source: "web", Destination: "hook"}
	crm := jobstore.Queue{Source: "web", Destination: "crm"}
	// Seqs 1 to 300: partitions from 1, 101 and 201 (below the counter),
	// each ending with one job for crm.
	for i := range 3 {
		if _, err := first.Append(ctx, entries("web", []string{"hook"}, fmt.Sprint("h", i), 99)); err != nil {
			t.Fatal(err)
		}
		if _, err := first.Append(ctx, entries("web", []string{"crm"}, fmt.Sprint("c", i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	jobs, err := first.Pending(ctx, hook, 0, 1000)
	if err != nil || len(jobs) != 297 {
		t.Fatalf("Pending(hook) = %d jobs, %v; want 297", len(jobs), err)
	}
	if err := first.Apply(ctx, jobstore.Update{Drops: []jobstore.Drop{{Queue: hook, Below: jobs[len(jobs)-1].Seq + 1}}}); err != nil {
		t.Fatal(err)
	}
	before := first.countParts(t)
	if dropped, total := cleanupAll(t, stores); total != 3*2 {
		t.Errorf("nodes dropped %v tables, want 6 between them: 3 partitions compacted once each", dropped)
	}
	if after := first.countParts(t); after != before {
		t.Errorf("partitions %d -> %d, want all kept (compacted)", before, after)
	}
	if got, err := first.Pending(ctx, crm, 0, 100); err != nil || len(got) != 3 {
		t.Errorf("Pending(crm) after compaction = %d jobs, %v; want 3", len(got), err)
	}
}
