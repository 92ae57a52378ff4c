package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// cleanLoop calls Cleanup every CleanupInterval until the store closes.
func (s *Store) cleanLoop() {
	defer s.done.Done()
	t := time.NewTicker(s.opts.CleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		if _, err := s.Cleanup(s.ctx); err != nil && s.checkOpen() == nil {
			s.log.Warn("cleanup", "err", err)
		}
	}
}

// dropLockTimeout bounds how long a DROP waits for its lock. A DROP waiting
// for its ACCESS EXCLUSIVE lock queues every later reader of the table
// behind it, so it gives up soon and tries again at the next cleanup.
const dropLockTimeout = "200ms"

// Cleanup drops, a whole partition at a time, the jobs partitions whose
// every job has ended and the dedupe partitions that have left the window.
// It returns how many tables it dropped. The store calls it every
// CleanupInterval; it is exported for tests and tools.
func (s *Store) Cleanup(ctx context.Context) (dropped int, err error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	n, err := s.dropDrainedJobParts(ctx)
	dropped += n
	if err != nil {
		return dropped, wrapErr("cleanup", err)
	}
	n, err = s.dropExpiredDedupeParts(ctx)
	dropped += n
	return dropped, wrapErr("cleanup", err)
}

// dropDrainedJobParts drops the jobs partitions (and their finished twins)
// that hold no pending job, and compacts those that hold few. Only
// partitions wholly below the committed Seq counter are considered: a
// group in flight has its Seqs above it. First, the partition the counter
// is in is retired when it is drained (retireTopPart), so that it can go
// too.
//
// A partition is drained when no queue has a job in it at or above its
// watermark without a finished row. The check probes the partition's
// primary key once per queue, from the queue's watermark, so a drained
// queue costs one index probe, not a scan of its jobs.
//
// The nodes of a cluster share the partitions, and each runs Cleanup on
// its own ticker, from a listing that another node may make stale at any
// moment: two nodes listing the same drained partition both checked it
// and dropped it, and the later one failed on the table the other had
// just dropped ("jobs_p1 does not exist"), in the check, the DROP or a
// compaction. So each step on a partition (the retirement, a check and
// its DROP, a compaction) is a transaction that first takes lockCleanup
// and then finds the partition still listed in job_parts (inCleanup):
// database-wide one step at a time, each on what is there now. Every
// drained partition is dropped once, by whichever node comes first; the
// others find it gone and go on. The steps stay short transactions of
// their own, as the table locks of a DROP are held until its transaction
// ends, and the advisory lock is taken before any table lock, so waiting
// for it never holds up a reader.
func (s *Store) dropDrainedJobParts(ctx context.Context) (int, error) {
	if err := s.retireTopPart(ctx); err != nil {
		return 0, err
	}
	rows, err := s.pool.Query(ctx, `SELECT p.lo, p.hi FROM job_parts p, meta m WHERE p.hi <= m.last_seq + 1 ORDER BY p.lo`)
	if err != nil {
		return 0, err
	}
	type part struct{ lo, hi int64 }
	parts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (part, error) {
		var p part
		err := row.Scan(&p.lo, &p.hi)
		return p, err
	})
	if err != nil {
		return 0, err
	}
	dropped := 0
	for _, p := range parts {
		var live bool
		there, err := s.inCleanup(ctx, p.lo, func(tx pgx.Tx) (err error) {
			if live, err = partLive(ctx, tx, p.lo); err != nil || live {
				return err
			}
			_, err = tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%s'; DROP TABLE %s, %s; DELETE FROM job_parts WHERE lo = %d",
				dropLockTimeout, jobPartName(p.lo), finishedPartName(p.lo), p.lo))
			return err
		})
		switch {
		case err != nil:
			return dropped, err
		case !there:
		case live:
			n, err := s.compactJobPart(ctx, p.lo, p.hi)
			if err != nil {
				return dropped, err
			}
			dropped += n
		default:
			dropped += 2
			s.log.Debug("dropped drained jobs partition", "from", p.lo, "to", p.hi)
		}
	}
	return dropped, nil
}

// inCleanup runs step in a transaction that holds lockCleanup, if the jobs
// partition from lo is still there once the lock is held (another node
// may have dropped it since it was listed). It reports whether it was.
func (s *Store) inCleanup(ctx context.Context, lo int64, step func(tx pgx.Tx) error) (there bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockCleanup)); err != nil {
			return err
		}
		// A statement of its own: a statement's snapshot is taken when it
		// starts, before a wait for the lock, and would still show a
		// partition dropped meanwhile.
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM job_parts WHERE lo = $1)", lo).Scan(&there); err != nil || !there {
			return err
		}
		return step(tx)
	})
	return there, err
}

// partLive reports whether the jobs partition from lo holds a pending job.
// ORDER BY keeps the probe on the primary key: without it the planner took
// a sequential scan of the partition, expecting to meet a pending job
// early, and read all 300,000 drained jobs of a backlog (0.4 to 0.75 s)
// at every cleanup.
func partLive(ctx context.Context, tx pgx.Tx, lo int64) (bool, error) {
	var live bool
	err := tx.QueryRow(ctx, fmt.Sprintf(`SELECT EXISTS (
		SELECT 1 FROM queues q, LATERAL (
			SELECT 1 FROM %s j
			WHERE j.queue_id = q.id AND j.seq >= q.drop_below
			  AND NOT EXISTS (SELECT 1 FROM %s f WHERE f.queue_id = j.queue_id AND f.seq = j.seq)
			ORDER BY j.seq
			LIMIT 1) x)`, jobPartName(lo), finishedPartName(lo))).Scan(&live)
	return live, err
}

// compactJobPart rewrites the jobs partition from lo when few of its jobs
// are pending: a queue whose destination is down keeps every partition it
// has jobs in, and its few jobs would keep each partition's whole space.
// The pending jobs are copied, with their Seqs (so Pending's order holds),
// into a new table for the same range, which takes the partition's place;
// the old partition and its finished twin are dropped. It returns the
// number of tables dropped: 2, or 0 when the partition holds too many
// pending jobs (over 1/64 of its span, or over 1/8 of its rows) to be worth
// it, or when another node dropped it meanwhile. It holds lockCleanup
// (inCleanup), so the nodes compact one at a time, and a node that waited
// for another's compaction of the same partition finds it compacted.
//
// Step by step, in one transaction:
//
//  1. Count the pending jobs, up to the limit, by one index probe per
//     queue from its watermark.
//  2. Copy them into a new table, with its primary key and a CHECK of the
//     range built there, and an empty finished table likewise: no lock on
//     jobs or finished is taken yet, so appends and reads go on.
//  3. Detach the old pair (ACCESS EXCLUSIVE on jobs and finished, waited
//     for at most dropLockTimeout, as for a DROP). Copied jobs that ended
//     meanwhile (a finished row, or below a watermark that moved) are
//     deleted from the copy: under the lock no more can end.
//  4. Attach the new pair for the same range (the CHECK spares the scan,
//     the primary key the index build), drop the old one, take its names.
//
// The lock is held for step 3 and 4 only: a few small statements.
func (s *Store) compactJobPart(ctx context.Context, lo, hi int64) (int, error) {
	limit := max(s.opts.PartitionJobs/64, 1)
	jobs, fin := jobPartName(lo), finishedPartName(lo)
	newJobs, newFin := jobs+"_c", fin+"_c"
	live := `SELECT j.* FROM queues q, LATERAL (
		SELECT * FROM ` + jobs + ` j
		WHERE j.queue_id = q.id AND j.seq >= q.drop_below
		  AND NOT EXISTS (SELECT 1 FROM ` + fin + ` f WHERE f.queue_id = j.queue_id AND f.seq = j.seq)
		ORDER BY j.seq LIMIT %d) j`
	compacted := false
	_, err := s.inCleanup(ctx, lo, func(tx pgx.Tx) error {
		var n int64
		var rows float64
		if err := tx.QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT count(*) FROM (`+live+` LIMIT %d) x),
			(SELECT reltuples FROM pg_class WHERE oid = '%s'::regclass)`, limit+1, limit+1, jobs)).Scan(&n, &rows); err != nil {
			return err
		}
		if rows < 0 { // never vacuumed nor analyzed: at most one job per Seq
			rows = float64(hi - lo)
		}
		if n > limit || float64(n)*8 > rows {
			return nil
		}
		var b strings.Builder
		for _, t := range []struct{ parent, name string }{{"jobs", newJobs}, {"finished", newFin}} {
			fmt.Fprintf(&b, "CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS) %s;\n", t.name, t.parent, noAutovacuum)
		}
		fmt.Fprintf(&b, "INSERT INTO %s %s ORDER BY j.queue_id, j.seq;\n", newJobs, fmt.Sprintf(live, limit+1))
		for _, t := range []string{newJobs, newFin} {
			fmt.Fprintf(&b, "ALTER TABLE %[1]s ADD PRIMARY KEY (queue_id, seq), ADD CONSTRAINT %[1]s_range CHECK (seq >= %[2]d AND seq < %[3]d);\n", t, lo, hi)
		}
		fmt.Fprintf(&b, "ANALYZE %s;\n", newJobs)
		if _, err := tx.Exec(ctx, b.String()); err != nil {
			return err
		}
		b.Reset()
		fmt.Fprintf(&b, "SET LOCAL lock_timeout = '%s';\n", dropLockTimeout)
		fmt.Fprintf(&b, "ALTER TABLE jobs DETACH PARTITION %s;\n", jobs)
		fmt.Fprintf(&b, "ALTER TABLE finished DETACH PARTITION %s;\n", fin)
		fmt.Fprintf(&b, `DELETE FROM %[1]s c WHERE EXISTS (SELECT 1 FROM %[2]s f WHERE f.queue_id = c.queue_id AND f.seq = c.seq)
			OR c.seq < (SELECT q.drop_below FROM queues q WHERE q.id = c.queue_id);`+"\n", newJobs, fin)
		for _, t := range []struct{ parent, old, name string }{{"jobs", jobs, newJobs}, {"finished", fin, newFin}} {
			fmt.Fprintf(&b, "ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%d) TO (%d);\n", t.parent, t.name, lo, hi)
			fmt.Fprintf(&b, "DROP TABLE %s;\n", t.old)
			fmt.Fprintf(&b, "ALTER TABLE %s DROP CONSTRAINT %s_range;\n", t.name, t.name)
			fmt.Fprintf(&b, "ALTER TABLE %s RENAME TO %s;\n", t.name, t.old)
			fmt.Fprintf(&b, "ALTER INDEX %s_pkey RENAME TO %s_pkey;\n", t.name, t.old)
		}
		if _, err := tx.Exec(ctx, b.String()); err != nil {
			return err
		}
		compacted = true
		s.log.Debug("compacted jobs partition", "from", lo, "to", hi, "pending", n)
		return nil
	})
	if err != nil || !compacted {
		return 0, err
	}
	return 2, nil
}

// retireBytes is the size from which a drained partition that the Seq
// counter is in is retired, however few of its Seqs it has used: a
// drained store keeps at most that much of ended jobs. Retiring costs the
// next group the creation of a partition pair, so it is done at most once
// per retireBytes of jobs (or per 1/64 of a partition's Seqs).
const retireBytes = 1 << 20

// retireTopPart moves the Seq counter to the end of the partition it is in
// when every job of that partition has ended and the partition has used at
// least 1/64 of its Seqs or holds retireBytes. The next group then starts
// in the partition after it, and this one is dropped like any other.
// Without it, the partition a drained backlog ended in would keep its space
// until appends had filled it, which at a low rate can take days (the
// 1,000,000-event backlog scenario left 7,000 drained jobs, 3.4 MB, in a
// partition that had used 0.7% of its Seqs). The Seqs skipped are a gap,
// which Seqs may have.
//
// The check reads without the counter's lock, so a group may add jobs to
// the partition between the check and the move: the partition then stays
// until they end, like any other. The move is made only while no group
// is in flight (the Seqs handed out, seq_alloc, are all committed or
// rolled back, meta): the jobs of a group in flight are not visible yet,
// and must not end up below a counter that says every Seq up to it is
// committed.
func (s *Store) retireTopPart(ctx context.Context) error {
	var lo, hi, last int64
	err := s.pool.QueryRow(ctx, `SELECT p.lo, p.hi, m.last_seq FROM job_parts p, meta m
		WHERE m.last_seq >= p.lo AND m.last_seq < p.hi - 1`).Scan(&lo, &hi, &last)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = s.inCleanup(ctx, lo, func(tx pgx.Tx) error {
		if last-lo+1 < max(s.opts.PartitionJobs/64, 1) {
			var size int64
			if err := tx.QueryRow(ctx, "SELECT pg_total_relation_size($1::regclass)", jobPartName(lo)).Scan(&size); err != nil {
				return err
			}
			if size < retireBytes {
				return nil
			}
		}
		live, err := partLive(ctx, tx, lo)
		if err != nil || live {
			return err
		}
		tag, err := tx.Exec(ctx, retireCounter, lo, hi)
		if err == nil && tag.RowsAffected() > 0 {
			s.log.Debug("retired drained jobs partition", "from", lo, "to", hi, "last_seq", last)
		}
		return err
	})
	return err
}

// retireCounter moves the counter from inside the partition [$1, $2) to
// its end, when no Seq handed out is still in flight: seq_alloc says no
// more than meta. Its row lock, held until the move commits, makes a
// group taking Seqs meanwhile wait and then start past the moved counter
// (see takeSeqs).
const retireCounter = `UPDATE meta SET last_seq = $2 - 1 WHERE last_seq >= $1 AND last_seq < $2 - 1
	AND last_seq = (SELECT a.last_seq FROM seq_alloc a FOR UPDATE)`

// dropExpiredDedupeParts drops the dedupe buckets that can no longer hold a
// record from the window: every bucket before the previous one.
func (s *Store) dropExpiredDedupeParts(ctx context.Context) (int, error) {
	current := s.opts.Now().UnixNano() / s.span
	dropped := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockPartitions)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+dropLockTimeout+"'"); err != nil {
			return err
		}
		parts, err := dedupeParts(ctx, tx)
		if err != nil {
			return err
		}
		for b := range parts {
			if b < current-1 {
				if _, err := tx.Exec(ctx, "DROP TABLE "+dedupePartName(b)); err != nil {
					return err
				}
				dropped++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return dropped, nil
}
