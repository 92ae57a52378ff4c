package delivery_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// downStore is a store whose reads and writes fail while down is set, as
// the PostgreSQL store's do while the database is unreachable.
type downStore struct {
	jobstore.Store
	down   atomic.Bool
	failed atomic.Int64 // calls refused while down
}

func (s *downStore) check() error {
	if s.down.Load() {
		s.failed.Add(1)
		return fmt.Errorf("database down: %w", jobstore.ErrUnavailable)
	}
	return nil
}

func (s *downStore) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.Store.Pending(ctx, q, after, limit)
}

func (s *downStore) Retries(ctx context.Context, q jobstore.Queue, until time.Time, limit int) ([]jobstore.Job, time.Time, error) {
	if err := s.check(); err != nil {
		return nil, time.Time{}, err
	}
	return s.Store.Retries(ctx, q, until, limit)
}

func (s *downStore) Apply(ctx context.Context, u jobstore.Update) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.Store.Apply(ctx, u)
}

// While the store is down the engine backs off its calls instead of
// spinning, archives nothing, and resumes on its own once the store is
// back: every job is delivered and the outcomes written while it was down
// are written then.
func TestStoreDownPausesAndResumes(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(start)
	inner := openStore(t, dir, clk)
	store := &downStore{Store: inner}
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	var entries []jobstore.Entry
	for i := range 300 {
		id := fmt.Sprintf("web-%d", i)
		entries = append(entries, jobstore.Entry{Event: event.Event{Source: "web", MessageID: id, Type: event.Track,
			ReceivedAt: start, Payload: []byte(`{}`)}, Destinations: []string{q.Destination}})
	}
	if _, err := inner.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	s := &scripted{url: srv.URL, tries: map[string]int{}}
	reports := make(chan delivery.Report, 1000)
	eng, err := delivery.New(delivery.Options{
		Store: store, Clock: clk, Seed: 1, Logger: quiet,
		Targets: []delivery.Target{{Name: q.Destination, Type: "test", Destination: decider{s}, Client: srv.Client(),
			Limits: delivery.Limits{Concurrency: 4, RetryWindow: time.Minute}}},
		Archive: archive.NewWriter(filepath.Join(dir, "archive")),
		Observe: func(r delivery.Report) { reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	store.down.Store(true)
	stop := run(eng)
	defer func() {
		stop()
		inner.Close()
	}()

	// Without time passing, one failed read and nothing more: no spinning.
	time.Sleep(100 * time.Millisecond)
	if n := store.failed.Load(); n == 0 || n > 2 {
		t.Fatalf("%d store calls while down and no time passed, want 1 or 2", n)
	}
	// Two minutes down, past the retry window: a call per backoff at most,
	// and no job archived or reported, since none could even be read.
	for range 120 {
		clk.Advance(time.Second)
		time.Sleep(time.Millisecond)
	}
	if n := store.failed.Load(); n > 2*120/int64(5)+10 {
		t.Errorf("%d store calls in 2 minutes down, want a few per 5s backoff", n)
	}
	select {
	case r := <-reports:
		t.Fatalf("report while the store is down: %+v", r)
	default:
	}

	store.down.Store(false)
	clk.Advance(10 * time.Second)
	delivered := 0
	timeout := time.After(20 * time.Second)
	for delivered < len(entries) {
		select {
		case r := <-reports:
			if r.End != delivery.EndDelivered {
				t.Fatalf("report %+v, want delivered", r)
			}
			delivered++
		case <-timeout:
			t.Fatalf("%d of %d delivered after the store came back", delivered, len(entries))
		}
	}
}
