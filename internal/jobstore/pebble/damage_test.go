package pebble

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fanout/fanout/internal/damagetest"
	"github.com/fanout/fanout/internal/jobstore"
)

// fillDamaged makes a store in dir the way a running fanout does: n jobs
// appended one synced Append at a time, then closed; then reopened (so the
// last WAL is written in the WAL-sync format a running store uses) for n
// more, flushed to sstables and blob files when flush is set. Each payload
// is large enough to be separated into a blob file.
func fillDamaged(t *testing.T, dir string, n int, flush bool) {
	t.Helper()
	for round := range 2 {
		s, err := Open(dir, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			e := entry(fmt.Sprintf("id-%d-%04d-%s", round, i, strings.Repeat("x", 200)))
			if _, err := s.Append(t.Context(), []jobstore.Entry{e}); err != nil {
				t.Fatal(err)
			}
		}
		if flush && round == 1 {
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDamagedDirectory builds each kind of damage for real (jobs written
// through the store, the store closed, a file's bytes flipped or cut) and
// checks what Open does with it: recover and say so, or refuse to start
// with a message that names the file and says what to do. See damage.go.
func TestDamagedDirectory(t *testing.T) {
	const n = 100
	type damageCase struct {
		name  string
		flush bool
		// pattern is the damaged file, the newest matching it; "" for
		// none. damage damages it.
		pattern string
		damage  func(t *testing.T, path string)
		// Either the store opens with want jobs and logs logs, or Open
		// fails with an error holding every string of refuse.
		want   int
		logs   string
		refuse []string
	}
	cases := []damageCase{{
		name: "clean",
		want: 2 * n,
	}, {
		name:  "clean, flushed",
		flush: true,
		want:  2 * n,
	}, {
		// A crash in the middle of the last write: Pebble replays up to
		// the tear, and the store says so. Only the torn job is lost, and
		// its Append never returned.
		name:    "torn WAL tail",
		pattern: "*.log",
		damage:  func(t *testing.T, p string) { damagetest.TruncateBy(t, p, 100) },
		want:    2*n - 1,
		logs:    "the last WAL ends in a torn write",
	}, {
		// Damage in the middle of the last WAL, before records that were
		// synced: Pebble alone would replay the first half and drop the
		// rest without a word.
		name:    "damaged WAL before synced records",
		pattern: "*.log",
		damage:  func(t *testing.T, p string) { damagetest.FlipBytes(t, p, 0.5) },
		refuse:  []string{"is unreadable at offset", "were synced up to offset", "truncate -s", "move it aside"},
	}, {
		// The same in a WAL that was not closed (its closing trailer cut
		// off, as after a crash): the records after the damage say how far
		// the WAL had been synced.
		name:    "damaged WAL before synced records, not closed",
		pattern: "*.log",
		damage: func(t *testing.T, p string) {
			damagetest.TruncateBy(t, p, recyclableHeader)
			damagetest.FlipBytes(t, p, 0.5)
		},
		refuse: []string{"is unreadable at offset", "were synced up to offset", "truncate -s", "move it aside"},
	}, {
		// Pebble's Open does not read sstables; the store's does.
		name:    "damaged sstable",
		flush:   true,
		pattern: "*.sst",
		damage:  func(t *testing.T, p string) { damagetest.FlipBytes(t, p, 0.3) },
		refuse:  []string{"checksum mismatch", "move it aside"},
	}, {
		name:    "truncated sstable",
		flush:   true,
		pattern: "*.sst",
		damage:  func(t *testing.T, p string) { damagetest.TruncateBy(t, p, 1000) },
		refuse:  []string{"size mismatch", "move it aside"},
	}}
	// Damage in the MANIFEST before its last record: Pebble refuses some on
	// its own, and takes others for a torn tail, opening without the
	// sstables listed after the damage (half the jobs, here). Damage inside
	// the last record looks like a torn tail to the store too (README's
	// table of damage says so); where the last record starts depends on
	// the build (Pebble's invariants, on under -race, change how many
	// edits the MANIFEST holds), so the cases stay in its first half.
	for _, at := range []float64{0.02, 0.1, 0.3, 0.5} {
		cases = append(cases, damageCase{
			name:    fmt.Sprintf("damaged MANIFEST at %.0f%%", at*100),
			flush:   true,
			pattern: "MANIFEST-*",
			damage:  func(t *testing.T, p string) { damagetest.FlipBytes(t, p, at) },
			refuse:  []string{"move it aside"},
		})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			fillDamaged(t, dir, n, c.flush)
			var file string
			if c.pattern != "" {
				file = damagetest.LastFile(t, dir, c.pattern)
				c.damage(t, file)
			}
			var logs bytes.Buffer
			s, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if c.refuse != nil {
				if err == nil {
					s.Close()
					t.Fatalf("Open of a store with a damaged %s succeeded, want a refusal", file)
				}
				for _, want := range append(c.refuse, dir) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Open error does not say %q:\n%v", want, err)
					}
				}
				if !strings.HasPrefix(c.name, "damaged MANIFEST") && !strings.Contains(err.Error(), file) {
					t.Errorf("Open error does not name %s:\n%v", file, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ids, _, err := storedIDs(s)
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) != c.want {
				t.Errorf("%d jobs after reopening, want %d", len(ids), c.want)
			}
			if c.logs == "" && logs.Len() > 0 {
				t.Errorf("a sound store logged:\n%s", logs.String())
			}
			if c.logs != "" && (!strings.Contains(logs.String(), c.logs) || !strings.Contains(logs.String(), file)) {
				t.Errorf("logs do not say %q naming %s:\n%s", c.logs, file, logs.String())
			}
		})
	}
}

// TestDamagedWALAdvice follows the refusal's advice, truncating the WAL
// where it says, and checks that the store then opens with the jobs that
// precede the damage.
func TestDamagedWALAdvice(t *testing.T) {
	dir := t.TempDir()
	fillDamaged(t, dir, 100, false)
	p := damagetest.LastFile(t, dir, "*.log")
	damagetest.FlipBytes(t, p, 0.5)
	_, err := Open(dir, Options{Logger: testLogger(t)})
	var at int64
	if err == nil {
		t.Fatal("Open succeeded")
	}
	if _, serr := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "truncate -s"):], "truncate -s %d", &at); serr != nil {
		t.Fatalf("no offset in %v: %v", err, serr)
	}
	if err := os.Truncate(p, at); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ids, _, err := storedIDs(s)
	if err != nil {
		t.Fatal(err)
	}
	// The first 100 were flushed when the store reopened; of the second
	// 100, those before the damage (about half) are kept.
	if len(ids) <= 100 || len(ids) >= 200 {
		t.Errorf("%d jobs after truncating, want the first 100 and some of the second", len(ids))
	}
}

// TestDamagedBlobFile documents the damage Open does not look for: job
// records live in blob files, which Open does not read (that would read
// every pending event). The read that meets the damage fails with an error
// naming the file's number, which delivery logs; the process goes on.
func TestDamagedBlobFile(t *testing.T) {
	dir := t.TempDir()
	fillDamaged(t, dir, 100, true)
	p := damagetest.LastFile(t, dir, "*.blob")
	damagetest.FlipBytes(t, p, 0.3)
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, _, err = storedIDs(s)
	num := strings.TrimSuffix(filepath.Base(p), ".blob")
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), "file "+num) {
		t.Fatalf("reading the jobs = %v, want a checksum mismatch in file %s", err, num)
	}
}

// TestWALTailAnyCut cuts a real WAL at every length and checks that
// walTail never panics, and never calls a prefix of a WAL damaged.
func TestWALTailAnyCut(t *testing.T) {
	dir := t.TempDir()
	fillDamaged(t, dir, 20, false)
	p := damagetest.LastFile(t, dir, "*.log")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var num uint32
	fmt.Sscanf(filepath.Base(p), "%d.log", &num)
	for n := range len(b) - recyclableHeader { // without the closing trailer
		if stop, synced := walTail(b[:n], num); synced >= 0 {
			t.Fatalf("a WAL cut at %d is called damaged at %d, synced to %d", n, stop, synced)
		}
	}
}
