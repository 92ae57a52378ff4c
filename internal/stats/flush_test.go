package stats

import (
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/jobstore"
)

// savesCounted counts the writes a Backend is handed.
type savesCounted struct {
	Backend
	saves int
}

func (b *savesCounted) save(w *writes) error {
	b.saves++
	return b.Backend.save(w)
}

// Every change is written by the next Flush, and a Flush after it, with
// nothing new, writes nothing: what a cluster's views rely on when they ask
// every node to flush (internal/admin).
func TestFlushWritesChangesOnly(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	pb, err := openPebble(filepath.Join(t.TempDir(), "stats"), nil, slog.New(slog.DiscardHandler), at)
	if err != nil {
		t.Fatal(err)
	}
	b := &savesCounted{Backend: pb}
	s, err := Open(Options{Backend: b, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	changes := []struct {
		name   string
		change func()
	}{
		{"nothing yet", nil},
		{"events taken in", func() { ingestTracks(s, at, "a", "b", "c") }},
		{"a delivery", func() { attempt(s, at, "a", 1, delivery.EndDelivered, destinations.Delivered, 200, at) }},
		{"a failed attempt and its issue", func() { attempt(s, at, "b", 1, delivery.EndRetrying, destinations.Retryable, 503, at) }},
		{"a replay", func() { s.Replayed("web", "hook", 1) }},
		{"depths set to zero", func() { s.KeepDepth([]jobstore.Queue{}) }},
	}
	for _, c := range changes {
		before := b.saves
		want := 0
		if c.change != nil {
			c.change()
			want = 1
		}
		for range 2 {
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if got := b.saves - before; got != want {
			t.Errorf("%s: two Flushes wrote %d times, want %d", c.name, got, want)
		}
	}
}
