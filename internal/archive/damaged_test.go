package archive

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// TestDamagedFile writes an archive file of three gzip members through
// the real writer, damages it, and checks that Scan returns the records of
// the intact members, moves the file aside as .bad, writes those records
// back in its place, says so at ERROR and counts it; and that the kept
// records replay.
func TestDamagedFile(t *testing.T) {
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	t0 := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	rec := func(id string) Record {
		return Record{Source: q.Source, Destination: q.Destination, MessageID: id, ReceivedAt: t0,
			ArchivedAt: t0.Add(4 * time.Hour), LastError: "HTTP 503",
			Event: []byte(`{"type":"track","event":"x","messageId":"` + id + `","pad":"` + strings.Repeat(id, 300) + `"}`)}
	}
	for _, c := range []struct {
		name   string
		damage func(b []byte, starts []int) []byte
		want   string // the messageIds kept
	}{
		{"sound", func(b []byte, _ []int) []byte { return b }, "abcdef"},
		// A crash in the middle of the last Write.
		{"torn last member", func(b []byte, s []int) []byte { return b[:s[2]+(len(b)-s[2])/2] }, "abcd"},
		// Bytes altered in the middle member: the members on either side stay.
		{"altered middle member", func(b []byte, s []int) []byte {
			for i := s[1] + 30; i < s[1]+38; i++ {
				b[i] ^= 0xff
			}
			return b
		}, "abef"},
		{"altered first header", func(b []byte, _ []int) []byte { b[0] = 0; return b }, "cdef"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			w := NewWriter(t.TempDir())
			w.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			path := w.Path(q, t0.Add(4*time.Hour))
			var starts []int
			for _, ids := range []string{"ab", "cd", "ef"} {
				fi, err := os.Stat(path)
				if err == nil {
					starts = append(starts, int(fi.Size()))
				} else {
					starts = append(starts, 0)
				}
				if err := w.Write(q, t0.Add(4*time.Hour), []Record{rec(ids[:1]), rec(ids[1:])}); err != nil {
					t.Fatal(err)
				}
			}
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			damaged := c.damage(bytes.Clone(orig), starts)
			if err := os.WriteFile(path, damaged, 0o644); err != nil {
				t.Fatal(err)
			}

			for scan := 1; scan <= 2; scan++ { // the second finds the repaired file
				if got := scanIDs(t, w, q, t0, t0.Add(time.Hour)); got != c.want {
					t.Errorf("scan %d returned %q, want %q", scan, got, c.want)
				}
			}
			bad, err := os.ReadFile(path + ".bad")
			if c.want == "abcdef" {
				if err == nil || logs.Len() > 0 || w.Damaged() != 0 {
					t.Errorf("a sound file was repaired: %v, %q, %d", err, logs.String(), w.Damaged())
				}
				return
			}
			if err != nil || !bytes.Equal(bad, damaged) {
				t.Errorf("the damaged file was not kept as %s.bad: %v", path, err)
			}
			if w.Damaged() != 1 {
				t.Errorf("Damaged() = %d, want 1", w.Damaged())
			}
			if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, path+".bad") ||
				!strings.Contains(l, "kept_records="+string(rune('0'+len(c.want)))) {
				t.Errorf("no ERROR line naming the file and what was kept:\n%s", l)
			}

			// The kept records replay.
			store := openJobs(t)
			r := &Replayer{Archive: w, Store: store, Now: time.Now, Logger: slog.New(slog.DiscardHandler)}
			n, err := r.Replay(t.Context(), q.Source, q.Destination, t0, t0.Add(time.Hour))
			if err != nil || n != len(c.want) {
				t.Errorf("Replay = %d, %v; want %d", n, err, len(c.want))
			}
		})
	}
}
