package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// sequencer hands out Seqs to this node's group commits and keeps their
// commits in Seq order with every other group's, of any node, without
// making them wait for each other's work.
//
// Readers page by Seq (Pending(q, after)), so a Seq must never become
// visible before a lower one that is still to commit: the reader would
// move past it. And meta.last_seq is the committed counter: every Seq up
// to it is committed or rolled back, which readers and Cleanup rely on.
// It used to be the only counter, updated in the group's own transaction,
// whose row lock was held until that transaction committed: the groups of
// the whole database copied their jobs and flushed their WAL one at a
// time. Now a group takes its Seqs from a second counter, seq_alloc, in a
// short transaction of its own, and waits for the lower ones only just
// before its COMMIT, once its jobs are copied:
//
//  1. On the sequencer's own session (synchronous_commit off: see below),
//     BEGIN, lock seq_alloc's row (lockSeqs), then advance it by the
//     group's jobs from the higher of it and meta.last_seq (takeSeqs, a
//     statement of its own so that it reads meta after the wait). The row
//     is locked until this short transaction ends, so Seqs are taken one
//     group at a time, database-wide, and none while Cleanup retires a
//     partition (retireCounter).
//  2. In the group's transaction, take a transaction advisory lock whose
//     key is the group's first Seq (seqKey). It is held until the group
//     commits or rolls back, whatever ends it: a lost connection, a
//     killed process.
//  3. COMMIT seq_alloc. Every group that takes Seqs after this one finds
//     its lock held.
//  4. The group copies its jobs; then, in its last round trip, it waits
//     for every such lock with a lower key (queueAwaitLower, which reads
//     pg_locks): every group with lower Seqs that is still in flight, on
//     any node; moves meta.last_seq up to its last Seq; and commits. A
//     group with lower Seqs that is not in pg_locks has committed or
//     rolled back already, because it took its lock before its Seqs were
//     handed out (step 2 before 3).
//
// So groups commit in Seq order, and meta.last_seq moves in commit order,
// as they did under one lock, but their dedupe upserts, their COPYs and
// their WAL flushes overlap. meta's row lock is taken only in the last
// round trip, when the groups before have committed. No deadlock: a group
// waits only for lower Seqs, and a group holding Seqs waits for nothing of
// a later one (its dedupe writes, which a later group may wait for, are
// all made before it takes Seqs). A group that rolls back leaves its Seqs
// unused, a gap, which Seqs may have.
//
// seq_alloc's transaction commits without waiting for its WAL flush: the
// jobs that use its Seqs commit with synchronous_commit on, later in the
// same WAL, so their flush makes it durable too; lost in a crash without
// them, it only hands out the same Seqs again. seq_alloc never falls behind
// meta.last_seq (takeSeqs starts from the higher of the two), so Cleanup
// moves only meta.last_seq when it retires a partition.
//
// On one node, Seqs are taken one group at a time (mu), so the chain of
// turns, which orders the announcements (Options.Applied), is in Seq order.
type sequencer struct {
	s *Store
	// mu is held through one reservation: steps 1 to 3, and the
	// partitions the new Seqs need. It guards conn and last.
	mu      sync.Mutex
	conn    *pgx.Conn      // the sequencer's own session; nil until needed or after an error
	dialing chan *pgx.Conn // a redial in progress, nil if none
	dials   sync.WaitGroup
	last    *turn // the group that took Seqs last

	analyze chan int64 // jobs partitions (by lo) to analyze
	stopped chan struct{}
}

// turn is a group's place in the node's order of Seqs.
type turn struct {
	prev *turn         // the group before; nil once it is done
	done chan struct{} // closed once the group has announced its jobs and answered
}

// waitPrev waits until the group before has announced and answered.
func (g *turn) waitPrev() {
	if g.prev != nil {
		<-g.prev.done
		g.prev = nil // let the chain behind be collected
	}
}

func newSequencer(s *Store) *sequencer {
	done := &turn{done: make(chan struct{})}
	close(done.done)
	q := &sequencer{s: s, last: done, analyze: make(chan int64, 8), stopped: make(chan struct{})}
	go q.analyzeLoop()
	return q
}

// close ends the sequencer's session and its analyzer. The committer calls
// it once no group is in flight.
func (q *sequencer) close() {
	close(q.analyze)
	<-q.stopped
	q.dials.Wait()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dialing != nil {
		if conn := <-q.dialing; conn != nil {
			q.conn = conn
		}
	}
	q.hangUp()
}

// lockSeqs takes seq_alloc's row lock in a statement of its own, before
// takeSeqs reads meta. A statement's snapshot is taken when it starts, so
// takeSeqs, had it waited for the lock itself, would read meta as it was
// before the wait: a partition retirement that held the lock meanwhile
// (retireCounter) would have moved meta.last_seq past the partition, and
// the group would take Seqs inside it, below a counter that says they
// are committed, in a partition Cleanup may drop with them in it
// (TestNoSeqsBelowARetiredCounter).
const lockSeqs = `SELECT last_seq FROM seq_alloc FOR UPDATE`

// takeSeqs advances the Seqs handed out by $1 and returns the last. It
// creates the row on first use, and starts from meta.last_seq when that is
// higher (Cleanup moves it past a retired partition). It runs after
// lockSeqs, in the same transaction.
const takeSeqs = `INSERT INTO seq_alloc AS a (last_seq) SELECT m.last_seq + $1 FROM meta m
	ON CONFLICT (id) DO UPDATE SET last_seq = GREATEST(a.last_seq, (SELECT last_seq FROM meta)) + $1
	RETURNING last_seq`

// seqKey is the advisory lock key of a group whose first Seq is seq: the
// two-key form, seq split at bit 31 so that both halves are non-negative
// int4s. The store owns the two-key advisory locks of its database; every
// other lock of fanout uses the one-key form, which PostgreSQL keeps apart
// (pg_locks.objsubid 1 and 2).
func seqKey(seq int64) (hi, lo int32) {
	return int32(seq >> 31), int32(seq & (1<<31 - 1))
}

// inflightKeys selects the Seq keys (seqKey) held by groups in flight in
// this database.
const inflightKeys = `SELECT (l.classid::bigint << 31) | l.objid::bigint AS seq, l.classid, l.objid
	FROM pg_locks l
	WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.mode = 'ExclusiveLock' AND l.granted
	  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`

// queueCommit queues the last round trip of a group whose Seqs are first
// to last (step 4): the wait for every group in flight with lower Seqs
// (the shared locks it takes end with the transaction), the committed
// counter moved up to last, and COMMIT.
func queueCommit(b *pgx.Batch, first, last int64) {
	b.Queue(`SELECT count(pg_advisory_xact_lock_shared(k.classid::bigint::int, k.objid::bigint::int))
		FROM (`+inflightKeys+`) k WHERE k.seq < $1`, first)
	b.Queue("UPDATE meta SET last_seq = GREATEST(last_seq, $1)", last)
	b.Queue("COMMIT")
}

// reserve takes n consecutive Seqs for the group whose transaction is open
// on tx (steps 1 to 3), creates the partitions they need, and returns the
// first and the group's turn.
func (q *sequencer) reserve(ctx context.Context, tx *pgxpool.Conn, n int64) (first int64, g *turn, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	conn, last, err := q.advance(ctx, n)
	if err != nil {
		return 0, nil, err
	}
	first = last - n + 1
	hi, lo := seqKey(first)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::int, $2::int)", hi, lo); err != nil {
		// The group's connection failed: the Seqs are not handed out.
		if _, rerr := conn.Exec(ctx, "ROLLBACK"); rerr != nil {
			q.lost()
		}
		return 0, nil, err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		q.lost()
		return 0, nil, err
	}
	if err := q.ensureJobParts(ctx, conn, last); err != nil {
		q.lost()
		return 0, nil, err
	}
	q.noteAnalyze(first, last)
	g = &turn{prev: q.last, done: make(chan struct{})}
	q.last = g
	return first, g, nil
}

// advance begins seq_alloc's transaction on the session and takes n Seqs
// (step 1), returning the session and the last Seq taken.
func (q *sequencer) advance(ctx context.Context, n int64) (conn *pgx.Conn, last int64, err error) {
	for attempt := 0; ; attempt++ {
		if conn, err = q.session(ctx); err != nil {
			return nil, 0, err
		}
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue(lockSeqs)
		b.Queue(takeSeqs, n).QueryRow(func(row pgx.Row) error {
			return row.Scan(&last)
		})
		err = conn.SendBatch(ctx, b).Close()
		if err == nil {
			return conn, last, nil
		}
		closed := conn.IsClosed()
		q.lost()
		// A session that died while idle (a restarted server, a cut
		// connection) is only found dead now. Its transaction, if it
		// began, has rolled back: try once more on a new one.
		if !closed || attempt > 0 {
			return nil, 0, err
		}
		q.discardDial()
	}
}

// lost closes the session, whatever state it is in, and dials a new one in
// the background for the next group.
func (q *sequencer) lost() {
	q.hangUp()
	q.redial()
}

// discardDial drops a redial in progress, whose connection may be as dead
// as the one it replaces; the next session is dialed afresh.
func (q *sequencer) discardDial() {
	if q.dialing == nil {
		return
	}
	if conn := <-q.dialing; conn != nil {
		q.conn = conn
		q.hangUp()
	}
	q.dialing = nil
}

// session returns the sequencer's own connection, connecting when it has
// none. It is not the pool's: a group holds a pooled connection while it
// reserves, and a pool used up by groups would leave none for this.
func (q *sequencer) session(ctx context.Context) (*pgx.Conn, error) {
	if q.dialing != nil {
		// A redial is under way: take what it gets.
		select {
		case conn := <-q.dialing:
			q.dialing = nil
			if conn != nil {
				q.conn = conn
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if q.conn != nil && !q.conn.IsClosed() {
		return q.conn, nil
	}
	conn, err := q.dial(ctx)
	if err != nil {
		return nil, err
	}
	q.conn = conn
	return conn, nil
}

func (q *sequencer) dial(ctx context.Context) (*pgx.Conn, error) {
	cfg := q.s.pool.Config().ConnConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	// See sequencer: the jobs' commits make the counter durable.
	cfg.RuntimeParams["synchronous_commit"] = "off"
	return pgx.ConnectConfig(ctx, cfg)
}

// redial connects a new session in the background after the last one
// failed, so that the next group does not wait for a whole connection
// set-up after its own (when the server restarts, or cuts every
// connection, every group's pooled connection is new too). Called with mu
// held.
func (q *sequencer) redial() {
	if q.dialing != nil {
		return
	}
	ch := make(chan *pgx.Conn, 1)
	q.dialing = ch
	q.dials.Go(func() {
		conn, err := q.dial(q.s.ctx)
		if err != nil {
			conn = nil
		}
		ch <- conn
	})
}

// hangUp closes the session; the next reservation connects again.
func (q *sequencer) hangUp() {
	if q.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	q.conn.Close(ctx)
	q.conn = nil
}

// ensureJobParts creates the partitions that Seqs up to last need, and the
// next one when last has passed the middle of the highest partition, so that
// a partition is usually created a good while before its first job. They
// are created and committed in a transaction of their own, before any job
// goes into them, under an advisory lock that the nodes take to create job
// partitions (a group of another node may be creating the same ones).
func (q *sequencer) ensureJobParts(ctx context.Context, conn *pgx.Conn, last int64) error {
	s := q.s
	s.partMu.Lock()
	defer s.partMu.Unlock()
	span := s.opts.PartitionJobs
	if last+span/2 < s.partHi {
		return nil
	}
	var hi int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockJobParts)); err != nil {
			return err
		}
		// Another node may have created partitions: read the bound again
		// under the lock.
		if err := tx.QueryRow(ctx, partsTop, span).Scan(&hi); err != nil {
			return err
		}
		for ; last+span/2 >= hi; hi += span {
			if err := createJobParts(ctx, tx, hi, hi+span); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.partHi = hi
	}
	return err
}

// partsTop reads where the next jobs partition to create starts ($1 is
// PartitionJobs): past the highest one, or, when there is none (a cleanup
// dropped the last, drained, after retiring the counter), at the partition
// the next Seq falls in. Not at Seq 1: the partitions below the counter
// can get no job, and creating every one of them again, as a first version
// did, made a CREATE and a DROP TABLE of each each time a cleanup had
// dropped the last partition (79 of each every few seconds in a cluster
// whose counter was at 79,000,000).
const partsTop = `SELECT coalesce((SELECT max(hi) FROM job_parts), 1 + (SELECT last_seq FROM meta) / $1 * $1)`

// analyzeMarks are the offsets into a jobs partition at which it is
// analyzed, with its finished twin. A new partition has no statistics, and
// the planner then takes a queue's jobs for a few rows whatever their
// number: it plans Pending's anti-join with finished as a nested loop over
// a materialized scan, one pass of finished per job, which a backlog of a
// few thousand jobs turns into seconds (seen at 2,000 events/s). Autovacuum
// analyzes a partition only a minute or so after it has grown; these
// marks give it statistics from its first thousand jobs, and again as it
// grows, for a few ANALYZEs of 30,000 sampled rows each per partition.
var analyzeMarks = []int64{1 << 10, 1 << 14, 1 << 17, 1 << 19}

// noteAnalyze asks for an ANALYZE of the partition of last when Seqs
// first..last pass one of analyzeMarks in it. It never waits: a request the
// analyzer has no room for is dropped, and the next mark asks again.
func (q *sequencer) noteAnalyze(first, last int64) {
	span := q.s.opts.PartitionJobs
	lo := 1 + (last-1)/span*span
	from, to := first-lo, last-lo
	for _, m := range analyzeMarks {
		if m < span && from < m && m <= to {
			select {
			case q.analyze <- lo:
			default:
			}
			return
		}
	}
}

// analyzeLoop runs the ANALYZEs asked for, one at a time, until close.
func (q *sequencer) analyzeLoop() {
	defer close(q.stopped)
	for lo := range q.analyze {
		// In a transaction, so that a lock held elsewhere (a compaction,
		// a DROP) is waited for at most a moment, as a DROP waits for it.
		err := pgx.BeginFunc(q.s.ctx, q.s.pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(q.s.ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%s'; ANALYZE %s, %s",
				dropLockTimeout, jobPartName(lo), finishedPartName(lo)))
			return err
		})
		if err != nil && q.s.checkOpen() == nil {
			// A partition dropped meanwhile has nothing to plan for, and
			// a partition busy now is analyzed at its next mark.
			q.s.log.Debug("analyze jobs partition", "from", lo, "err", err)
		}
	}
}
