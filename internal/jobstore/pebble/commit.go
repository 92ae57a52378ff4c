package pebble

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/groupcommit"
)

const (
	// maxInflight bounds the groups applied but not yet synced.
	maxInflight = 4
	// recentGroups is how many groups' messageIds the committer remembers
	// (see recentIDs); a few hundred milliseconds of traffic.
	recentGroups = 256
)

// appendReq is one Append call on its way through the committer.
type appendReq struct {
	entries []jobstore.Entry
	// gen is the last group applied before the call's own dedupe lookups:
	// they saw every group up to gen and none after.
	gen uint64
	// dup is the call's own verdict: a duplicate of a stored event or of an
	// earlier entry of the call. The committer adds groups after gen.
	dup []bool
	// recs holds each non-duplicate entry's encoded job record.
	recs [][]byte
	// first is the Seq of the call's first job, set by the committer.
	first uint64
	size  int
}

// appendCall is an appendReq in the committer's hands.
type appendCall = groupcommit.Call[*appendReq]

// group is the requests committed by one batch.
type group struct {
	gen   uint64
	batch *pebbledb.Batch
	calls []*appendCall
	ids   []dedupeID // the messageIds this group stores
	// announced is closed once Options.Applied has heard of the group; its
	// requests are answered only then, so Applied runs before Append
	// returns.
	announced chan struct{}
}

// Append stores entries durably; see jobstore.Store.
//
// The call does the work that needs no ordering itself, in parallel with
// other calls: the dedupe lookups of its events in the database and the
// encoding of their records. Then it hands the request to the committer,
// which finishes the dedupe check against the groups the lookups could not
// see, assigns Seqs, and commits (see commitGroup).
//
// If ctx ends while the call waits for its sync, Append returns ctx's error
// but the entries may still be stored: the caller cannot know, just as after
// a lost connection. A retry is then answered as a duplicate, so nothing is
// delivered twice.
func (s *Store) Append(ctx context.Context, entries []jobstore.Entry) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		if err := s.readLock(); err != nil {
			return nil, err
		}
		s.mu.RUnlock()
		return []bool{}, nil
	}
	r := &appendReq{entries: entries}
	if err := s.prepare(r); err != nil {
		return nil, err
	}
	if err := s.appends.Commit(ctx, r, r.size); err != nil {
		return nil, err
	}
	return r.dup, nil
}

// startCommits starts the committer, one group at a time, and its syncer.
func (s *Store) startCommits() error {
	s.synced = make(chan *group, maxInflight)
	s.syncerDone = make(chan struct{})
	appends, err := groupcommit.Start(groupcommit.Options{ErrClosed: ErrClosed}, s.commitGroup)
	if err != nil {
		return err
	}
	s.appends = appends
	go s.syncLoop()
	return nil
}

// stopCommits returns once every request the committer took is answered.
func (s *Store) stopCommits() {
	s.appends.Close()
	close(s.synced)
	<-s.syncerDone
}

// prepare looks r's events up in the dedupe records and encodes the records
// of the others.
func (s *Store) prepare(r *appendReq) error {
	if err := s.readLock(); err != nil {
		return err
	}
	defer s.mu.RUnlock()
	r.gen = s.appliedGen.Load()
	look := s.newDedupeLookup(s.opts.Now())
	defer look.close()
	r.dup = make([]bool, len(r.entries))
	r.recs = make([][]byte, len(r.entries))
	var inCall map[dedupeID]bool
	for i, e := range r.entries {
		if id := (dedupeID{e.Event.Source, e.Event.MessageID}); id.messageID != "" && !e.Replay {
			if inCall[id] {
				r.dup[i] = true
				continue
			}
			found, err := look.storedWithin(id)
			if err != nil {
				return fmt.Errorf("jobstore/pebble: append: dedupe lookup: %w", err)
			}
			if found {
				r.dup[i] = true
				continue
			}
			if inCall == nil {
				inCall = make(map[dedupeID]bool, len(r.entries))
			}
			inCall[id] = true
		}
		r.recs[i] = appendRecord(nil, &jobRecord{Event: e.Event})
		r.size += (len(r.recs[i]) + 64) * len(e.Destinations)
	}
	return nil
}

// commitGroup commits one group; groupcommit hands it each group in turn
// (see groupcommit.Committer.run), on one goroutine, the committer. Group
// commit, step by step:
//
//  1. The group is the request that the committer blocked for and every
//     other request already waiting (up to groupcommit's MaxBytes), those
//     whose caller has gone left out.
//  2. Finish each request's dedupe check: its own lookups saw the database
//     up to group r.gen, and recentIDs holds the messageIds of the groups
//     since (including this one), so a lookup there completes it. Only this
//     goroutine writes dedupe records, so the check-and-set is atomic across
//     concurrent Appends without a lock.
//  3. Assign Seqs and put the dedupe records, the jobs and the new Seq
//     high-water mark into one batch. One goroutine assigns Seqs and applies
//     batches, so Seqs become visible in order: a reader paging with
//     Pending(after) never sees Seq n+1 before Seq n.
//  4. Apply the batch with Sync but without waiting for the fsync
//     (ApplyNoSyncWait): it returns once the batch is in the WAL queue and
//     the memtable, readable by the next calls' lookups.
//  5. Hand the batch to the syncer, which waits for its fsync and answers the
//     group, then announce its jobs (Options.Applied). Meanwhile the
//     committer is back at step 1: the next group is built while this one
//     syncs, and Pebble's WAL writer syncs everything queued since its last
//     fsync at once, so many groups share one fsync.
//
// A record is readable before it is synced (as with any Pebble commit). A
// group deduped against a record that then fails to sync fails too: Pebble's
// WAL errors are sticky and groups are answered in order.
func (s *Store) commitGroup(calls []*appendCall) {
	g := s.buildGroup(calls)
	if g == nil {
		return
	}
	err := s.failed()
	if err == nil {
		if err = s.db.ApplyNoSyncWait(g.batch, pebbledb.Sync); err != nil {
			err = unavailable("append", err)
			s.fail(err)
		}
	}
	if err != nil {
		// Nothing of the group is stored: forget its messageIds so
		// that a retry is not taken for a duplicate.
		s.recent.forget(g.gen, g.ids)
		groupcommit.AnswerAll(g.calls, err)
		// Not closed: Pebble may still hold it after a failed apply.
		return
	}
	s.appliedGen.Store(g.gen)
	// Announce after the hand-off to the syncer. Announcing readies the
	// delivery schedulers, and Go runs the goroutine readied last first
	// on this P. Announced before, a scheduler would wait behind the
	// WAL writer (readied by the apply), whose fsync then holds the P:
	// with the other core busy, in a compaction say, nothing takes the
	// waiting scheduler until the fsync ends or sysmon retakes the P,
	// up to 10 ms later. A stage probe found such 4 to 10 ms waits for
	// every delivery during a 4-second compaction after a
	// 5,000,000-event ingest.
	s.synced <- g
	for _, c := range g.calls {
		r := c.Req
		groupcommit.Announce(s.opts.Applied, r.entries, r.dup, r.first)
	}
	close(g.announced)
}

// syncLoop is the syncer: it waits for each group's fsync, in order, and
// answers its requests.
func (s *Store) syncLoop() {
	defer close(s.syncerDone)
	for g := range s.synced {
		err := g.batch.SyncWait()
		<-g.announced
		if err != nil {
			err = unavailable("append", err)
			s.log.Error("append sync failed", "err", err, "requests", len(g.calls))
			s.fail(err)
		}
		groupcommit.AnswerAll(g.calls, err)
		if err == nil {
			g.batch.Close()
		}
	}
}

// dedupeID is the identity dedupe remembers.
type dedupeID struct{ source, messageID string }

// buildGroup builds one batch for calls. Requests whose dedupe lookup
// failed are answered at once and left out. It returns nil when nothing is
// left.
func (s *Store) buildGroup(calls []*appendCall) *group {
	now := s.opts.Now()
	oldest := dedupeBucket(now.Add(-s.opts.DedupeWindow))
	current := dedupeBucket(now)
	s.gen++
	g := &group{gen: s.gen, batch: s.db.NewBatch(), announced: make(chan struct{})}
	b := g.batch

	var nowVal [8]byte
	binary.BigEndian.PutUint64(nowVal[:], timeKey(now))
	var stored [][]byte // filterKeys of the dedupe records written
	for _, c := range calls {
		r := c.Req
		if err := s.finishDedupe(r, now); err != nil {
			c.Answer(fmt.Errorf("jobstore/pebble: append: dedupe lookup: %w", err))
			continue
		}
		r.first = s.lastSeq + 1
		for i, e := range r.entries {
			if r.dup[i] {
				continue
			}
			if e.Event.MessageID != "" && !e.Replay {
				id := dedupeID{e.Event.Source, e.Event.MessageID}
				s.recent.add(g.gen, id)
				g.ids = append(g.ids, id)
				k := dedupeKey(current, e.Event.Source, e.Event.MessageID)
				_ = b.Set(k, nowVal[:], nil)
				stored = append(stored, filterKey(k))
			}
			// One copy of the record per destination: the key carries
			// the queue, the value is the same for each.
			for _, dest := range e.Destinations {
				s.lastSeq++
				q := jobstore.Queue{Source: e.Event.Source, Destination: dest}
				_ = b.Set(pendingKey(q, s.lastSeq), r.recs[i], nil)
			}
		}
		r.recs = nil
		g.calls = append(g.calls, c)
	}
	s.recent.endGroup(g.gen)
	// Into the filter before the group is applied: see dedupeFilter.
	s.filter.add(current, stored)
	if len(g.calls) == 0 {
		b.Close()
		return nil
	}
	// Buckets wholly older than the window go in one range deletion, with
	// the first group after they expire that stores something: a group
	// whose every request failed is thrown away, and a deletion noted as
	// done with it would leave the expired records until the next bucket
	// expires.
	if oldest > s.dedupeDropped {
		_ = b.DeleteRange(dedupeBucketStart(0), dedupeBucketStart(oldest), nil)
		s.dedupeDropped = oldest
		s.filter.dropBelow(oldest)
	}
	// The high-water mark rides in the same batch as the jobs it covers,
	// so after a crash no Seq that a stored job has is handed out again.
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], s.lastSeq)
	_ = b.Set(metaSeqKey, seq[:], nil)
	return g
}

// finishDedupe completes r's dedupe check with what its own lookups could
// not see: the groups after r.gen, the current one included. If recentIDs
// no longer covers all of them (r waited very long), the lookups are redone
// here, where nothing can change under them.
func (s *Store) finishDedupe(r *appendReq, now time.Time) error {
	var look *dedupeLookup
	if !s.recent.covers(r.gen) {
		look = s.newDedupeLookup(now)
		defer look.close()
	}
	for i, e := range r.entries {
		if r.dup[i] || e.Event.MessageID == "" || e.Replay {
			continue
		}
		id := dedupeID{e.Event.Source, e.Event.MessageID}
		if s.recent.since(r.gen, id) {
			r.dup[i] = true
			continue
		}
		if look != nil {
			found, err := look.storedWithin(id)
			if err != nil {
				return err
			}
			r.dup[i] = found
		}
	}
	return nil
}

// dedupeLookup looks messageIds up in the dedupe filter and, when it says
// "maybe", in the dedupe records. It opens one iterator, at the first
// lookup that needs it, for all the lookups of a call: a Get sets up an
// iterator over every level each time, which was a third of Append's CPU,
// while SeekPrefixGE on one iterator still consults the bloom filters but
// sets the levels up once. The iterator sees at least every group up to
// the caller's appliedGen.
type dedupeLookup struct {
	s               *Store
	it              *pebbledb.Iterator // nil until the first seek
	cutoff          uint64             // timeKey of now - window
	oldest, current uint64             // buckets that can hold a record from the window
	key             []byte
}

func (s *Store) newDedupeLookup(now time.Time) *dedupeLookup {
	return &dedupeLookup{
		s:       s,
		cutoff:  timeKey(now.Add(-s.opts.DedupeWindow)),
		oldest:  dedupeBucket(now.Add(-s.opts.DedupeWindow)),
		current: dedupeBucket(now),
	}
}

func (l *dedupeLookup) close() {
	if l.it != nil {
		l.it.Close()
	}
}

// storedWithin looks id up in every bucket that can hold a record from the
// window, newest first, and compares the stored time with the window
// exactly: a record from time t makes a duplicate while now-t < window.
func (l *dedupeLookup) storedWithin(id dedupeID) (bool, error) {
	for b := l.current; ; b-- {
		l.key = appendDedupeKey(l.key[:0], b, id.source, id.messageID)
		if l.s.filter.mayContain(b, filterKey(l.key)) {
			v, found, err := l.get(l.key)
			if err != nil {
				return false, err
			}
			if found {
				if len(v) != 8 {
					return false, fmt.Errorf("%w: dedupe record of %q has %d bytes", errCorrupt, id.messageID, len(v))
				}
				// The newest bucket's record is the latest time the
				// pair was stored, so it alone decides.
				return binary.BigEndian.Uint64(v) > l.cutoff, nil
			}
		}
		if b == l.oldest || b == 0 {
			return false, nil
		}
	}
}

// get reads the dedupe record under key from Pebble.
func (l *dedupeLookup) get(key []byte) (v []byte, found bool, err error) {
	if l.it == nil {
		l.it, err = l.s.db.NewIter(&pebbledb.IterOptions{
			LowerBound: dedupeBucketStart(l.oldest),
			UpperBound: dedupeBucketStart(l.current + 1),
		})
		if err != nil {
			return nil, false, err
		}
	}
	l.s.dedupeSeeks.Add(1)
	if !l.it.SeekPrefixGE(key) || !bytes.Equal(l.it.Key(), key) {
		return nil, false, l.it.Error()
	}
	v, err = l.it.ValueAndErr()
	return v, err == nil, err
}

// recentIDs remembers which group stored each messageId, for the last n
// groups. Owned by the committer goroutine.
type recentIDs struct {
	gens map[dedupeID]uint64
	// ring[gen%n] lists the messageIds of group gen, so that they can be
	// forgotten when the group leaves the window of n groups.
	ring    [][]dedupeID
	lastGen uint64
}

func newRecentIDs(n int) recentIDs {
	return recentIDs{gens: make(map[dedupeID]uint64), ring: make([][]dedupeID, n)}
}

// covers reports whether every group after gen is still remembered.
func (r *recentIDs) covers(gen uint64) bool {
	return r.lastGen < uint64(len(r.ring)) || gen >= r.lastGen-uint64(len(r.ring))
}

// since reports whether a group after gen stored id.
func (r *recentIDs) since(gen uint64, id dedupeID) bool {
	g, ok := r.gens[id]
	return ok && g > gen
}

// add notes that group gen (the one being built) stores id.
func (r *recentIDs) add(gen uint64, id dedupeID) {
	slot := &r.ring[gen%uint64(len(r.ring))]
	if r.lastGen < gen {
		// First id of a new group: its slot held group gen-n; forget it.
		r.evict(*slot, gen-uint64(len(r.ring)))
		*slot = (*slot)[:0]
		r.lastGen = gen
	}
	r.gens[id] = gen
	*slot = append(*slot, id)
}

// endGroup marks group gen as built even if it stored no messageId.
func (r *recentIDs) endGroup(gen uint64) {
	if r.lastGen < gen {
		slot := &r.ring[gen%uint64(len(r.ring))]
		r.evict(*slot, gen-uint64(len(r.ring)))
		*slot = (*slot)[:0]
		r.lastGen = gen
	}
}

// forget drops the ids of group gen, which was not stored.
func (r *recentIDs) forget(gen uint64, ids []dedupeID) {
	r.evict(ids, gen)
}

func (r *recentIDs) evict(ids []dedupeID, gen uint64) {
	for _, id := range ids {
		if r.gens[id] == gen {
			delete(r.gens, id)
		}
	}
}
