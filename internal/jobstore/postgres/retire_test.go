package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/jobstore"
)

// TestNoSeqsBelowARetiredCounter: a node's cleanup retires the drained
// partition the counter is in (retireTopPart: meta.last_seq moves to the
// partition's end, under seq_alloc's row lock) while another node's group
// waits for that lock to take its Seqs. The group must take Seqs after the
// moved counter: Seqs inside the retired partition would be below
// meta.last_seq while still in flight, and a cleanup that then finds the
// partition drained drops it, jobs acknowledged a moment later included.
// Reading meta in the statement that waited for the lock gave it the
// counter from before the move (its snapshot was taken before the wait).
func TestNoSeqsBelowARetiredCounter(t *testing.T) {
	ctx := t.Context()
	s, dsn := setup(t, Options{PartitionJobs: 1000})
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	if _, err := s.Append(ctx, entries("web", []string{"hook"}, "first", 5)); err != nil {
		t.Fatal(err)
	}
	var lo, hi int64
	if err := s.pool.QueryRow(ctx, `SELECT p.lo, p.hi FROM job_parts p, meta m
		WHERE m.last_seq >= p.lo AND m.last_seq < p.hi`).Scan(&lo, &hi); err != nil {
		t.Fatal(err)
	}

	// The retirement, as retireTopPart makes it, held open.
	other, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := tx.Exec(ctx, retireCounter, lo, hi)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("retire: %v, %d rows", err, tag.RowsAffected())
	}

	appended := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, entries("web", []string{"hook"}, "second", 5))
		appended <- err
	}()
	// Wait until the group waits for seq_alloc's row lock.
	for deadline := time.Now().Add(10 * time.Second); ; {
		var waiting bool
		if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the group never waited for the retirement's lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	jobs, err := s.Pending(ctx, q, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if j.Event.MessageID[:6] == "second" && int64(j.Seq) < hi {
			t.Errorf("job %s took Seq %d, inside the partition [%d, %d) retired meanwhile", j.Event.MessageID, j.Seq, lo, hi)
		}
	}
}

// TestNoPartitionsBelowTheCounter: once a cleanup has retired the counter
// and dropped the last partition, drained, the next append creates the
// partition its Seqs fall in, not every partition from Seq 1 up to it
// again (which a cleanup then drops again, a CREATE and a DROP TABLE per
// partition each time).
func TestNoPartitionsBelowTheCounter(t *testing.T) {
	ctx := t.Context()
	s, _ := setup(t, Options{PartitionJobs: 100})
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	for round := range 3 {
		if _, err := s.Append(ctx, entries("web", []string{"hook"}, fmt.Sprintf("r%d-", round), 5)); err != nil {
			t.Fatal(err)
		}
		var last, lowest int64
		if err := s.pool.QueryRow(ctx, `SELECT m.last_seq, (SELECT min(lo) FROM job_parts) FROM meta m`).Scan(&last, &lowest); err != nil {
			t.Fatal(err)
		}
		if want := 1 + (last-1)/100*100; lowest != want {
			t.Errorf("round %d: the lowest jobs partition starts at %d, want %d (the one holding Seq %d)", round, lowest, want, last)
		}
		jobs, err := s.Pending(ctx, q, 0, 100)
		if err != nil || len(jobs) != 5 {
			t.Fatalf("round %d: Pending: %d jobs, %v", round, len(jobs), err)
		}
		if err := s.Apply(ctx, jobstore.Update{Finish: jobs}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		var left int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM job_parts`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left != 0 {
			t.Fatalf("round %d: %d jobs partitions left after a cleanup of a drained store, want 0", round, left)
		}
	}
}
