package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/pgmigrate"
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
	// 2: Seqs handed out apart from Seqs committed (see sequencer).
	`
CREATE TABLE seq_alloc (
	id       boolean PRIMARY KEY DEFAULT true CHECK (id),
	last_seq bigint NOT NULL
);
`,
}

// lockPartitions, lockCleanup and lockJobParts are the advisory lock keys
// of the store: one for creating and dropping dedupe partitions, one for
// each step of Cleanup on a jobs partition (one step at a time,
// database-wide; the key once guarded only the rewriting, so a node of an
// older version still compacts one at a time with the others), one for
// creating jobs partitions. (Migrations take pgmigrate.Lock; the group commits take
// two-key locks, see sequencer.)
const (
	lockPartitions = 0x66616e6f75740002
	lockCleanup    = 0x66616e6f75740003
	lockJobParts   = 0x66616e6f75740004
)

// migrate brings the schema up to date through the runner every component
// shares; the job store's versions are in schema_migrations.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return pgmigrate.Run(ctx, pool, "schema_migrations", migrations)
}

// jobPartName and finishedPartName name the partitions of jobs and finished
// that hold Seqs from lo.
func jobPartName(lo int64) string      { return "jobs_p" + strconv.FormatInt(lo, 10) }
func finishedPartName(lo int64) string { return "finished_p" + strconv.FormatInt(lo, 10) }

// dedupePartName names the partition of dedupe bucket b.
func dedupePartName(b int64) string { return "dedupe_b" + strconv.FormatInt(b, 10) }

// noAutovacuum is the storage of the partitions of jobs and finished. They
// are written once and dropped whole (never updated in place; a compaction
// writes a new table and deletes from that copy only): autovacuum would find
// nothing to reclaim in them, yet its insert-triggered pass over a
// partition that a backlog just filled reads all of it and, setting the
// pages all-visible, writes it again with full-page images in the WAL,
// which every commit then waits behind. Planner statistics, the one thing
// they need from it, the store gathers itself (analyzeMarks, and ANALYZE
// after a compaction); anti-wraparound vacuums still run, as they always do.
const noAutovacuum = "WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"

// createJobParts creates the partitions of jobs and finished for Seqs
// [lo, hi) in tx, and records them in job_parts. The tables are created
// apart and then attached, because ATTACH PARTITION takes only a SHARE
// UPDATE EXCLUSIVE lock on the parent, which blocks neither reads nor
// writes, where CREATE TABLE ... PARTITION OF takes an exclusive one. The
// caller holds lockJobParts, so no other node creates partitions
// meanwhile.
func createJobParts(ctx context.Context, tx querier, lo, hi int64) error {
	var b strings.Builder
	for _, t := range []struct{ parent, name string }{
		{"jobs", jobPartName(lo)},
		{"finished", finishedPartName(lo)},
	} {
		fmt.Fprintf(&b, "CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS) %s;\n", t.name, t.parent, noAutovacuum)
		fmt.Fprintf(&b, "ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%d) TO (%d);\n", t.parent, t.name, lo, hi)
	}
	fmt.Fprintf(&b, "INSERT INTO job_parts (lo, hi) VALUES (%d, %d);", lo, hi)
	_, err := tx.Exec(ctx, b.String())
	return err
}
