package stats

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/pgmigrate"
)

// migrations are the versions of the stats tables, applied by pgmigrate
// with their versions in stats_schema_migrations. Append to it, never edit
// an entry that has shipped.
//
//	stats_minutes  (minute, source, destination, node) primary key, bucket:
//	               one minute of one pair as one node counted it, encoded
//	               as in the embedded store (bucket.appendBinary).
//	               Partitioned by range of minute, one partition per UTC
//	               day: stats_minutes_d<day> holds minutes
//	               [day*1440, (day+1)*1440)
//	stats_issues   (node, source, destination, id) primary key, last_seen,
//	               issue: one issue group as JSON (bytea, since jsonb
//	               refuses the \u0000 a reason may hold)
//	stats_gauges   (node, source, destination) primary key, pending, open:
//	               the node's running counts of the pair
var migrations = []string{
	// 1: the stats tables.
	`
CREATE TABLE stats_minutes (
	minute      bigint NOT NULL,
	source      text NOT NULL,
	destination text NOT NULL,
	node        text NOT NULL,
	bucket      bytea NOT NULL,
	PRIMARY KEY (minute, source, destination, node)
) PARTITION BY RANGE (minute);
CREATE TABLE stats_issues (
	node        text NOT NULL,
	source      text NOT NULL,
	destination text NOT NULL,
	id          bigint NOT NULL,
	last_seen   timestamptz NOT NULL,
	issue       bytea NOT NULL,
	PRIMARY KEY (node, source, destination, id)
);
CREATE TABLE stats_gauges (
	node        text NOT NULL,
	source      text NOT NULL,
	destination text NOT NULL,
	pending     bigint NOT NULL,
	open        bigint NOT NULL,
	PRIMARY KEY (node, source, destination)
);
`,
}

// lockParts is the advisory lock key held while stats_minutes partitions
// are created or dropped ("fanout" 0x11).
const lockParts = 0x66616e6f75740011

// minutesPerPart is the span of one stats_minutes partition: a day.
const minutesPerPart = 24 * 60

// PostgresOptions configures NewPostgres. The zero value is ready to use.
type PostgresOptions struct {
	// Node names this node's rows. Nodes sharing a database must have
	// different names, or they overwrite each other's counts; a node
	// must keep its name across restarts to read its gauges and issue
	// groups back. Default: the host name.
	Node string
	// Timeout bounds each round of statements (a flush, a query, a
	// prune). Default 10 s.
	Timeout time.Duration
	// Now is the clock that paces reads after a failed one. Default
	// time.Now.
	Now func() time.Time
}

// Defaults; see PostgresOptions.
const (
	DefaultPostgresTimeout = 10 * time.Second
	// getTimeout bounds the point read of an old minute, which Stats
	// makes with its lock held; getPause is how long reads fail at once
	// after one failed, so that a database that is down costs the
	// observers one timeout, not one per report.
	getTimeout = 2 * time.Second
	getPause   = 10 * time.Second
)

// Postgres keeps the stats in PostgreSQL, for nodes whose disks must hold
// nothing another node needs. Make one with NewPostgres and hand it to
// Open as Options.Backend.
//
// # Several nodes, one minute
//
// Any node may count an event of any minute: the node that took the
// event counts it received, the node that delivered it counts the
// delivery, and a retry hours later counts in the minute the event was
// received. So writes are kept apart per node rather than merged on
// write: each node writes its own row of a minute (the node is part of
// the key) and replaces it whole at every flush, as the embedded store
// does, and a query sums the rows of every node (scan hands each one to
// the caller, which adds them up; counts and latency sketches both merge
// by addition). A flush that is retried writes the same values again, so
// writes are idempotent, and no node ever reads another's row to write
// its own. Issue groups and gauges are per node the same way.
//
// Old minutes go a day at a time: Prune drops each whole day partition
// that lies before the retention, never row by row.
type Postgres struct {
	pool *pgxpool.Pool
	opts PostgresOptions

	mu    sync.Mutex
	parts map[int64]bool // day partitions known to exist
	// getFailed is when the last point read failed.
	getFailed time.Time
}

var _ Backend = (*Postgres)(nil)

// NewPostgres brings the stats tables in pool's database up to date and
// returns the backend. The pool stays the caller's: Stats.Close does not
// close it.
func NewPostgres(ctx context.Context, pool *pgxpool.Pool, opts PostgresOptions) (*Postgres, error) {
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("stats: PostgresOptions.Timeout cannot be negative, got %s", opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultPostgresTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("stats: PostgresOptions.Node is empty and the host name is unknown: %w", err)
		}
		opts.Node = h
	}
	if err := pgmigrate.Run(ctx, pool, "stats_schema_migrations", migrations); err != nil {
		return nil, fmt.Errorf("stats: migrate: %w", err)
	}
	return &Postgres{pool: pool, opts: opts, parts: map[int64]bool{}}, nil
}

func (pg *Postgres) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), pg.opts.Timeout)
}

func (pg *Postgres) close() error { return nil }

func (pg *Postgres) load(from int64, minute func(Pair, int64, []byte), gauge func(Pair, int64, int64), issue func([]byte)) error {
	ctx, cancel := pg.ctx()
	defer cancel()
	rows, _ := pg.pool.Query(ctx, `SELECT source, destination, minute, bucket FROM stats_minutes
		WHERE node = $1 AND minute >= $2`, pg.opts.Node, from)
	var p Pair
	var m int64
	var v []byte
	if _, err := pgx.ForEachRow(rows, []any{&p.Source, &p.Destination, &m, &v}, func() error {
		minute(p, m, v)
		return nil
	}); err != nil {
		return fmt.Errorf("stats/postgres: load minutes: %w", err)
	}
	var pending, open int64
	rows, _ = pg.pool.Query(ctx, `SELECT source, destination, pending, open FROM stats_gauges WHERE node = $1`, pg.opts.Node)
	if _, err := pgx.ForEachRow(rows, []any{&p.Source, &p.Destination, &pending, &open}, func() error {
		gauge(p, pending, open)
		return nil
	}); err != nil {
		return fmt.Errorf("stats/postgres: load gauges: %w", err)
	}
	rows, _ = pg.pool.Query(ctx, `SELECT issue FROM stats_issues WHERE node = $1`, pg.opts.Node)
	if _, err := pgx.ForEachRow(rows, []any{&v}, func() error {
		issue(v)
		return nil
	}); err != nil {
		return fmt.Errorf("stats/postgres: load issue groups: %w", err)
	}
	return nil
}

func (pg *Postgres) get(p Pair, minute int64) ([]byte, error) {
	pg.mu.Lock()
	failed := pg.getFailed
	pg.mu.Unlock()
	if now := pg.opts.Now(); !failed.IsZero() && now.Sub(failed) < getPause {
		return nil, errors.New("stats/postgres: read minute: the last read failed less than 10s ago")
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(getTimeout, pg.opts.Timeout))
	defer cancel()
	var v []byte
	err := pg.pool.QueryRow(ctx, `SELECT bucket FROM stats_minutes
		WHERE minute = $1 AND source = $2 AND destination = $3 AND node = $4`,
		minute, p.Source, p.Destination, pg.opts.Node).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		pg.mu.Lock()
		pg.getFailed = pg.opts.Now()
		pg.mu.Unlock()
		return nil, fmt.Errorf("stats/postgres: read minute: %w", err)
	}
	return v, nil
}

func (pg *Postgres) scan(from, to, ownTo int64, f *Filter, fn func(Pair, int64, string, []byte)) error {
	ctx, cancel := pg.ctx()
	defer cancel()
	// This node's minutes from ownTo on are in memory; other nodes' ones
	// are here only.
	rows, _ := pg.pool.Query(ctx, `SELECT source, destination, minute, CASE WHEN node = $3 THEN '' ELSE node END, bucket FROM stats_minutes
		WHERE minute >= $1 AND minute < $2 AND (node <> $3 OR minute < $4)
		AND ($5 = '' OR source = $5) AND ($6 = '' OR destination = $6)`,
		from, to, pg.opts.Node, ownTo, f.Source, f.Destination)
	var p Pair
	var m int64
	var node string
	var v []byte
	if _, err := pgx.ForEachRow(rows, []any{&p.Source, &p.Destination, &m, &node, &v}, func() error {
		fn(p, m, node, v)
		return nil
	}); err != nil {
		return fmt.Errorf("stats/postgres: scan: %w", err)
	}
	return nil
}

func (pg *Postgres) issueGroups(node string, refs []issueRef) ([][]byte, error) {
	ctx, cancel := pg.ctx()
	defer cancel()
	srcs, dsts, ids := make([]string, len(refs)), make([]string, len(refs)), make([]int64, len(refs))
	for i, r := range refs {
		srcs[i], dsts[i], ids[i] = r.pair.Source, r.pair.Destination, int64(r.id)
	}
	rows, _ := pg.pool.Query(ctx, `SELECT issue FROM stats_issues
		WHERE node = $1 AND (source, destination, id) IN (SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[]))`,
		node, srcs, dsts, ids)
	out, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, fmt.Errorf("stats/postgres: read issue groups of node %s: %w", node, err)
	}
	return out, nil
}

// otherGauges sums the gauge rows of the other nodes, the dead ones
// included: a gauge is a running difference (a node that took an event
// counts it open, the node that delivered it counts it ended), so only the
// sum over every node that ever counted is the cluster's.
func (pg *Postgres) otherGauges(fn func(Pair, int64, int64)) error {
	ctx, cancel := pg.ctx()
	defer cancel()
	rows, _ := pg.pool.Query(ctx, `SELECT source, destination, sum(pending)::bigint, sum(open)::bigint
		FROM stats_gauges WHERE node <> $1 GROUP BY source, destination`, pg.opts.Node)
	var p Pair
	var pending, open int64
	if _, err := pgx.ForEachRow(rows, []any{&p.Source, &p.Destination, &pending, &open}, func() error {
		fn(p, pending, open)
		return nil
	}); err != nil {
		return fmt.Errorf("stats/postgres: read the other nodes' gauges: %w", err)
	}
	return nil
}

// save writes w in one transaction, one statement per table, after making
// sure the day partitions of its minutes exist.
func (pg *Postgres) save(w *writes) error {
	ctx, cancel := pg.ctx()
	defer cancel()
	if err := pg.ensureParts(ctx, w.minutes); err != nil {
		return fmt.Errorf("stats/postgres: create partitions: %w", err)
	}
	node := pg.opts.Node
	var b pgx.Batch
	if len(w.minutes) > 0 {
		ms, srcs, dsts, vs := make([]int64, len(w.minutes)), make([]string, len(w.minutes)), make([]string, len(w.minutes)), make([][]byte, len(w.minutes))
		for i, m := range w.minutes {
			ms[i], srcs[i], dsts[i], vs[i] = m.minute, m.pair.Source, m.pair.Destination, m.v
		}
		b.Queue(`INSERT INTO stats_minutes (minute, source, destination, node, bucket)
			SELECT m, s, d, $5, b FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[]) AS t(m, s, d, b)
			ON CONFLICT (minute, source, destination, node) DO UPDATE SET bucket = excluded.bucket`,
			ms, srcs, dsts, vs, node)
	}
	if len(w.issues) > 0 {
		n := len(w.issues)
		srcs, dsts, ids, seen, vs := make([]string, n), make([]string, n), make([]int64, n), make([]time.Time, n), make([][]byte, n)
		for i, is := range w.issues {
			srcs[i], dsts[i], ids[i], seen[i], vs[i] = is.pair.Source, is.pair.Destination, int64(is.id), is.lastSeen, is.v
		}
		b.Queue(`INSERT INTO stats_issues (node, source, destination, id, last_seen, issue)
			SELECT $6, s, d, i, l, v FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bytea[]) AS t(s, d, i, l, v)
			ON CONFLICT (node, source, destination, id) DO UPDATE SET last_seen = excluded.last_seen, issue = excluded.issue`,
			srcs, dsts, ids, seen, vs, node)
	}
	if len(w.gauges) > 0 {
		n := len(w.gauges)
		srcs, dsts, pend, open := make([]string, n), make([]string, n), make([]int64, n), make([]int64, n)
		for i, g := range w.gauges {
			srcs[i], dsts[i], pend[i], open[i] = g.pair.Source, g.pair.Destination, g.pending, g.open
		}
		b.Queue(`INSERT INTO stats_gauges (node, source, destination, pending, open)
			SELECT $5, s, d, p, o FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(s, d, p, o)
			ON CONFLICT (node, source, destination) DO UPDATE SET pending = excluded.pending, open = excluded.open`,
			srcs, dsts, pend, open, node)
	}
	err := pgx.BeginFunc(ctx, pg.pool, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		// A partition may have been dropped under us (by a node whose
		// clock runs ahead): look again next time.
		pg.mu.Lock()
		clear(pg.parts)
		pg.mu.Unlock()
		return fmt.Errorf("stats/postgres: save: %w", err)
	}
	return nil
}

func partName(day int64) string { return "stats_minutes_d" + strconv.FormatInt(day, 10) }

// ensureParts creates the day partitions that minutes need and that are
// not known to exist, under the partition lock so that nodes take turns.
func (pg *Postgres) ensureParts(ctx context.Context, minutes []minuteRow) error {
	var missing []int64
	pg.mu.Lock()
	for _, m := range minutes {
		d := floorDiv(m.minute, minutesPerPart)
		if !pg.parts[d] {
			pg.parts[d] = true // one entry in missing per day
			missing = append(missing, d)
		}
	}
	pg.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, pg.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockParts)); err != nil {
			return err
		}
		var sql strings.Builder
		for _, d := range missing {
			fmt.Fprintf(&sql, "CREATE TABLE IF NOT EXISTS %s PARTITION OF stats_minutes FOR VALUES FROM (%d) TO (%d);\n",
				partName(d), d*minutesPerPart, (d+1)*minutesPerPart)
		}
		_, err := tx.Exec(ctx, sql.String())
		return err
	})
	if err != nil {
		pg.mu.Lock()
		for _, d := range missing {
			delete(pg.parts, d)
		}
		pg.mu.Unlock()
	}
	return err
}

// prune drops the day partitions wholly before cut, and the issue groups
// of every node last seen before it: those of a node that is gone too.
// A DROP needs an ACCESS EXCLUSIVE lock on stats_minutes; it waits at most
// 200 ms for it, so that it never queues the flushes behind it, and is
// tried again at the next prune.
func (pg *Postgres) prune(cut int64, _ []issueRef) error {
	ctx, cancel := pg.ctx()
	defer cancel()
	err := pgx.BeginFunc(ctx, pg.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockParts)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '200ms'"); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'stats_minutes'::regclass`)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		var sql strings.Builder
		var dropped []int64
		for _, n := range names {
			d, err := strconv.ParseInt(strings.TrimPrefix(n, "stats_minutes_d"), 10, 64)
			if err != nil || (d+1)*minutesPerPart > cut {
				continue
			}
			fmt.Fprintf(&sql, "DROP TABLE %s;\n", n)
			dropped = append(dropped, d)
		}
		if sql.Len() > 0 {
			if _, err := tx.Exec(ctx, sql.String()); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, "DELETE FROM stats_issues WHERE last_seen < $1", time.Unix(cut*60, 0)); err != nil {
			return err
		}
		pg.mu.Lock()
		for _, d := range dropped {
			delete(pg.parts, d)
		}
		pg.mu.Unlock()
		return nil
	})
	if err != nil {
		return fmt.Errorf("stats/postgres: prune: %w", err)
	}
	return nil
}

// floorDiv divides rounding toward minus infinity, so that minutes before
// 1970 (a clock gone wrong) still fall in the right day.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
