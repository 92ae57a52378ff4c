package postgres

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// TestCleanupAcrossStores: several stores on one database (the nodes of a
// cluster) running Cleanup at the same moment over drained partitions
// return no error, and between them drop each drained partition once.
// Without a lock they listed the same partitions and the later DROP (or
// the check before it) failed: table "jobs_p1" does not exist.
func TestCleanupAcrossStores(t *testing.T) {
	const nodes, rounds = 4, 5
	ctx := t.Context()
	now := time.Unix(1_700_000_000, 0)
	opts := Options{PartitionJobs: 100, Now: func() time.Time { return now }}
	first, dsn := setup(t, opts)
	stores := []*Store{first}
	for range nodes - 1 {
		opts.CleanupInterval = -1
		s, err := Open(ctx, dsn, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		stores = append(stores, s)
	}
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	for round := range rounds {
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

		start := make(chan struct{})
		var wg sync.WaitGroup
		dropped := make([]int, len(stores))
		errs := make([]error, len(stores))
		for i, s := range stores {
			wg.Go(func() {
				<-start
				dropped[i], errs[i] = s.Cleanup(ctx)
			})
		}
		close(start)
		wg.Wait()

		total := 0
		for i := range stores {
			if errs[i] != nil {
				t.Errorf("round %d: node %d: Cleanup: %v", round, i, errs[i])
			}
			total += dropped[i]
		}
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
		if got, err := first.Pending(ctx, q, 0, 1000); err != nil || len(got) != 0 {
			t.Fatalf("round %d: Pending after cleanup = %d jobs, %v; want 0", round, len(got), err)
		}
	}
}
