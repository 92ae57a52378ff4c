package postgres

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/jobstore"
)

// Connections cut while Appends commit (pg_terminate_backend, as a
// failover or a proxy would): every Append that returned nil is stored, and
// every one that failed says jobstore.ErrUnavailable, so that the tracking
// API answers 503 and never a 200 for what was not committed. The store
// goes on by itself on new connections.
func TestConnectionLostMidCommit(t *testing.T) {
	s, dsn := setup(t, Options{Logger: slog.New(slog.DiscardHandler)})
	ctx := t.Context()
	killer, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer killer.Close(ctx)
	stop := make(chan struct{})
	var killed atomic.Int64
	var kwg sync.WaitGroup
	kwg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			tag, err := killer.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid()`)
			if err == nil {
				killed.Add(tag.RowsAffected())
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	const writers, appends = 6, 40
	var mu sync.Mutex
	var stored []string
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for a := range appends {
				es := entries("web", []string{"hook"}, fmt.Sprintf("w%d-a%d", w, a), 10)
				if _, err := s.Append(ctx, es); err != nil {
					if !errors.Is(err, jobstore.ErrUnavailable) {
						t.Errorf("Append with its connection cut = %v, want jobstore.ErrUnavailable", err)
					}
					failed.Add(1)
					continue
				}
				mu.Lock()
				for _, e := range es {
					stored = append(stored, e.Event.MessageID)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stop)
	kwg.Wait()

	q := jobstore.Queue{Source: "web", Destination: "hook"}
	have := map[string]bool{}
	var after uint64
	for {
		jobs, err := s.Pending(ctx, q, after, 1000)
		if err != nil {
			t.Fatalf("Pending once the connections are left alone: %v", err)
		}
		for _, j := range jobs {
			have[j.Event.MessageID] = true
			after = j.Seq
		}
		if len(jobs) < 1000 {
			break
		}
	}
	lost := 0
	for _, id := range stored {
		if !have[id] {
			lost++
		}
	}
	t.Logf("%d backends terminated; %d Appends failed, %d events acknowledged, %d lost", killed.Load(), failed.Load(), len(stored), lost)
	if lost > 0 {
		t.Errorf("%d acknowledged events are not stored", lost)
	}
	if len(stored) == 0 {
		t.Errorf("no Append succeeded")
	}
	// And it goes on: a new Append after the cuts is stored.
	if _, err := s.Append(ctx, entries("web", []string{"hook"}, "after", 1)); err != nil {
		t.Errorf("Append after the cuts: %v", err)
	}
}
