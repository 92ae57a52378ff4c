package delivery_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// stopAtApply is a store that stops the engine (cancels Run's context)
// when the scheduler first writes outcomes, and then writes them: the
// shutdown arrives just as outcomes are gathered and on their way.
type stopAtApply struct {
	jobstore.Store
	once sync.Once
	stop context.CancelFunc
}

func (s *stopAtApply) Apply(ctx context.Context, u jobstore.Update) error {
	s.once.Do(s.stop)
	return s.Store.Apply(ctx, u)
}

// A shutdown that comes as the scheduler writes its outcomes writes them
// with a context of its own, not the cancelled one: every outcome is in
// the store once Run returns, and the clean stop logs no error. (The
// scheduler's flush used Run's context, failed with "context canceled",
// logged an ERROR and left the outcomes to the shutdown's flush.)
func TestShutdownWritesOutcomesWithoutError(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(start)
	inner := openStore(t, dir, clk)
	defer inner.Close()
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	const n = 5
	var entries []jobstore.Entry
	for i := range n {
		id := fmt.Sprintf("web-%d", i)
		entries = append(entries, jobstore.Entry{Event: event.Event{Source: "web", MessageID: id, Type: event.Track,
			ReceivedAt: start, Payload: []byte(`{}`)}, Destinations: []string{q.Destination}})
	}
	if _, err := inner.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := &stopAtApply{Store: inner, stop: cancel}
	var logs bytes.Buffer
	reports := make(chan delivery.Report, n)
	eng, err := delivery.New(delivery.Options{
		Store: store, Clock: clk, Seed: 1,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Targets: []delivery.Target{{Name: q.Destination, Type: "test", Destination: decider{&scripted{url: srv.URL, tries: map[string]int{}}},
			Client: srv.Client(), Limits: delivery.Limits{Concurrency: 1}}},
		Archive: archive.NewWriter(filepath.Join(dir, "archive")),
		Observe: func(r delivery.Report) { reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	eng.Run(ctx) // returns once the first write of outcomes has stopped it

	if got := len(reports); got != n {
		t.Fatalf("%d reports before the shutdown, want %d (one request of every job)", got, n)
	}
	if ids := pendingIDs(t, inner, q); len(ids) != 0 {
		t.Errorf("pending after shutdown: %v, want none: the delivered jobs' outcomes are lost", ids)
	}
	if logs.Len() != 0 {
		t.Errorf("a clean shutdown logged:\n%s", logs.String())
	}
}
