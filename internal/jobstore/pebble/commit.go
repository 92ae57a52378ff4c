package pebble

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"sync/atomic"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/fanout/fanout/internal/jobstore"
)

// Group limits. A group larger than half a memtable would be written by
// Pebble as a "flushable batch" of its own; 8 MB stays well below that and
// is still hundreds of requests.
const (
	maxGroupBytes = 8 << 20
	// maxInflight bounds the groups applied but not yet synced.
	maxInflight = 4
)

// appendReq is one Append call waiting for the committer.
type appendReq struct {
	ctx     context.Context
	entries []jobstore.Entry
	size    int
	done    chan appendResult // buffered: the committer never blocks on it
}

type appendResult struct {
	duplicate []bool
	err       error
}

// group is the requests committed by one batch.
type group struct {
	batch   *pebbledb.Batch
	reqs    []*appendReq
	results []appendResult
}

// Append stores entries durably; see jobstore.Store. It hands the call to the
// committer goroutine and waits for its answer.
//
// If ctx ends while the call waits for its sync, Append returns ctx's error
// but the entries may still be stored: the caller cannot know, just as after
// a lost connection. A retry is then answered as a duplicate, so nothing is
// delivered twice.
func (s *Store) Append(ctx context.Context, entries []jobstore.Entry) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case <-s.closing:
		return nil, ErrClosed
	default:
	}
	if len(entries) == 0 {
		return []bool{}, nil
	}
	r := &appendReq{ctx: ctx, entries: entries, done: make(chan appendResult, 1)}
	for _, e := range entries {
		r.size += len(e.Event.Payload) * max(len(e.Destinations), 1)
	}
	select {
	case s.reqs <- r:
	case <-s.closing:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.duplicate, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// commitLoop is the committer. Group commit, step by step:
//
//  1. Block for one request, then take every other request already waiting
//     (up to maxGroupBytes): they are the group.
//  2. For each event, check dedupe against the database and the group itself,
//     assign Seqs, and put the dedupe records, the jobs and the new Seq
//     high-water mark into one batch. Only this goroutine does this, so the
//     check-and-set is atomic across concurrent Appends without a lock, and
//     Seqs become visible in order: a reader paging with Pending(after)
//     never sees Seq n+1 before Seq n.
//  3. Apply the batch with Sync but without waiting for the fsync
//     (ApplyNoSyncWait): it returns once the batch is in the WAL buffer and
//     the memtable, so the next group's dedupe lookups see it.
//  4. Hand the batch to the syncer, which waits for its fsync and answers the
//     group. Meanwhile the committer is back at step 1: the next group is
//     built while this one syncs, and Pebble's WAL writer syncs everything
//     queued since its last fsync at once, so many groups share one fsync.
//
// A record is visible to readers before it is synced (as with any Pebble
// commit). A group deduped against a record that then fails to sync fails
// too: Pebble's WAL errors are sticky and groups are answered in order.
func (s *Store) commitLoop() {
	defer close(s.committerDone)
	synced := make(chan *group, maxInflight)
	syncerDone := make(chan struct{})
	go s.syncLoop(synced, syncerDone)
	defer func() {
		close(synced)
		<-syncerDone
	}()
	var reqs []*appendReq
	for {
		select {
		case <-s.closing:
			return
		default:
		}
		var first *appendReq
		select {
		case first = <-s.reqs:
		case <-s.closing:
			return
		}
		reqs = append(reqs[:0], first)
		size := first.size
	gather:
		for size < maxGroupBytes {
			select {
			case r := <-s.reqs:
				reqs = append(reqs, r)
				size += r.size
			default:
				break gather
			}
		}
		t1 := time.Now()
		g := s.buildGroup(reqs)
		dbgBuild.Add(int64(time.Since(t1)))
		if g == nil {
			continue
		}
		if err := s.db.ApplyNoSyncWait(g.batch, pebbledb.Sync); err != nil {
			err = unavailable("append", err)
			for _, r := range g.reqs {
				r.done <- appendResult{err: err}
			}
			// Not closed: Pebble may still hold it after a failed apply.
			continue
		}
		t2 := time.Now()
		synced <- g
		dbgHand.Add(int64(time.Since(t2)))
	}
}

// syncLoop waits for each group's fsync, in order, and answers its requests.
func (s *Store) syncLoop(groups <-chan *group, done chan<- struct{}) {
	defer close(done)
	for g := range groups {
		t0 := time.Now()
		err := g.batch.SyncWait()
		dbgSync.Add(int64(time.Since(t0)))
		dbgGroups.Add(1)
		dbgReqs.Add(int64(len(g.reqs)))
		if err != nil {
			err = unavailable("append", err)
			s.log.Error("append sync failed", "err", err, "requests", len(g.reqs))
		}
		for i, r := range g.reqs {
			if err != nil {
				r.done <- appendResult{err: err}
			} else {
				r.done <- g.results[i]
			}
		}
		if err == nil {
			g.batch.Close()
		}
	}
}

// dedupeID is the identity dedupe remembers.
type dedupeID struct{ source, messageID string }

// buildGroup builds one batch for reqs. Requests whose context has ended, or
// whose dedupe lookup failed, are answered at once and left out. It returns
// nil when nothing is left.
func (s *Store) buildGroup(reqs []*appendReq) *group {
	now := s.opts.Now()
	oldest := dedupeBucket(now.Add(-s.opts.DedupeWindow))
	current := dedupeBucket(now)
	b := s.db.NewBatch()
	g := &group{batch: b}

	// Buckets wholly older than the window go in one range deletion, the
	// first time a group sees that they have expired.
	if oldest > s.dedupeDropped {
		_ = b.DeleteRange(dedupeBucketStart(0), dedupeBucketStart(oldest), nil)
		s.dedupeDropped = oldest
	}

	inGroup := make(map[dedupeID]bool)
	var nowVal [8]byte
	binary.BigEndian.PutUint64(nowVal[:], timeKey(now))
	var rec []byte
	for _, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			r.done <- appendResult{err: err}
			continue
		}
		dup, err := s.checkDedupe(r.entries, inGroup, now, oldest, current)
		if err != nil {
			r.done <- appendResult{err: fmt.Errorf("jobstore/pebble: append: dedupe lookup: %w", err)}
			continue
		}
		for i, e := range r.entries {
			if dup[i] {
				continue
			}
			if e.Event.MessageID != "" {
				inGroup[dedupeID{e.Event.Source, e.Event.MessageID}] = true
				_ = b.Set(dedupeKey(current, e.Event.Source, e.Event.MessageID), nowVal[:], nil)
			}
			// One copy of the record per destination: the key carries
			// the queue, the value is the same for each.
			rec = appendRecord(rec[:0], &jobRecord{Event: e.Event})
			for _, dest := range e.Destinations {
				s.lastSeq++
				q := jobstore.Queue{Source: e.Event.Source, Destination: dest}
				_ = b.Set(pendingKey(q, s.lastSeq), rec, nil)
			}
		}
		g.reqs = append(g.reqs, r)
		g.results = append(g.results, appendResult{duplicate: dup})
	}
	if len(g.reqs) == 0 {
		b.Close()
		return nil
	}
	// The high-water mark rides in the same batch as the jobs it covers,
	// so after a crash no Seq that a stored job has is handed out again.
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], s.lastSeq)
	_ = b.Set(metaSeqKey, seq[:], nil)
	return g
}

// checkDedupe reports, for each entry, whether its (source, messageId) was
// stored within the window or appears earlier in this group. An empty
// messageId is never a duplicate (the tracking API always sets one).
func (s *Store) checkDedupe(entries []jobstore.Entry, inGroup map[dedupeID]bool, now time.Time, oldest, current uint64) ([]bool, error) {
	dup := make([]bool, len(entries))
	// Earlier entries of the same call count, but are only added to
	// inGroup by the caller once the whole call is accepted.
	var inCall map[dedupeID]bool
	for i, e := range entries {
		if e.Event.MessageID == "" {
			continue
		}
		id := dedupeID{e.Event.Source, e.Event.MessageID}
		if inGroup[id] || inCall[id] {
			dup[i] = true
			continue
		}
		found, err := s.storedWithin(id, now, oldest, current)
		if err != nil {
			return nil, err
		}
		if found {
			dup[i] = true
			continue
		}
		if inCall == nil {
			inCall = make(map[dedupeID]bool)
		}
		inCall[id] = true
	}
	return dup, nil
}

// storedWithin looks id up in every bucket that can hold a record from the
// window, newest first, and compares the stored time with the window
// exactly: a record from time t makes a duplicate while now-t < window.
func (s *Store) storedWithin(id dedupeID, now time.Time, oldest, current uint64) (bool, error) {
	cutoff := timeKey(now.Add(-s.opts.DedupeWindow))
	for b := current; ; b-- {
		v, closer, err := s.db.Get(dedupeKey(b, id.source, id.messageID))
		if err == nil {
			var at uint64
			if len(v) == 8 {
				at = binary.BigEndian.Uint64(v)
			}
			closer.Close()
			if len(v) != 8 {
				return false, fmt.Errorf("%w: dedupe record of %q has %d bytes", errCorrupt, id.messageID, len(v))
			}
			// The newest bucket's record is the latest time the pair
			// was stored, so it alone decides.
			return at > cutoff, nil
		}
		if !errors.Is(err, pebbledb.ErrNotFound) {
			return false, err
		}
		if b == oldest || b == 0 {
			return false, nil
		}
	}
}

var dbgSync, dbgGroups, dbgReqs, dbgBuild, dbgHand atomic.Int64
