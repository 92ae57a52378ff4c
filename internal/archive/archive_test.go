package archive

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

func TestReplay(t *testing.T) {
	w := NewWriter(t.TempDir())
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	t0 := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	var recs []Record
	for i := range replayChunk + 1 { // two Appends
		recs = append(recs, Record{Source: q.Source, Destination: q.Destination, MessageID: fmt.Sprint("m", i),
			ReceivedAt: t0, Event: []byte(`{"type":"track","receivedAt":"2026-11-22T10:30:00Z"}`)})
	}
	if err := w.Write(q, t0.Add(4*time.Hour), recs); err != nil {
		t.Fatal(err)
	}
	store := openJobs(t)
	now := t0.Add(5 * time.Hour)
	var chunks []int
	r := &Replayer{Archive: w, Store: store, Now: func() time.Time { return now },
		Replayed: func(source, destination string, n int) { chunks = append(chunks, n) }, Logger: slog.New(slog.DiscardHandler)}
	// Replayed events pass deduplication: twice is twice.
	for range 2 {
		n, err := r.Replay(t.Context(), q.Source, q.Destination, t0, t0.Add(time.Hour))
		if err != nil || n != len(recs) {
			t.Fatalf("Replay = %d, %v; want %d", n, err, len(recs))
		}
	}
	if want := []int{replayChunk, 1, replayChunk, 1}; !slices.Equal(chunks, want) {
		t.Errorf("Replayed chunks = %v, want %v", chunks, want)
	}
	jobs, err := store.Pending(t.Context(), q, 0, 3*len(recs))
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2*len(recs) {
		t.Fatalf("%d jobs pending, want %d", len(jobs), 2*len(recs))
	}
	j := jobs[0].Event
	if j.MessageID != "m0" || j.Type != "track" || !j.ReceivedAt.Equal(now) || string(j.Payload) != string(recs[0].Event) {
		t.Errorf("replayed job = %+v", j)
	}
}

type guard struct {
	refuse error
	failed []error
}

func (g *guard) Err() error            { return g.refuse }
func (g *guard) WriteFailed(err error) { g.failed = append(g.failed, err) }

// A guard that refuses (disk short of space) keeps the write off the disk,
// and the caller keeps its jobs.
func TestGuardRefuses(t *testing.T) {
	w := NewWriter(t.TempDir())
	g := &guard{refuse: errors.New("free disk space is below storage.min_free")}
	w.SetGuard(g)
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	now := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	recs := []Record{{Source: "web", Destination: "hook", MessageID: "a", ReceivedAt: now, Event: []byte(`{}`)}}
	if err := w.Write(q, now, recs); !errors.Is(err, g.refuse) {
		t.Fatalf("Write = %v, want the guard's refusal", err)
	}
	if _, err := os.Stat(w.Path(q, now)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("archive file written though the guard refused: %v", err)
	}
	g.refuse = nil
	if err := w.Write(q, now, recs); err != nil {
		t.Fatal(err)
	}
	if len(g.failed) != 0 {
		t.Errorf("WriteFailed heard %v", g.failed)
	}
}
