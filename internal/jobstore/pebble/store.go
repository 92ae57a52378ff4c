package pebble

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/groupcommit"
)

// Compile-time check that Store implements the interface.
var _ jobstore.Store = (*Store)(nil)

// ErrClosed is returned by every call on a closed Store. It wraps
// jobstore.ErrUnavailable, because to the tracking API a closed store is one
// that cannot take writes.
var ErrClosed = fmt.Errorf("jobstore/pebble: closed: %w", jobstore.ErrUnavailable)

// Options configures a Store. The zero value is ready to use.
type Options struct {
	// DedupeWindow is how long a (source, messageId) pair is remembered: an
	// event appended less than DedupeWindow after the same pair was stored is
	// a duplicate. Default jobstore.DefaultDedupeWindow (24h); it cannot be
	// negative.
	DedupeWindow time.Duration
	// Now is the clock used for the dedupe window. Default time.Now; tests
	// inject a fake one so that they never sleep.
	Now func() time.Time
	// Logger receives the store's and Pebble's log lines. Default
	// slog.Default().
	Logger *slog.Logger
	// Applied, when set, hears of the jobs of every Append call (see
	// jobstore.AppliedFunc) as soon as its group is applied and readable,
	// while its fsync runs, and before Append returns. Delivery can so start while the fsync
	// runs instead of after it: the fsync of a large group takes
	// milliseconds that would otherwise be added to every event's latency.
	// If the fsync then fails, Append fails and the client sends the events
	// again: a duplicate, which at-least-once delivery allows.
	Applied jobstore.AppliedFunc
	// FS is the filesystem the database is written through. Default: the
	// operating system's. The server gives a diskspace.Watcher's, which
	// releases a ballast when a write meets a full disk.
	FS vfs.FS

	// fs replaces the operating system's filesystem in tests (a crashable
	// in-memory one that forgets unsynced writes).
	fs vfs.FS
}

func (o *Options) setDefaults() error {
	if o.DedupeWindow < 0 {
		return fmt.Errorf("DedupeWindow cannot be negative, got %s", o.DedupeWindow)
	}
	if o.DedupeWindow == 0 {
		o.DedupeWindow = jobstore.DefaultDedupeWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Store is the embedded job store: a Pebble database in one directory. See
// the package documentation for its key layout.
type Store struct {
	db   *pebbledb.DB
	opts Options
	log  *slog.Logger

	// appends is the group committer of Append calls (see commitGroup);
	// synced carries its applied groups to the syncer, which closes
	// syncerDone once it has answered them all.
	appends    *groupcommit.Committer[*appendReq]
	synced     chan *group
	syncerDone chan struct{}
	// closing is closed when Close begins: loadFilter stops.
	closing chan struct{}
	// filterDone is closed when loadFilter has returned.
	filterDone chan struct{}
	closeOnce  sync.Once

	// mu keeps reads and Apply off the database while Close closes it
	// (Pebble panics on a closed DB).
	mu     sync.RWMutex
	closed bool

	// filter spares Append the Pebble lookups of new messageIds. Made by
	// Open; the committer and loadFilter add to it.
	filter *dedupeFilter

	// appliedGen is the number of the last group applied to the database
	// (visible to reads). Append notes it before its own dedupe lookups.
	appliedGen atomic.Uint64

	// Owned by the committer goroutine.
	lastSeq       uint64 // highest Seq assigned, persisted in every batch
	dedupeDropped uint64 // dedupe buckets below this were range-deleted
	gen           uint64 // number of the last group built
	recent        recentIDs

	// stepped counts the points that iterators of Pending, Retries and
	// Queues stepped over, so a test can check that drained jobs are not
	// iterated.
	stepped atomic.Uint64
	// dedupeSeeks counts the dedupe lookups that went to Pebble, so a test
	// can check that the filter spares the lookups of new messageIds.
	dedupeSeeks atomic.Uint64

	// broken holds the first error a write met, wrapped as unavailable.
	// Pebble's WAL errors are sticky and the next commit after one panics
	// inside Pebble (DB.commitWrite), so once it is set no batch is
	// committed again: Append and Apply fail until the store is reopened.
	broken atomic.Pointer[error]
}

// failed returns the error that broke the store, or nil.
func (s *Store) failed() error {
	if p := s.broken.Load(); p != nil {
		return *p
	}
	return nil
}

// fail marks the store broken by err, an unavailable error, and logs it the
// first time.
func (s *Store) fail(err error) {
	if s.broken.CompareAndSwap(nil, &err) {
		s.log.Error("write failed: the store takes no more writes until it is reopened", "err", err)
	}
}

// Open opens the store in dir, creating it if needed, and starts its
// committer. Close releases it.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("jobstore/pebble: %w", err)
	}
	log := opts.Logger.With("component", "jobstore")
	fs := opts.fs
	if fs == nil {
		fs = opts.FS
	}
	// A damaged directory: see damage.go.
	if err := checkWAL(fs, dir, log); err != nil {
		return nil, damaged(dir, err)
	}
	po := pebbleOptions(opts.Logger.With("component", "jobstore.pebble"), fs)
	po.EventListener = corruptionListener(log)
	db, err := pebbledb.Open(dir, po)
	if err != nil {
		return nil, damaged(dir, fmt.Errorf("jobstore/pebble: open %s: %w", dir, err))
	}
	if err := verifyTables(db); err != nil {
		db.Close()
		return nil, damaged(dir, fmt.Errorf("jobstore/pebble: open %s: %w", dir, err))
	}
	s := &Store{
		db:         db,
		opts:       opts,
		log:        log,
		closing:    make(chan struct{}),
		filterDone: make(chan struct{}),
		recent:     newRecentIDs(recentGroups),
	}
	v, closer, err := db.Get(metaSeqKey)
	switch {
	case errors.Is(err, pebbledb.ErrNotFound):
	case err != nil:
		db.Close()
		return nil, fmt.Errorf("jobstore/pebble: open %s: read seq: %w", dir, err)
	default:
		if len(v) != 8 {
			closer.Close()
			db.Close()
			return nil, fmt.Errorf("jobstore/pebble: open %s: %w: seq record has %d bytes", dir, errCorrupt, len(v))
		}
		s.lastSeq = binary.BigEndian.Uint64(v)
		closer.Close()
	}
	s.filter = newDedupeFilter(dedupeBucket(opts.Now().Add(-opts.DedupeWindow)))
	if err := s.startCommits(); err != nil {
		db.Close()
		return nil, fmt.Errorf("jobstore/pebble: open %s: %w", dir, err)
	}
	go s.loadFilter()
	return s, nil
}

// loadFilter reads the stored dedupe records of the window's buckets, and
// of any newer ones, into the filter, and then lets it answer lookups. It
// runs beside the committer, so that a store with millions of records (2.5 s
// for 5,000,000) takes requests at once: until the filter is loaded every
// lookup goes to Pebble, as it would without a filter. A record is not
// missed: the committer adds to the filter every record it writes, and the
// scan, which starts after the filter was made, sees every record written
// before it starts.
func (s *Store) loadFilter() {
	defer close(s.filterDone)
	start := time.Now()
	n, err := s.scanDedupe()
	switch {
	case errors.Is(err, ErrClosed):
	case err != nil:
		s.log.Error("dedupe filter not loaded: every lookup goes to the store", "err", err)
	default:
		s.filter.setLoaded()
		if n > 0 {
			s.log.Info("dedupe filter loaded", "records", n, "bytes", s.filter.size(), "took", time.Since(start).Round(time.Millisecond))
		}
	}
}

// scanDedupe adds the stored dedupe records to the filter and returns how
// many it read, or ErrClosed if the store began to close meanwhile.
func (s *Store) scanDedupe() (n int, err error) {
	it, err := s.db.NewIter(&pebbledb.IterOptions{
		LowerBound: dedupeBucketStart(s.filter.scannedFrom),
		UpperBound: prefixEnd([]byte{prefixDedupe}),
	})
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}()
	var keys [][]byte
	bucket := uint64(0)
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) < dedupeKeyHead {
			return n, fmt.Errorf("%w: dedupe key %q", errCorrupt, k)
		}
		// One bucket's keys at a time, a few thousand per lock.
		if b := dedupeKeyBucket(k); b != bucket || len(keys) == 4096 {
			s.filter.add(bucket, keys)
			keys, bucket = keys[:0], b
			select {
			case <-s.closing:
				return n, ErrClosed
			default:
			}
		}
		keys = append(keys, append([]byte(nil), filterKey(k)...))
		n++
	}
	s.filter.add(bucket, keys)
	return n, nil
}

// Memtable sizing; see pebbleOptions.
const (
	memTableSize = 32 << 20
	memTables    = 4
)

// minSeparatedValue is the smallest value stored in a blob file: every job
// record (an event is rarely under 200 bytes), no dedupe record.
const minSeparatedValue = 128

// pebbleOptions tunes Pebble for a write-heavy queue: most jobs are written,
// read once soon after and deleted, often before their memtable is flushed.
func pebbleOptions(log *slog.Logger, fs vfs.FS) *pebbledb.Options {
	o := &pebbledb.Options{
		FS:                 fs, // nil: the OS filesystem
		FormatMajorVersion: pebbledb.FormatNewest,
		Logger:             Logger{Log: log},
		// A large memtable lets a job be appended, delivered and deleted
		// while it is still in memory: the flush then drops its record,
		// which the newer deletion shadows, and writes only the small
		// tombstone (or nothing, under a Drop's range). 32 MB holds about
		// 80,000 jobs of 400 bytes.
		MemTableSize: memTableSize,
		// Up to 4 memtables (one mutable, three flushing) absorb a burst
		// before writes stall, at a bounded 128 MB.
		MemTableStopWritesThreshold: memTables,
		// Start compacting L0 early (the default), but stall writes only much
		// later than the default 12 sublevels: a write stall is a 503 to every
		// client, while a deep L0 only slows reads, which are few here.
		L0CompactionThreshold: 4,
		L0StopWritesThreshold: 32,
		// L1 a few memtables large, so that an L0 compaction has room to
		// land before L1 itself must be compacted.
		LBaseMaxBytes: 128 << 20,
		// Pebble charges memtables to the block cache, so the cache must be
		// larger than the memtables in use or nothing is cached at all (with
		// a 64 MB cache and a 64 MB memtable we measured zero hits: every
		// dedupe lookup re-read and re-checksummed filter blocks from disk,
		// halving Append throughput). Sized for the two memtables of steady
		// state (one filling, one flushing) plus 64 MB of blocks, mostly the
		// filter and index blocks of the dedupe lookups. Not for all four:
		// the cache fills up whenever a backlog is read back from disk, and
		// it is most of the process's memory (the backlog benchmark's peak
		// RSS went from 323 to under 300 MB with this).
		CacheSize: 2*memTableSize + 64<<20,
		// Two cores: one compaction normally, a second one when L0 backs
		// up, leaving a core for ingest and delivery.
		CompactionConcurrencyRange: func() (int, int) { return 1, 2 },
	}
	// Job records go to blob files when their memtable flushes, and only
	// their keys and a reference take part in compactions after that. A
	// backlog behind a down destination is nearly all record bytes, written
	// once and read once: without separation every compaction that the
	// dedupe records' random keys cause rewrites them, level after level,
	// taking a core from delivery while the backlog only waits. Dedupe
	// records and the Seq mark are 8 bytes and stay inline.
	o.Experimental.ValueSeparationPolicy = func() pebbledb.ValueSeparationPolicy {
		return pebbledb.ValueSeparationPolicy{
			Enabled:               true,
			MinimumSize:           minSeparatedValue,
			MaxBlobReferenceDepth: 10,
			RewriteMinimumAge:     5 * time.Minute,
			TargetGarbageRatio:    0.2,
		}
	}
	// Bloom filters on every level, L0 included (Pebble's default is none):
	// every appended event makes one or two dedupe point lookups, nearly all
	// of them for keys that do not exist, and a filter answers those without
	// reading a data block.
	for i := range o.Levels {
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return o
}

// unavailable wraps an error from a write so that errors.Is finds both
// jobstore.ErrUnavailable and the cause.
func unavailable(op string, err error) error {
	return fmt.Errorf("jobstore/pebble: %s: %w: %w", op, jobstore.ErrUnavailable, err)
}

// readLock takes the read side of mu and fails when the store is closed.
func (s *Store) readLock() error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// closeIter closes it, adds its stepped-over points to s.stepped and returns
// the first of the iterator's error and err.
func (s *Store) closeIter(it *pebbledb.Iterator, err error) error {
	st := it.Stats()
	s.stepped.Add(st.InternalStats.PointCount + st.InternalStats.PointsCoveredByRangeTombstones)
	if ierr := it.Error(); err == nil && ierr != nil {
		err = ierr
	}
	if cerr := it.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// Pending returns up to limit pending jobs of q with Seq > after, in Seq
// order. Rescheduled and finished jobs are point-deleted, so the iterator
// skips them itself.
func (s *Store) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	if err := s.readLock(); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	it, err := s.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
		LowerBound: pendingKey(q, after+1),
		UpperBound: prefixEnd(queuePrefix(prefixPending, q)),
	})
	if err != nil {
		return nil, fmt.Errorf("jobstore/pebble: pending %s/%s: %w", q.Source, q.Destination, err)
	}
	var jobs []jobstore.Job
	for valid := it.First(); valid && len(jobs) < limit; valid = it.Next() {
		v, verr := it.ValueAndErr()
		if verr != nil {
			err = verr
			break
		}
		var job jobstore.Job
		if job, err = decodeJob(it.Key(), v); err != nil {
			break
		}
		jobs = append(jobs, job)
	}
	if err := s.closeIter(it, err); err != nil {
		return nil, fmt.Errorf("jobstore/pebble: pending %s/%s: %w", q.Source, q.Destination, err)
	}
	return jobs, nil
}

// decodeJob builds a Job from a pending or retry key and its record.
func decodeJob(k, v []byte) (jobstore.Job, error) {
	q, dueAt, seq, err := decodeJobKey(k)
	if err != nil {
		return jobstore.Job{}, err
	}
	r, err := decodeRecord(v)
	if err != nil {
		return jobstore.Job{}, fmt.Errorf("job %d of %s/%s: %w", seq, q.Source, q.Destination, err)
	}
	r.Event.Source = q.Source
	return jobstore.Job{
		Queue:     q,
		Seq:       seq,
		Event:     r.Event,
		Attempts:  r.Attempts,
		DueAt:     dueAt,
		LastError: r.LastError,
	}, nil
}

// Retries returns up to limit retry jobs of q due at or before until, soonest
// first (ties in Seq order), and the due time of the first job after them.
func (s *Store) Retries(ctx context.Context, q jobstore.Queue, until time.Time, limit int) ([]jobstore.Job, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	if err := s.readLock(); err != nil {
		return nil, time.Time{}, err
	}
	defer s.mu.RUnlock()
	prefix := queuePrefix(prefixRetry, q)
	it, err := s.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
		LowerBound: prefix,
		UpperBound: prefixEnd(prefix),
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("jobstore/pebble: retries %s/%s: %w", q.Source, q.Destination, err)
	}
	var (
		jobs []jobstore.Job
		next time.Time
	)
	// Keys sort by due time, so the loop stops at the first job that is
	// not returned (not due yet, or over the limit): that one is next.
	for valid := it.First(); valid; valid = it.Next() {
		var v []byte
		if v, err = it.ValueAndErr(); err != nil {
			break
		}
		var job jobstore.Job
		if job, err = decodeJob(it.Key(), v); err != nil {
			break
		}
		if len(jobs) >= limit || job.DueAt.After(until) {
			next = job.DueAt
			break
		}
		jobs = append(jobs, job)
	}
	if err := s.closeIter(it, err); err != nil {
		return nil, time.Time{}, fmt.Errorf("jobstore/pebble: retries %s/%s: %w", q.Source, q.Destination, err)
	}
	return jobs, next, nil
}

// Apply applies u in one batch without waiting for a sync. That is safe
// because of the order of effects inside a batch (see jobstore.Update): a
// batch lost in a crash leaves jobs pending that were already delivered or
// rescheduled, so they are delivered again, and never loses one.
func (s *Store) Apply(ctx context.Context, u jobstore.Update) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := buildUpdate(u)
	if err != nil {
		return fmt.Errorf("jobstore/pebble: apply: %w", err)
	}
	defer b.Close()
	if err := s.readLock(); err != nil {
		return err
	}
	defer s.mu.RUnlock()
	if err := s.failed(); err != nil {
		return err
	}
	if err := s.db.Apply(b, pebbledb.NoSync); err != nil {
		err = unavailable("apply", err)
		s.fail(err)
		return err
	}
	return nil
}

func buildUpdate(u jobstore.Update) (*pebbledb.Batch, error) {
	b := new(pebbledb.Batch)
	for _, d := range u.Drops {
		if d.Below == 0 {
			continue
		}
		// One range tombstone per drop however many jobs it covers.
		if err := b.DeleteRange(queuePrefix(prefixPending, d.Queue), pendingKey(d.Queue, d.Below), nil); err != nil {
			return nil, err
		}
	}
	var buf []byte
	for _, r := range u.Reschedule {
		j := r.Job
		if r.DueAt.IsZero() {
			b.Close()
			return nil, fmt.Errorf("reschedule of job %d of %s/%s: DueAt is zero", j.Seq, j.Queue.Source, j.Queue.Destination)
		}
		// The old record goes in the same batch that writes the new one,
		// so a crash leaves either of them, never neither.
		if j.DueAt.IsZero() {
			_ = b.Delete(pendingKey(j.Queue, j.Seq), nil)
		} else {
			_ = b.Delete(retryKey(j.Queue, j.DueAt, j.Seq), nil)
		}
		buf = appendRecord(buf[:0], &jobRecord{Attempts: r.Attempts, LastError: r.LastError, Event: j.Event})
		_ = b.Set(retryKey(j.Queue, r.DueAt, j.Seq), buf, nil)
	}
	// Point deletions, not range deletions, for single jobs: a memtable
	// holding many range tombstones makes every new iterator re-fragment
	// them all, so ranges are kept for the occasional bulk Drop.
	for _, j := range u.Finish {
		if j.DueAt.IsZero() {
			_ = b.Delete(pendingKey(j.Queue, j.Seq), nil)
		} else {
			_ = b.Delete(retryKey(j.Queue, j.DueAt, j.Seq), nil)
		}
	}
	return b, nil
}

// Queues lists the queues that hold pending or retry jobs, sorted by source
// then destination. It skip-scans: after finding a queue it seeks past the
// queue's whole range, so it reads one key per queue and keyspace, never the
// drained jobs.
func (s *Store) Queues(ctx context.Context) ([]jobstore.Queue, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.readLock(); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	seen := make(map[jobstore.Queue]bool)
	for _, prefix := range []byte{prefixPending, prefixRetry} {
		if err := s.scanQueues(ctx, prefix, seen); err != nil {
			return nil, fmt.Errorf("jobstore/pebble: queues: %w", err)
		}
	}
	qs := make([]jobstore.Queue, 0, len(seen))
	for q := range seen {
		qs = append(qs, q)
	}
	slices.SortFunc(qs, func(a, b jobstore.Queue) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return strings.Compare(a.Destination, b.Destination)
	})
	return qs, nil
}

func (s *Store) scanQueues(ctx context.Context, prefix byte, seen map[jobstore.Queue]bool) error {
	it, err := s.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
		LowerBound: []byte{prefix},
		UpperBound: []byte{prefix + 1},
	})
	if err != nil {
		return err
	}
	valid := it.First()
	for valid {
		if err = ctx.Err(); err != nil {
			break
		}
		var q jobstore.Queue
		if q, _, err = readQueue(it.Key()[1:]); err != nil {
			break
		}
		seen[q] = true
		valid = it.SeekGE(prefixEnd(queuePrefix(prefix, q)))
	}
	return s.closeIter(it, err)
}

// Close stops taking appends, answers every Append in progress, and closes
// the database. Calls after the first return ErrClosed.
func (s *Store) Close() error {
	err := ErrClosed
	s.closeOnce.Do(func() {
		close(s.closing)
		s.stopCommits()
		<-s.filterDone
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		err = s.db.Close()
		if err != nil {
			err = fmt.Errorf("jobstore/pebble: close: %w", err)
		}
	})
	return err
}
