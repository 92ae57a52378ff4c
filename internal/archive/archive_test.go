package archive

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

func TestWriteScan(t *testing.T) {
	w := NewWriter(t.TempDir())
	q := jobstore.Queue{Source: "web/app", Destination: "hook"} // a name that needs escaping
	t0 := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	rec := func(id string, received time.Time) Record {
		return Record{Source: q.Source, Destination: q.Destination, MessageID: id, ReceivedAt: received,
			ArchivedAt: received.Add(4 * time.Hour), LastError: "HTTP 503", Event: []byte(`{"messageId":"` + id + `"}`)}
	}
	// Two calls into the same hour's file (two gzip members) and one into the next.
	if err := w.Write(q, t0.Add(4*time.Hour), []Record{rec("a", t0), rec("b", t0.Add(time.Minute))}); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(q, t0.Add(4*time.Hour+time.Minute), []Record{rec("c", t0.Add(20*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(q, t0.Add(5*time.Hour), []Record{rec("d", t0.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		from, to time.Time
		want     string
	}{
		{t0, t0.Add(2 * time.Hour), "abcd"},
		{t0.Add(time.Minute), t0.Add(time.Hour), "bc"},
		{t0.Add(time.Hour), t0.Add(2 * time.Hour), "d"},
		{t0.Add(-time.Hour), t0, ""},
	}
	for _, tt := range tests {
		recs, err := w.Scan(q, tt.from, tt.to)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		for _, r := range recs {
			got += r.MessageID
		}
		if got != tt.want {
			t.Errorf("Scan(%v, %v) = %q, want %q", tt.from, tt.to, got, tt.want)
		}
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
