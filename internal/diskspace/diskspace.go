// Package diskspace keeps fanout off a full disk: a full disk is a 503 to
// the tracking API, never a crash.
//
// # Why this is needed
//
// Pebble cannot survive a failed write. Its WAL writer keeps the first
// write error for good (record.LogWriter's flusher error is sticky): the
// syncs waiting at that moment fail, and the next commit, whoever makes it
// (an Append, or the delivery engine's unsynced Apply), gets the error from
// LogWriter.WriteRecord and panics inside DB.commitWrite, holding the commit
// pipeline's mutex. A failed WAL rotation panics in DB.rotateWAL, and a
// failed MANIFEST write calls Logger.Fatalf. None of these can be recovered
// from in the process, so fanout must keep Pebble from meeting ENOSPC at
// all.
//
// # How
//
// Three layers, each for what the one before cannot catch:
//
//  1. The Watcher measures the free space of every directory fanout writes
//     to (the job store, the stats database, the archive) every Interval.
//     While any of them has less than MinFree, new events are refused
//     (Guard: Append fails with an error that wraps jobstore.ErrUnavailable,
//     which the tracking API answers with 503 and Retry-After) and archive
//     writes wait. Delivery goes on: its writes are small, and the jobs it
//     finishes are space that flushes and compactions give back.
//  2. Another process can fill the disk between two measurements. For that
//     the Watcher keeps a ballast file of BallastSize bytes in the data
//     directory, and wraps Pebble's filesystem with vfs.OnDiskFull (FS): the
//     first write that meets ENOSPC blocks every write of the databases,
//     the ballast is removed, and the write is retried in the space it
//     freed. The WAL and the flushes in flight finish; the Watcher is then
//     degraded, and refuses events until the ballast is back in place,
//     which takes MinFree + BallastSize of free space.
//  3. If there is no ballast left to give, the OnDiskFull callback waits,
//     with every database write blocked, until the space is there (or the
//     Watcher is closed): a stalled write is slow, a failed one is a crash.
//
// When space comes back (an operator deletes files, delivery drains),
// the next measurement restores the ballast and ingest resumes by itself.
package diskspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/jobstore"
)

// DefaultMinFree is the free space, in bytes, below which fanout stops
// taking events when storage.min_free is not set: 256 MB. It leaves room for
// the memtables that are flushing (up to 128 MB for the job store), the
// compactions that follow, and the stats and archive writes.
const DefaultMinFree int64 = 256 << 20

// DefaultInterval is how often free space is measured when
// Options.Interval is zero.
const DefaultInterval = 250 * time.Millisecond

// BallastName is the ballast file's name in the data directory.
const BallastName = ".ballast"

// maxBallast caps the default ballast size.
const maxBallast int64 = 64 << 20

// ErrLowSpace is returned while a watched directory has less free space than
// the reserve. It wraps jobstore.ErrUnavailable, so the tracking API answers
// it with 503.
var ErrLowSpace = fmt.Errorf("free disk space is below storage.min_free: %w", jobstore.ErrUnavailable)

// ErrDegraded is returned after a write met a full disk, until the space
// and the ballast are back. It wraps jobstore.ErrUnavailable.
var ErrDegraded = fmt.Errorf("a write found the disk full; waiting for free space: %w", jobstore.ErrUnavailable)

// Dir is one directory fanout writes to.
type Dir struct {
	// Name labels the directory in metrics and the admin API: jobs, stats,
	// archive.
	Name string
	// Path is the directory. It is created if missing.
	Path string
}

// Options configures a Watcher.
type Options struct {
	// Dirs are the directories whose filesystems are watched. Required.
	Dirs []Dir
	// MinFree is the free space, in bytes, that each directory's filesystem
	// keeps: below it events are refused. Default DefaultMinFree; it cannot
	// be negative.
	MinFree int64
	// Ballast is the path of the ballast file, the emergency reserve
	// released when a write meets a full disk. Empty: no ballast.
	Ballast string
	// BallastSize is the ballast's size in bytes. Default MinFree/4, at
	// most 64 MB; it cannot be negative.
	BallastSize int64
	// Interval is how often Run measures free space. Default
	// DefaultInterval.
	Interval time.Duration
	// Free returns the bytes available to fanout on path's filesystem.
	// Default: the operating system's (statfs). Tests inject their own.
	Free func(path string) (int64, error)
	// Clock times Run's measurements and stamps state changes. Default the
	// wall clock.
	Clock clock.Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if len(o.Dirs) == 0 {
		return errors.New("diskspace: Dirs is required")
	}
	if o.MinFree < 0 {
		return fmt.Errorf("diskspace: MinFree cannot be negative, got %d", o.MinFree)
	}
	if o.BallastSize < 0 {
		return fmt.Errorf("diskspace: BallastSize cannot be negative, got %d", o.BallastSize)
	}
	if o.MinFree == 0 {
		o.MinFree = DefaultMinFree
	}
	if o.BallastSize == 0 {
		o.BallastSize = min(o.MinFree/4, maxBallast)
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Free == nil {
		o.Free = osFree
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// osFree is the space available to an unprivileged writer on path's
// filesystem.
func osFree(path string) (int64, error) {
	u, err := vfs.Default.GetDiskUsage(path)
	if err != nil {
		return 0, err
	}
	return int64(u.AvailBytes), nil
}

// DirState is one watched directory in State.
type DirState struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// FreeBytes is the free space last measured; -1 when it could not be.
	FreeBytes int64 `json:"free_bytes"`
}

// State is what the admin API shows of the Watcher.
type State struct {
	// Accepting is false while events are refused.
	Accepting bool `json:"accepting"`
	// Degraded is true from a write that met a full disk until the space
	// and the ballast are back.
	Degraded bool `json:"degraded"`
	// Reason says why events are refused; empty while accepting.
	Reason string `json:"reason,omitempty"`
	// Since is when Accepting last changed (or the Watcher started).
	Since time.Time `json:"since"`
	// MinFreeBytes is the reserve.
	MinFreeBytes int64 `json:"min_free_bytes"`
	// BallastBytes is the size of the ballast held now: 0 after it was
	// released, until there is room for it again.
	BallastBytes int64 `json:"ballast_bytes"`
	// DiskFull counts the writes that met a full disk since start.
	DiskFull int64      `json:"disk_full"`
	Dirs     []DirState `json:"dirs"`
}

// Watcher watches free space and says whether writes may go on. It is safe
// for concurrent use.
type Watcher struct {
	opts Options
	log  *slog.Logger

	// refuse holds the error Err returns; nil while accepting. Read on
	// every request, so an atomic rather than mu.
	refuse atomic.Pointer[error]

	mu       sync.Mutex
	free     []int64 // per Dir, last measured; -1 unknown
	degraded bool
	ballast  int64 // size of the ballast held
	since    time.Time
	diskFull int64

	closed    chan struct{}
	closeOnce sync.Once
}

// New returns a Watcher, creates the directories, puts the ballast in place
// if there is room for it, and measures free space once.
func New(opts Options) (*Watcher, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	w := &Watcher{
		opts:   opts,
		log:    opts.Logger.With("component", "diskspace"),
		free:   make([]int64, len(opts.Dirs)),
		since:  opts.Clock.Now(),
		closed: make(chan struct{}),
	}
	for _, d := range opts.Dirs {
		if err := os.MkdirAll(d.Path, 0o755); err != nil {
			return nil, fmt.Errorf("diskspace: %w", err)
		}
	}
	if opts.Ballast != "" {
		// A ballast of the right size from a previous run is kept as is.
		if fi, err := os.Stat(opts.Ballast); err == nil && fi.Size() == opts.BallastSize {
			w.ballast = opts.BallastSize
		}
	}
	w.Check()
	return w, nil
}

// Err returns nil while writes of new events may go on, and otherwise
// ErrLowSpace or ErrDegraded, both wrapping jobstore.ErrUnavailable.
func (w *Watcher) Err() error {
	if p := w.refuse.Load(); p != nil {
		return *p
	}
	return nil
}

// Run measures free space every Interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := w.opts.Clock.NewTimer()
	defer t.Stop()
	for {
		t.Set(w.opts.Clock.Now().Add(w.opts.Interval))
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		w.Check()
	}
}

// Check measures free space now, puts the ballast back when there is room
// for it, and updates what Err returns.
func (w *Watcher) Check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	low := w.measureLocked()
	if w.opts.Ballast != "" && w.ballast == 0 && low >= w.opts.MinFree+w.opts.BallastSize {
		if err := w.createBallastLocked(); err != nil {
			w.log.Warn("ballast not created", "path", w.opts.Ballast, "err", err)
		} else {
			low = w.measureLocked()
		}
	}
	if w.degraded && low >= w.opts.MinFree && (w.opts.Ballast == "" || w.ballast > 0) {
		w.degraded = false
		w.log.Info("disk space is back after a full disk", "free_bytes", low)
	}
	var refuse error
	switch {
	case w.degraded:
		refuse = ErrDegraded
	case low < w.opts.MinFree:
		refuse = ErrLowSpace
	}
	w.setLocked(refuse, low)
}

// measureLocked measures every directory and returns the least free space.
// A directory that cannot be measured counts as having room: an error
// statting it says nothing about its space, and the writes themselves are
// still guarded by the ballast.
func (w *Watcher) measureLocked() int64 {
	low := int64(-1)
	for i, d := range w.opts.Dirs {
		f, err := w.opts.Free(d.Path)
		if err != nil {
			if w.free[i] != -1 {
				w.log.Warn("free space unknown", "dir", d.Path, "err", err)
			}
			w.free[i] = -1
			continue
		}
		w.free[i] = f
		if low < 0 || f < low {
			low = f
		}
	}
	if low < 0 {
		return w.opts.MinFree
	}
	return low
}

// setLocked makes Err return refuse, logging a change.
func (w *Watcher) setLocked(refuse error, free int64) {
	was := w.Err()
	if was == refuse {
		return
	}
	w.since = w.opts.Clock.Now()
	if refuse == nil {
		w.refuse.Store(nil)
		w.log.Info("free disk space above the reserve: taking events again", "free_bytes", free, "min_free", w.opts.MinFree)
		return
	}
	w.refuse.Store(&refuse)
	w.log.Warn("refusing events: answering 503", "reason", refuse.Error(), "free_bytes", free, "min_free", w.opts.MinFree)
}

// createBallastLocked allocates the ballast file in full (a sparse file
// would reserve nothing) and syncs it.
func (w *Watcher) createBallastLocked() error {
	f, err := os.OpenFile(w.opts.Ballast, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = allocate(f, w.opts.BallastSize)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(w.opts.Ballast)
		return err
	}
	w.ballast = w.opts.BallastSize
	w.log.Info("ballast in place", "path", w.opts.Ballast, "bytes", w.ballast)
	return nil
}

// releaseLocked removes the ballast and reports whether there was one.
func (w *Watcher) releaseLocked() bool {
	if w.ballast == 0 {
		return false
	}
	if err := os.Remove(w.opts.Ballast); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.log.Error("ballast not released", "path", w.opts.Ballast, "err", err)
		return false
	}
	w.log.Warn("disk full: ballast released so that the writes in flight finish", "path", w.opts.Ballast, "bytes", w.ballast)
	w.ballast = 0
	return true
}

// WriteFailed tells the Watcher that a write failed. A full disk (ENOSPC,
// EDQUOT) degrades the Watcher until space and ballast are back, so new
// events are refused meanwhile, and releases the ballast. Other errors (a
// permission, a missing directory) say nothing about space and are left to
// the caller.
func (w *Watcher) WriteFailed(err error) {
	if !isENOSPC(err) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.degradeLocked(err)
	w.releaseLocked()
}

func (w *Watcher) degradeLocked(err error) {
	w.diskFull++
	if !w.degraded {
		w.log.Error("storage degraded: refusing events until there is room again", "err", err)
	}
	w.degraded = true
	w.setLocked(ErrDegraded, -1)
}

// FS wraps fs so that a write that meets a full disk releases the ballast
// and is retried (vfs.OnDiskFull), instead of failing inside Pebble. Give
// it to every Pebble database under the watched directories.
func (w *Watcher) FS(fs vfs.FS) vfs.FS {
	return vfs.OnDiskFull(fs, w.onDiskFull)
}

// onDiskFull is the OnDiskFull callback. Every database write waits
// while it runs; when it returns, the write that met ENOSPC is retried once,
// and fails for good (a crash inside Pebble) if there is still no room. So
// with no ballast left to release it waits until there is room, or until
// the Watcher is closed.
func (w *Watcher) onDiskFull() {
	w.mu.Lock()
	w.degradeLocked(syscall.ENOSPC)
	released := w.releaseLocked()
	w.mu.Unlock()
	if released {
		return
	}
	need := max(min(w.opts.BallastSize, w.opts.MinFree), 1<<20)
	w.log.Error("disk full and no ballast left: database writes wait for free space", "need_bytes", need)
	t := w.opts.Clock.NewTimer()
	defer t.Stop()
	for {
		w.mu.Lock()
		low := w.measureLocked()
		w.mu.Unlock()
		if low >= need {
			w.log.Info("free space for the waiting writes", "free_bytes", low)
			return
		}
		t.Set(w.opts.Clock.Now().Add(w.opts.Interval))
		select {
		case <-w.closed:
			return
		case <-t.C():
		}
	}
}

// Close releases writes waiting for space; they then fail. Call it once the
// databases are closed or when giving up.
func (w *Watcher) Close() {
	w.closeOnce.Do(func() { close(w.closed) })
}

// State returns what the admin API shows.
func (w *Watcher) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := State{
		Degraded:     w.degraded,
		Since:        w.since,
		MinFreeBytes: w.opts.MinFree,
		BallastBytes: w.ballast,
		DiskFull:     w.diskFull,
		Accepting:    true,
	}
	if err := w.Err(); err != nil {
		s.Accepting = false
		s.Reason = err.Error()
	}
	for i, d := range w.opts.Dirs {
		s.Dirs = append(s.Dirs, DirState{Name: d.Name, Path: d.Path, FreeBytes: w.free[i]})
	}
	return s
}

// isENOSPC reports whether err says the disk is full.
func isENOSPC(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// writeZeros writes size zero bytes to f.
func writeZeros(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for size > 0 {
		k := int(min(size, int64(len(buf))))
		if _, err := f.Write(buf[:k]); err != nil {
			return err
		}
		size -= int64(k)
	}
	return nil
}
