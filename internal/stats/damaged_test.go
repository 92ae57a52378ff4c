package stats

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/damagetest"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/router"
)

// TestDamagedDatabase writes stats through the real database, damages one
// of its files, and checks that Open moves the database aside as
// stats.bad-<time>, says so at ERROR, and starts with empty stats; and
// that a sound database keeps its counts.
func TestDamagedDatabase(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name    string
		pattern string // the file damaged; "" for none
		damage  func(t *testing.T, path string)
	}{
		{"sound", "", nil},
		{"damaged sstable", "*.sst", func(t *testing.T, p string) { damagetest.FlipBytes(t, p, 0.25) }},
		{"truncated sstable", "*.sst", func(t *testing.T, p string) { damagetest.TruncateBy(t, p, damagetest.Size(t, p)/2) }},
		{"damaged MANIFEST", "MANIFEST-*", func(t *testing.T, p string) { damagetest.FlipBytes(t, p, 0) }},
		// Damage that Pebble alone takes for a torn tail, opening without
		// the records after it: pebble.CheckDir finds it.
		{"MANIFEST damaged before valid records", "MANIFEST-*", func(t *testing.T, p string) { damagetest.FlipBytes(t, p, 0.1) }},
		{"closed WAL damaged", "*.log", func(t *testing.T, p string) { damagetest.FlipBytes(t, p, 0.5) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			dir := filepath.Join(t.TempDir(), "stats")
			open := func() (*Stats, error) {
				return Open(Options{Dir: dir, Now: func() time.Time { return at },
					Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			}
			s, err := open()
			if err != nil {
				t.Fatal(err)
			}
			var entries []jobstore.Entry
			var routes []router.Decision
			for _, id := range []string{"a", "b", "c"} {
				entries = append(entries, jobstore.Entry{Event: event.Event{Source: "web", MessageID: id, Type: event.Track,
					ReceivedAt: at, Payload: []byte(`{}`)}, Destinations: []string{"hook"}})
				routes = append(routes, router.Decision{To: []string{"hook"}})
			}
			s.ObserveIngest(ingest.Report{Source: "web", Status: 200, Accepted: entries, Routes: routes})
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			if c.pattern != "*.log" { // to an sstable, and an empty WAL
				if err := s.backend.(*pebbleBackend).db.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if c.pattern != "" {
				c.damage(t, damagetest.LastFile(t, dir, c.pattern))
			}

			s, err = open()
			if err != nil {
				t.Fatalf("Open of a damaged stats database = %v, want it moved aside", err)
			}
			defer s.Close()
			ov, err := s.Overview(Filter{From: at.Add(-time.Hour), To: at.Add(time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			bad, _ := filepath.Glob(dir + ".bad-*")
			if c.pattern == "" {
				if ov.Received != 3 || len(bad) != 0 || logs.Len() != 0 {
					t.Errorf("a sound database: received %d (want 3), moved aside %v, logged %q", ov.Received, bad, logs.String())
				}
				return
			}
			if ov.Received != 0 {
				t.Errorf("received %d after starting over, want 0", ov.Received)
			}
			want := dir + ".bad-20261122T100000Z"
			if len(bad) != 1 || bad[0] != want {
				t.Errorf("moved aside to %v, want %s", bad, want)
			}
			if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "moved aside") || !strings.Contains(l, want) {
				t.Errorf("no ERROR line naming %s:\n%s", want, l)
			}
		})
	}
}
