package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/groupcommit"
)

// appendReq is one Append call on its way through the committer.
type appendReq struct {
	entries []jobstore.Entry
	dup     []bool
	first   uint64 // Seq of the call's first job, set by the committer
}

// appendCall is an appendReq in the committer's hands.
type appendCall = groupcommit.Call[*appendReq]

// Append stores entries durably; see jobstore.Store. It hands the call to
// the committer, which commits it with every other call waiting at that
// moment in one transaction (group commit), and returns once that
// transaction has committed: synchronous_commit is on, so the commit has
// reached the WAL on disk.
//
// If ctx ends while the call waits for its commit, Append returns ctx's
// error but the entries may still be stored, as after a lost connection; a
// retry is then answered as a duplicate.
func (s *Store) Append(ctx context.Context, entries []jobstore.Entry) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return []bool{}, nil
	}
	r := &appendReq{entries: entries, dup: make([]bool, len(entries))}
	size := 0
	for _, e := range entries {
		size += (len(e.Event.Payload) + 64) * max(len(e.Destinations), 1)
	}
	if err := s.appends.Commit(ctx, r, size); err != nil {
		return nil, err
	}
	return r.dup, nil
}

// startCommits starts the committer: groupcommit gathers the Append calls
// waiting into a group, and commitGroup commits it. Up to groupsInFlight
// groups run at once, each on a goroutine and a connection of its own:
// their dedupe upserts, their COPYs and their WAL flushes overlap. What
// keeps them in order is not the committer but the Seqs (see sequencer): a
// group commits only after every group, of any node, that took lower Seqs
// has committed or rolled back, so a reader paging with Pending(after)
// never sees Seq n+1 before Seq n; and this node's groups announce in Seq
// order too. While groups commit, the next one gathers, so the more the
// load, the larger the group and the fewer commits per event.
func (s *Store) startCommits() error {
	s.seqr = newSequencer(s)
	appends, err := groupcommit.Start(groupcommit.Options{
		InFlight:  groupsInFlight(s.opts.MaxConns),
		ErrClosed: ErrClosed,
	}, s.commitGroup)
	if err != nil {
		s.seqr.close()
		return err
	}
	s.appends = appends
	return nil
}

// stopCommits returns once every group taken has been answered, and ends
// the sequencer's session.
func (s *Store) stopCommits() {
	s.appends.Close()
	s.seqr.close()
}

// groupsInFlight is how many group commits run at once, each holding a
// pooled connection: two, one copying or committing while the next
// gathers and deduplicates, and never more than half the pool, so that
// reads and deliveries' updates always find a connection. More groups in
// flight make smaller groups: on two cores, four cost 30 to 45% more CPU
// per event (PostgreSQL's and the store's) than two, for no more events
// per second (TestAppendRate, see BENCHMARKS.md).
func groupsInFlight(maxConns int32) int {
	return int(min(max(maxConns/2, 1), 2))
}

// dedupeID is the identity dedupe remembers.
type dedupeID struct{ source, messageID string }

// commitGroup commits one group (the calls whose caller has gone are left
// out already) in one transaction and answers each call. Step by step:
//
//  1. Within the group, the first entry of each (source, messageId) is a
//     candidate and every later one a duplicate.
//  2. In one transaction: the candidates are upserted into the current
//     dedupe bucket; those the upsert did not write are duplicates (see
//     dedupe). The jobs of the others take the next Seqs (sequencer), go
//     in by COPY, and the transaction commits once every lower Seq has
//     committed or rolled back.
//  3. After the groups of this node that took lower Seqs, announce each
//     request's jobs (Options.Applied) and answer.
func (s *Store) commitGroup(calls []*appendCall) {
	reqs := make([]*appendReq, len(calls))
	for i, c := range calls {
		reqs[i] = c.Req
	}
	g, err := s.commit(reqs, s.opts.Now(), s.seqr)
	if g != nil {
		// Announce and answer after the groups before.
		g.waitPrev()
		defer close(g.done)
	}
	if err != nil {
		// Whatever went wrong, the events are not stored (or, when the
		// commit's answer was lost, not known to be): to the tracking API
		// that is a 503, and the client sends them again.
		err = fmt.Errorf("jobstore/postgres: append: %w: %w", jobstore.ErrUnavailable, err)
		if s.checkOpen() == nil {
			s.log.Error("append failed", "err", err, "requests", len(calls))
		}
		groupcommit.AnswerAll(calls, err)
		return
	}
	for _, r := range reqs {
		groupcommit.Announce(s.opts.Applied, r.entries, r.dup, r.first)
	}
	groupcommit.AnswerAll(calls, nil)
}

// querier is what a pooled connection and a transaction have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// upsertDedupe records ids in dedupe bucket $1 and returns those it wrote:
// see dedupe. An id with a record in the previous bucket that is still in
// the window ($6 = $1-1) is not written. Rows go in key order, so that two
// nodes' groups wait for each other instead of deadlocking.
const upsertDedupe = `INSERT INTO dedupe (bucket, source, message_id, stored_at)
	SELECT $1, u.s, u.m, $4 FROM unnest($2::text[], $3::bytea[]) AS u(s, m)
	WHERE NOT EXISTS (SELECT 1 FROM dedupe p
		WHERE p.bucket = $6 AND p.source = u.s AND p.message_id = u.m AND p.stored_at > $5)
	ORDER BY 2, 3
	ON CONFLICT (bucket, source, message_id) DO UPDATE SET stored_at = excluded.stored_at
	WHERE dedupe.stored_at <= $5
	RETURNING source, message_id`

// clockMargin is how far apart the clocks of nodes sharing a database may
// be for dedupe to stay exact at a bucket boundary; see dedupe.
const clockMargin = time.Minute

// commit runs the group's transaction: BEGIN, the dedupe upsert (and the
// cluster's NOTIFY) pipelined in one round trip; the Seqs of the stored
// jobs (sequencer.reserve); the COPY of the jobs; the wait for lower Seqs
// and COMMIT in one round trip. Seqs are taken only once the dedupe has
// answered, for the jobs actually stored. On error nothing of the group is
// stored and the requests' dup flags are reset. It returns the group's
// place in this node's order of Seqs, nil when it took none.
func (s *Store) commit(reqs []*appendReq, now time.Time, seqr *sequencer) (g *turn, err error) {
	// The group's own context: one caller giving up must not abort the
	// others' commit.
	ctx := s.ctx
	bucket := now.UnixNano() / s.span
	if err := s.ensureDedupeParts(ctx, bucket); err != nil {
		return nil, err
	}

	// Candidates for dedupe, in order; later entries of the same id in
	// the group are duplicates.
	type ref struct{ req, entry int }
	n := 0
	for _, r := range reqs {
		n += len(r.entries)
	}
	firstOf := make(map[dedupeID]ref, n)
	cands := make([]dedupeID, 0, n)
	queues := make(map[jobstore.Queue]bool)
	var prev *jobstore.Entry
	for ri, r := range reqs {
		for ei := range r.entries {
			e := &r.entries[ei]
			r.dup[ei] = false
			if e.Event.MessageID != "" && !e.Replay {
				id := dedupeID{e.Event.Source, e.Event.MessageID}
				if _, seen := firstOf[id]; seen {
					r.dup[ei] = true
					continue
				}
				firstOf[id] = ref{ri, ei}
				cands = append(cands, id)
			}
			// Runs of entries share their queues: look them up once a run.
			if prev == nil || prev.Event.Source != e.Event.Source || !slices.Equal(prev.Destinations, e.Destinations) {
				for _, d := range e.Destinations {
					queues[jobstore.Queue{Source: e.Event.Source, Destination: d}] = true
				}
				prev = e
			}
		}
	}
	defer func() {
		if err != nil {
			for _, r := range reqs {
				clear(r.dup)
			}
		}
	}()
	if err := s.ensureQueues(ctx, queues); err != nil {
		return nil, err
	}

	t := now.UnixNano()
	cutoff := t - s.span
	srcs := make([]string, len(cands))
	ids := make([][]byte, len(cands))
	for i, c := range cands {
		srcs[i], ids[i] = c.source, []byte(c.messageID)
	}
	var won map[dedupeID]bool
	var notice cluster.Notice
	// A batch is sent once: a retry builds it again.
	begin := func() *pgx.Batch {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		if len(cands) > 0 {
			b.Queue(upsertDedupe, bucket, srcs, ids, t, cutoff, bucket-1).Query(func(rows pgx.Rows) error {
				won, err = collectIDs(rows, nil, len(cands))
				return err
			})
		}
		if c := s.opts.Cluster; c != nil {
			// Wake the owners of the group's queues when it commits. A
			// queue whose jobs all turn out duplicates wakes its owner for
			// nothing.
			ps := make([]int, 0, len(queues))
			for q := range queues {
				ps = append(ps, c.PartitionOf(q))
			}
			notice = c.QueueNotify(b, ps)
		}
		return b
	}
	var conn *pgxpool.Conn
	inTx := false
	defer func() {
		if conn == nil {
			return
		}
		if err != nil && inTx {
			if _, rerr := conn.Exec(context.Background(), "ROLLBACK"); rerr != nil {
				// The pool throws a closed connection away.
				conn.Conn().Close(context.Background())
			}
		}
		conn.Release()
	}()
	for attempt := 0; ; attempt++ {
		if conn, err = s.pool.Acquire(ctx); err != nil {
			return nil, err
		}
		inTx = true
		err = conn.SendBatch(ctx, begin()).Close()
		if err == nil {
			break
		}
		// An idle connection that died (a restarted server, a cut
		// connection) is only found dead now, and its transaction has
		// rolled back: try once more, on a new connection, since the
		// other idle ones most likely died with it.
		if !conn.Conn().IsClosed() || attempt > 0 {
			return nil, fmt.Errorf("dedupe: %w", err)
		}
		conn.Release()
		conn, inTx = nil, false
		s.pool.Reset()
	}
	if len(cands) > 0 {
		// Near a bucket's end the dedupe takes a second round trip.
		next := t > (bucket+1)*s.span-int64(clockMargin)
		dups, err := s.dedupeNext(ctx, conn, cands, won, t, bucket, next)
		if err != nil {
			return nil, err
		}
		for id := range dups {
			ref := firstOf[id]
			reqs[ref.req].dup[ref.entry] = true
		}
	}

	var jobs int64
	for _, r := range reqs {
		for i, e := range r.entries {
			if !r.dup[i] {
				jobs += int64(len(e.Destinations))
			}
		}
	}
	if jobs == 0 {
		_, err := conn.Exec(ctx, "COMMIT")
		inTx = err != nil
		return nil, err
	}
	// Every dedupe write of the group is made: only now does it take
	// Seqs, and from then on it waits only for groups with lower Seqs,
	// which wait for nothing of it (see sequencer).
	seq0, g, err := seqr.reserve(ctx, conn, jobs)
	if err != nil {
		return nil, fmt.Errorf("take Seqs: %w", err)
	}
	rows := make([][]any, 0, jobs)
	seq := seq0
	s.mu.RLock()
	for _, r := range reqs {
		r.first = uint64(seq)
		for i, e := range r.entries {
			if r.dup[i] {
				continue
			}
			for _, d := range e.Destinations {
				id := s.queueIDs[jobstore.Queue{Source: e.Event.Source, Destination: d}]
				rows = append(rows, []any{id, seq, []byte(e.Event.MessageID), e.Event.Type,
					e.Event.ReceivedAt.UnixNano(), []byte(e.Event.Payload)})
				seq++
			}
		}
	}
	s.mu.RUnlock()
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"jobs"},
		[]string{"queue_id", "seq", "message_id", "type", "received_at", "payload"},
		pgx.CopyFromRows(rows)); err != nil {
		return g, fmt.Errorf("copy jobs: %w", err)
	}
	b := &pgx.Batch{}
	queueCommit(b, seq0, seq-1)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return g, fmt.Errorf("commit: %w", err)
	}
	inTx = false
	if c := s.opts.Cluster; c != nil {
		c.Committed(ctx, notice)
	}
	return g, nil
}

// dedupeNext completes the dedupe of cands, given the ids that the upsert
// into their own bucket wrote (won), and returns the duplicates: stored
// less than the window ago, by this node or another. With next set, t is
// within clockMargin of its bucket's end and the winners are recorded in
// the next bucket too.
//
// Buckets span one window. An id is stored at t when it has no record
// within the window in the previous bucket (a plain lookup) and the upsert
// into its own bucket wrote it; the primary key makes concurrent writers
// of the same id in one bucket, on any node, wait for each other (first
// commit wins), and the upsert replaces a record only when it has left the
// window, so a duplicate never extends it. The lookup of the previous
// bucket sees only committed records, which is exact except for a writer
// still committing on the other side of the boundary: one whose clock read
// less than clockMargin before it. So such a writer also records the id in
// the next bucket, where the other meets it in the primary key.
func (s *Store) dedupeNext(ctx context.Context, q querier, cands []dedupeID, won map[dedupeID]bool, t, bucket int64, next bool) (map[dedupeID]bool, error) {
	dups := make(map[dedupeID]bool)
	var wonSrcs []string
	var wonIDs [][]byte
	for _, c := range cands {
		if !won[c] {
			dups[c] = true
		} else {
			wonSrcs, wonIDs = append(wonSrcs, c.source), append(wonIDs, []byte(c.messageID))
		}
	}
	if len(wonSrcs) == 0 || !next {
		return dups, nil
	}
	// One that meets a record in the next bucket lost a race with another
	// node that stored it there meanwhile: it is a duplicate, and its
	// record in its own bucket goes again.
	// Its own bucket holds the records just written: the lookup looks
	// at the next bucket itself, which the upsert would find anyway.
	rows, err := q.Query(ctx, upsertDedupe, bucket+1, wonSrcs, wonIDs, t, t-s.span, bucket+1)
	won2, err := collectIDs(rows, err, len(wonSrcs))
	if err != nil {
		return nil, err
	}
	var lostSrcs []string
	var lostIDs [][]byte
	for i, src := range wonSrcs {
		c := dedupeID{src, string(wonIDs[i])}
		if !won2[c] {
			dups[c] = true
			lostSrcs, lostIDs = append(lostSrcs, src), append(lostIDs, wonIDs[i])
		}
	}
	if len(lostSrcs) > 0 {
		if _, err := q.Exec(ctx, `DELETE FROM dedupe d USING unnest($2::text[], $3::bytea[]) AS u(s, m)
			WHERE d.bucket = $1 AND d.source = u.s AND d.message_id = u.m AND d.stored_at = $4`,
			bucket, lostSrcs, lostIDs, t); err != nil {
			return nil, err
		}
	}
	return dups, nil
}

// collectIDs reads the ids that rows return; n is how many there may be.
func collectIDs(rows pgx.Rows, err error, n int) (map[dedupeID]bool, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := make(map[dedupeID]bool, n)
	for rows.Next() {
		var src string
		var id []byte
		if err := rows.Scan(&src, &id); err != nil {
			return nil, err
		}
		m[dedupeID{src, string(id)}] = true
	}
	return m, rows.Err()
}

// ensureDedupeParts makes sure the dedupe partitions of bucket and the next
// one exist, creating them in their own transaction under an advisory lock
// (CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin).
func (s *Store) ensureDedupeParts(ctx context.Context, bucket int64) error {
	// Not partMu: creating a partition of dedupe waits for the group in
	// flight to commit, which may need partMu first.
	s.dedupeMu.Lock()
	defer s.dedupeMu.Unlock()
	if s.dedupeParts[bucket] && s.dedupeParts[bucket+1] {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockPartitions)); err != nil {
			return err
		}
		for _, b := range []int64{bucket, bucket + 1} {
			if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF dedupe FOR VALUES FROM (%d) TO (%d)",
				dedupePartName(b), b, b+1)); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.dedupeParts[bucket], s.dedupeParts[bucket+1] = true, true
	}
	return err
}
