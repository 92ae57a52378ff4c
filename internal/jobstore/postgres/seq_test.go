package postgres

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/jobstore"
)

// TestReaderNeverSkipsASeq: two stores on one database (two nodes) append
// to one queue from several goroutines each, so that group commits of both
// overlap, while a reader pages through the queue as the engine does,
// always after the highest Seq it has read. Every acknowledged event must
// reach the reader: a Seq committed after a higher one was read would be
// passed over. And meta.last_seq is the committed counter: a snapshot that
// reads it sees every job up to it that will ever be.
func TestReaderNeverSkipsASeq(t *testing.T) {
	ctx := t.Context()
	a, dsn := setup(t, Options{PartitionJobs: 1000})
	b, err := Open(ctx, dsn, Options{PartitionJobs: 1000, CleanupInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	q := jobstore.Queue{Source: "web", Destination: "hook"}

	var mu sync.Mutex
	var acked []string
	var writers sync.WaitGroup
	for n, s := range []*Store{a, b} {
		for w := range 4 {
			writers.Go(func() {
				for c := range 30 {
					es := entries("web", []string{"hook"}, fmt.Sprintf("n%d-w%d-c%d", n, w, c), 1+(w*7+c)%13)
					if _, err := s.Append(ctx, es); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, e := range es {
						acked = append(acked, e.Event.MessageID)
					}
					mu.Unlock()
				}
			})
		}
	}
	stop := make(chan struct{})
	seen := map[string]bool{}
	var cursor uint64
	read := func() {
		for {
			jobs, err := a.Pending(ctx, q, cursor, 50)
			if err != nil {
				t.Error(err)
				return
			}
			for _, j := range jobs {
				if j.Seq <= cursor {
					t.Errorf("Pending(after %d) returned Seq %d", cursor, j.Seq)
				}
				seen[j.Event.MessageID] = true
				cursor = j.Seq
			}
			if len(jobs) < 50 {
				return
			}
		}
	}
	type counted struct{ last, jobs int64 }
	var snaps []counted
	countUpTo := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}, last int64) int64 {
		var n int64
		if err := q.QueryRow(ctx, "SELECT count(*) FROM jobs WHERE seq <= $1", last).Scan(&n); err != nil {
			t.Error(err)
		}
		return n
	}
	var reader sync.WaitGroup
	reader.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := pgx.BeginTxFunc(ctx, a.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
				var c counted
				if err := tx.QueryRow(ctx, "SELECT last_seq FROM meta").Scan(&c.last); err != nil {
					return err
				}
				c.jobs = countUpTo(tx, c.last)
				snaps = append(snaps, c)
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	})
	reader.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			read()
			time.Sleep(time.Millisecond)
		}
	})
	writers.Wait()
	close(stop)
	reader.Wait()
	read() // what committed after the reader's last page
	missed := 0
	for _, id := range acked {
		if !seen[id] {
			missed++
		}
	}
	if missed > 0 {
		t.Errorf("the paging reader passed over %d of %d acknowledged events", missed, len(acked))
	}
	for _, c := range snaps {
		if now := countUpTo(a.pool, c.last); now != c.jobs {
			t.Fatalf("a snapshot with last_seq %d saw %d jobs up to it; %d are there now", c.last, c.jobs, now)
		}
	}
	if len(snaps) == 0 {
		t.Error("no snapshot of the counter was taken")
	}
}

// TestNewPartitionAnalyzed: once a jobs partition's Seqs pass the first of
// analyzeMarks, the partition and its finished twin have planner
// statistics (reltuples is -1 until a table is first analyzed), so that
// Pending is not planned for an empty table. Close waits for the
// ANALYZEs asked for.
func TestNewPartitionAnalyzed(t *testing.T) {
	s, dsn := setup(t, Options{PartitionJobs: DefaultPartitionJobs})
	for b := range 11 {
		if _, err := s.Append(t.Context(), entries("web", []string{"hook"}, fmt.Sprintf("b%d", b), 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	for _, table := range []string{jobPartName(1), finishedPartName(1)} {
		var tuples float64
		if err := conn.QueryRow(t.Context(), "SELECT reltuples FROM pg_class WHERE relname = $1", table).Scan(&tuples); err != nil {
			t.Fatal(err)
		}
		if tuples < 0 {
			t.Errorf("%s has no statistics after 1,100 Seqs (reltuples %v)", table, tuples)
		}
	}
}
