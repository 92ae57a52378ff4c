package postgres

import (
	"context"
	"errors"
	"fmt"
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
// that hold no pending job. Only partitions wholly below the committed Seq
// counter are considered: a group in flight has its Seqs above it. First,
// the partition the counter is in is retired when it is drained
// (retireTopPart), so that it can go too.
//
// A partition is drained when no queue has a job in it at or above its
// watermark without a finished row. The check probes the partition's
// primary key once per queue, from the queue's watermark, so a drained
// queue costs one index probe, not a scan of its jobs.
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
		live, err := s.partLive(ctx, p.lo)
		if err != nil {
			return dropped, err
		}
		if live {
			continue
		}
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%s'; DROP TABLE %s, %s; DELETE FROM job_parts WHERE lo = %d",
				dropLockTimeout, jobPartName(p.lo), finishedPartName(p.lo), p.lo))
			return err
		})
		if err != nil {
			return dropped, err
		}
		dropped += 2
		s.log.Debug("dropped drained jobs partition", "from", p.lo, "to", p.hi)
	}
	return dropped, nil
}

// partLive reports whether the jobs partition from lo holds a pending job.
func (s *Store) partLive(ctx context.Context, lo int64) (bool, error) {
	var live bool
	err := s.pool.QueryRow(ctx, fmt.Sprintf(`SELECT EXISTS (
		SELECT 1 FROM queues q, LATERAL (
			SELECT 1 FROM %s j
			WHERE j.queue_id = q.id AND j.seq >= q.drop_below
			  AND NOT EXISTS (SELECT 1 FROM %s f WHERE f.queue_id = j.queue_id AND f.seq = j.seq)
			LIMIT 1) x)`, jobPartName(lo), finishedPartName(lo))).Scan(&live)
	return live, err
}

// retireTopPart moves the Seq counter to the end of the partition it is in
// when every job of that partition has ended and the partition has used at
// least 1/64 of its Seqs. The next group then starts in the partition after
// it, and this one is dropped like any other. Without it, the partition a
// drained backlog ended in would keep its space until appends had filled
// it, which at a low rate can take days. The Seqs skipped are a gap, which
// Seqs may have.
//
// The check reads without the counter's lock, so a group may add jobs to
// the partition between the check and the move: the partition then stays
// until they end, like any other.
func (s *Store) retireTopPart(ctx context.Context) error {
	var lo, hi, last int64
	err := s.pool.QueryRow(ctx, `SELECT p.lo, p.hi, m.last_seq FROM job_parts p, meta m
		WHERE m.last_seq >= p.lo AND m.last_seq < p.hi`).Scan(&lo, &hi, &last)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if last-lo+1 < max(s.opts.PartitionJobs/64, 1) {
		return nil
	}
	live, err := s.partLive(ctx, lo)
	if err != nil || live {
		return err
	}
	_, err = s.pool.Exec(ctx, `UPDATE meta SET last_seq = $2 - 1 WHERE last_seq >= $1 AND last_seq < $2`, lo, hi)
	if err == nil {
		s.log.Debug("retired drained jobs partition", "from", lo, "to", hi, "last_seq", last)
	}
	return err
}

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
