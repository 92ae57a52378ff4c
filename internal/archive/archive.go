// Package archive keeps the jobs that ran out of retry window: gzip JSON
// Lines files under data_dir/archive, grouped by source, destination and the
// hour they were archived, so that nothing is dropped silently and an
// operator can read them later or replay them (Replayer) as new jobs.
package archive

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// Record is one line of an archive file.
type Record struct {
	Source      string          `json:"source"`
	Destination string          `json:"destination"`
	MessageID   string          `json:"messageId"`
	ReceivedAt  time.Time       `json:"receivedAt"`
	ArchivedAt  time.Time       `json:"archivedAt"`
	Attempts    int             `json:"attempts"`
	LastError   string          `json:"lastError"`
	Event       json.RawMessage `json:"event"`
}

// Writer appends records to archive files. It is safe for concurrent use.
type Writer struct {
	// Logger receives the report of a damaged file (see damaged.go).
	// Default slog.Default().
	Logger *slog.Logger

	dir     string
	mu      sync.Mutex
	guard   Guard
	damaged atomic.Int64
}

// Guard watches the disk the archive is written to (a diskspace.Watcher).
type Guard interface {
	// Err refuses a write while the disk is short of space: the caller
	// keeps the jobs and tries again later.
	Err() error
	// WriteFailed hears of every write that failed.
	WriteFailed(err error)
}

// SetGuard makes g watch every later Write. Call it before the first.
func (w *Writer) SetGuard(g Guard) { w.guard = g }

// NewWriter returns a writer for the archive under dir.
func NewWriter(dir string) *Writer { return &Writer{dir: dir} }

// Path returns the file that holds the records of q archived in the hour of t.
// Names are path-escaped so that any source or destination name is safe.
func (w *Writer) Path(q jobstore.Queue, t time.Time) string {
	return filepath.Join(w.dir, url.PathEscape(q.Source), url.PathEscape(q.Destination),
		t.UTC().Format("2006-01-02T15")+".jsonl.gz")
}

// Write appends the records of one queue archived at t, and syncs the file
// before it returns, so that the caller may then remove the jobs from the
// store. Each call appends one complete gzip member: a file is always a
// valid multi-member gzip stream, even after a crash mid-way through a
// later call (the torn member is the only loss, and its jobs are still in
// the store).
//
// A write that fails is cut off the file again, so that the file stays
// readable, and its error is told to the Guard.
func (w *Writer) Write(q jobstore.Queue, t time.Time, recs []Record) (err error) {
	if len(recs) == 0 {
		return nil
	}
	if w.guard != nil {
		if err := w.guard.Err(); err != nil {
			return fmt.Errorf("archive: %w", err)
		}
		defer func() {
			if err != nil {
				w.guard.WriteFailed(err)
			}
		}()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	path := w.Path(q, t)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if fi, serr := f.Stat(); serr == nil {
		defer func() {
			if err != nil {
				// A torn gzip member would make the whole file unreadable.
				os.Truncate(path, fi.Size())
			}
		}()
	}
	zw := gzip.NewWriter(f)
	enc := json.NewEncoder(zw)
	for i := range recs {
		if err := enc.Encode(&recs[i]); err != nil {
			f.Close()
			return fmt.Errorf("archive %s: %w", path, err)
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("archive %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("archive %s: %w", path, err)
	}
	return f.Close()
}

// Read returns the records in one archive file. A damaged file (a member
// torn by a crash mid-write, or altered bytes) still yields the records of
// every intact gzip member, with an error that describes the damage; Read
// leaves the file as it is (Scan repairs it).
func Read(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, damage := readRecover(b)
	if damage != nil {
		return recs, fmt.Errorf("archive %s: %w", path, damage)
	}
	return recs, nil
}

// Scan returns the records of q whose event was received in [from, to),
// oldest file first. A damaged file is repaired (see damaged.go): its
// intact records are returned, the rest is reported.
func (w *Writer) Scan(q jobstore.Queue, from, to time.Time) ([]Record, error) {
	dir := filepath.Dir(w.Path(q, from))
	names, err := filepath.Glob(filepath.Join(dir, "*.jsonl.gz"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names) // the names are hours, so this is time order
	// An event is archived after it was received, so files of hours before
	// from's hold none of the events asked for.
	first := from.UTC().Truncate(time.Hour).Format("2006-01-02T15") + ".jsonl.gz"
	var out []Record
	for _, name := range names {
		if filepath.Base(name) < first {
			continue
		}
		recs, err := w.read(name)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if !r.ReceivedAt.Before(from) && r.ReceivedAt.Before(to) {
				out = append(out, r)
			}
		}
	}
	return out, nil
}
