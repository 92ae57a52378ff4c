package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema's versions, applied in order; migration i
// brings the schema to version i+1. Append to it, never edit an entry that
// has shipped. See the package documentation for what each table is for.
var migrations = []string{
	// 1: the job store.
	`
CREATE TABLE meta (
	id          boolean PRIMARY KEY DEFAULT true CHECK (id),
	last_seq    bigint NOT NULL,
	dedupe_span bigint NOT NULL
);
CREATE TABLE queues (
	id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	source      text NOT NULL,
	destination text NOT NULL,
	drop_below  bigint NOT NULL DEFAULT 0,
	UNIQUE (source, destination)
);
CREATE TABLE jobs (
	queue_id    integer NOT NULL,
	seq         bigint NOT NULL,
	message_id  bytea NOT NULL,
	type        text NOT NULL,
	received_at bigint NOT NULL,
	payload     bytea NOT NULL,
	PRIMARY KEY (queue_id, seq)
) PARTITION BY RANGE (seq);
CREATE TABLE finished (
	queue_id integer NOT NULL,
	seq      bigint NOT NULL,
	PRIMARY KEY (queue_id, seq)
) PARTITION BY RANGE (seq);
CREATE TABLE job_parts (
	lo bigint PRIMARY KEY,
	hi bigint NOT NULL
);
CREATE TABLE retries (
	queue_id    integer NOT NULL,
	seq         bigint NOT NULL,
	due_at      bigint NOT NULL,
	attempts    integer NOT NULL,
	last_error  text NOT NULL,
	message_id  bytea NOT NULL,
	type        text NOT NULL,
	received_at bigint NOT NULL,
	payload     bytea NOT NULL,
	PRIMARY KEY (queue_id, seq)
);
CREATE INDEX retries_due ON retries (queue_id, due_at, seq);
CREATE TABLE dedupe (
	bucket     bigint NOT NULL,
	source     text NOT NULL,
	message_id bytea NOT NULL,
	stored_at  bigint NOT NULL,
	PRIMARY KEY (bucket, source, message_id)
) PARTITION BY RANGE (bucket);
`,
}

// lockMigrate, lockPartitions and lockCompact are the advisory lock keys of
// the store: one for migrations at start-up, one for creating and dropping
// dedupe partitions, one for rewriting a jobs partition (one node at a time).
const (
	lockMigrate    = 0x66616e6f75740001 // "fanout" 1
	lockPartitions = 0x66616e6f75740002
	lockCompact    = 0x66616e6f75740003
)

// migrate brings the schema up to date. It holds a session advisory lock
// while it reads the version and applies what is missing, so that nodes
// starting together apply each migration once: the second waits, then
// finds nothing to do. Each migration and its version row commit together.
func migrate(ctx context.Context, pool *pgxpool.Pool) (err error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(lockMigrate)); err != nil {
		return err
	}
	defer func() {
		// The lock is the session's: release it before the connection
		// goes back to the pool. Should this fail, drop the connection.
		if _, uerr := conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", int64(lockMigrate)); uerr != nil {
			conn.Conn().Close(context.Background())
			if err == nil {
				err = uerr
			}
		}
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	var version int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this fanout knows (%d): a newer fanout has used the database", version, len(migrations))
	}
	for v := version + 1; v <= len(migrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", v)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
	}
	return nil
}

// jobPartName and finishedPartName name the partitions of jobs and finished
// that hold Seqs from lo.
func jobPartName(lo int64) string      { return "jobs_p" + strconv.FormatInt(lo, 10) }
func finishedPartName(lo int64) string { return "finished_p" + strconv.FormatInt(lo, 10) }

// dedupePartName names the partition of dedupe bucket b.
func dedupePartName(b int64) string { return "dedupe_b" + strconv.FormatInt(b, 10) }

// createJobParts creates the partitions of jobs and finished for Seqs
// [lo, hi) in tx, and records them in job_parts. The tables are created
// apart and then attached, because ATTACH PARTITION takes only a SHARE
// UPDATE EXCLUSIVE lock on the parent, which blocks neither reads nor
// writes, where CREATE TABLE ... PARTITION OF takes an exclusive one. The
// caller holds the meta row's lock, so no other node creates partitions
// meanwhile.
func createJobParts(ctx context.Context, tx querier, lo, hi int64) error {
	var b strings.Builder
	for _, t := range []struct{ parent, name string }{
		{"jobs", jobPartName(lo)},
		{"finished", finishedPartName(lo)},
	} {
		fmt.Fprintf(&b, "CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS);\n", t.name, t.parent)
		fmt.Fprintf(&b, "ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%d) TO (%d);\n", t.parent, t.name, lo, hi)
	}
	fmt.Fprintf(&b, "INSERT INTO job_parts (lo, hi) VALUES (%d, %d);", lo, hi)
	_, err := tx.Exec(ctx, b.String())
	return err
}
