package archive

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/pgmigrate"
)

// migrations are the versions of the archive table, applied by pgmigrate
// with their versions in archive_schema_migrations. Append to it, never
// edit an entry that has shipped.
//
//	archive  (source, destination, received_at, seq) primary key,
//	         message_id, archived_at, attempts, last_error, event: one
//	         archived job, its event's payload as the job store kept it.
//	         received_at and archived_at are Unix nanoseconds; seq keeps
//	         the order of writes among equal received_at. message_id and
//	         last_error are bytea, since text refuses NUL bytes and
//	         invalid UTF-8, which neither is promised not to hold.
//	         Partitioned by range of received_at, one partition per UTC
//	         month: archive_m<yyyymm>. The primary key is the index Scan
//	         reads, and a replay's range touches only its months.
var migrations = []string{
	// 1: the archive table.
	`
CREATE SEQUENCE archive_seq;
CREATE TABLE archive (
	source      text NOT NULL,
	destination text NOT NULL,
	received_at bigint NOT NULL,
	seq         bigint NOT NULL DEFAULT nextval('archive_seq'),
	message_id  bytea NOT NULL,
	archived_at bigint NOT NULL,
	attempts    integer NOT NULL,
	last_error  bytea NOT NULL,
	event       bytea NOT NULL,
	PRIMARY KEY (source, destination, received_at, seq)
) PARTITION BY RANGE (received_at);
`,
}

// lockParts is the advisory lock key held while archive partitions are
// created ("fanout" 0x21).
const lockParts = 0x66616e6f75740021

// PostgresTimeout bounds each Write and Scan.
const PostgresTimeout = time.Minute

// Postgres keeps archived jobs in the archive table of a PostgreSQL
// database shared by the nodes, so that `fanout replay` on any node finds
// what any node archived. It is safe for concurrent use.
//
// Nothing is deleted, as with the files; a month no longer wanted goes
// whole, with DROP TABLE archive_m<yyyymm>.
type Postgres struct {
	pool *pgxpool.Pool

	mu    sync.Mutex
	parts map[string]bool // month partitions known to exist
}

// NewPostgres brings the archive table in pool's database up to date and
// returns the archive. The pool stays the caller's.
func NewPostgres(ctx context.Context, pool *pgxpool.Pool) (*Postgres, error) {
	if err := pgmigrate.Run(ctx, pool, "archive_schema_migrations", migrations); err != nil {
		return nil, fmt.Errorf("archive: migrate: %w", err)
	}
	return &Postgres{pool: pool, parts: map[string]bool{}}, nil
}

// Write stores recs with one COPY, after creating the month partitions
// they need. t is unused: each record carries its ArchivedAt. A COPY is
// one statement, so either every record is stored or none is, and it
// returns after the commit is durable.
func (p *Postgres) Write(q jobstore.Queue, t time.Time, recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), PostgresTimeout)
	defer cancel()
	if err := p.ensureParts(ctx, recs); err != nil {
		return fmt.Errorf("archive: %d jobs of %s -> %s: create partitions: %w", len(recs), q.Source, q.Destination, err)
	}
	rows := make([][]any, len(recs))
	for i, r := range recs {
		rows[i] = []any{q.Source, q.Destination, r.ReceivedAt.UnixNano(), []byte(r.MessageID),
			r.ArchivedAt.UnixNano(), int32(r.Attempts), []byte(r.LastError), []byte(r.Event)}
	}
	_, err := p.pool.CopyFrom(ctx, pgx.Identifier{"archive"},
		[]string{"source", "destination", "received_at", "message_id", "archived_at", "attempts", "last_error", "event"},
		pgx.CopyFromRows(rows))
	if err != nil {
		// A partition may have been dropped by hand: look again next time.
		p.mu.Lock()
		clear(p.parts)
		p.mu.Unlock()
		return fmt.Errorf("archive: %d jobs of %s -> %s: %w", len(recs), q.Source, q.Destination, err)
	}
	return nil
}

// Scan returns the records of q received in [from, to), in order of
// receivedAt, then of writing.
func (p *Postgres) Scan(q jobstore.Queue, from, to time.Time) ([]Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), PostgresTimeout)
	defer cancel()
	rows, _ := p.pool.Query(ctx, `SELECT received_at, message_id, archived_at, attempts, last_error, event FROM archive
		WHERE source = $1 AND destination = $2 AND received_at >= $3 AND received_at < $4
		ORDER BY received_at, seq`, q.Source, q.Destination, from.UnixNano(), to.UnixNano())
	var out []Record
	var received, archived int64
	var id, lastErr, ev []byte
	var attempts int32
	_, err := pgx.ForEachRow(rows, []any{&received, &id, &archived, &attempts, &lastErr, &ev}, func() error {
		out = append(out, Record{
			Source: q.Source, Destination: q.Destination, MessageID: string(id),
			ReceivedAt: time.Unix(0, received).UTC(), ArchivedAt: time.Unix(0, archived).UTC(),
			Attempts: int(attempts), LastError: string(lastErr), Event: append([]byte(nil), ev...),
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("archive: scan %s -> %s: %w", q.Source, q.Destination, err)
	}
	return out, nil
}

// month returns the partition name of the UTC month of t and its bounds in
// Unix nanoseconds.
func month(t time.Time) (name string, lo, hi int64) {
	t = t.UTC()
	start := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	return "archive_m" + start.Format("200601"), start.UnixNano(), start.AddDate(0, 1, 0).UnixNano()
}

// ensureParts creates the month partitions recs need that are not known
// to exist, under the partition lock so that nodes take turns. It happens
// once a month per node: CREATE TABLE ... PARTITION OF locks the parent.
func (p *Postgres) ensureParts(ctx context.Context, recs []Record) error {
	var sql strings.Builder
	var created []string
	p.mu.Lock()
	for _, r := range recs {
		name, lo, hi := month(r.ReceivedAt)
		if p.parts[name] {
			continue
		}
		p.parts[name] = true
		created = append(created, name)
		fmt.Fprintf(&sql, "CREATE TABLE IF NOT EXISTS %s PARTITION OF archive FOR VALUES FROM (%d) TO (%d);\n", name, lo, hi)
	}
	p.mu.Unlock()
	if len(created) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockParts)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sql.String())
		return err
	})
	if err != nil {
		p.mu.Lock()
		for _, n := range created {
			delete(p.parts, n)
		}
		p.mu.Unlock()
	}
	return err
}
