package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/groupcommit"
)

// Compile-time check that Store implements the interface.
var _ jobstore.Store = (*Store)(nil)

// ErrClosed is returned by every call on a closed Store. It wraps
// jobstore.ErrUnavailable, because to the tracking API a closed store is one
// that cannot take writes.
var ErrClosed = fmt.Errorf("jobstore/postgres: closed: %w", jobstore.ErrUnavailable)

// Options configures a Store. The zero value is ready to use.
type Options struct {
	// DedupeWindow is how long a (source, messageId) pair is remembered: an
	// event appended less than DedupeWindow after the same pair was stored is
	// a duplicate. Default jobstore.DefaultDedupeWindow (24h); it cannot be
	// negative. It also sets the span
	// of a dedupe partition, so every node sharing a database must use the
	// same window; a store opened with another window than the database's
	// forgets the stored pairs (and says so in the log).
	DedupeWindow time.Duration
	// Now is the clock used for the dedupe window. Default time.Now; tests
	// inject a fake one so that they never sleep.
	Now func() time.Time
	// Logger receives the store's log lines. Default slog.Default().
	Logger *slog.Logger
	// Applied, when set, hears of the jobs of every Append call (see
	// jobstore.AppliedFunc) once its group has committed, before Append
	// returns.
	Applied jobstore.AppliedFunc
	// PartitionJobs is how many Seqs one partition of the jobs table spans.
	// A partition is dropped, whole, once every job in it has ended.
	// Default 1,000,000; it cannot be negative.
	PartitionJobs int64
	// CleanupInterval is how often the store looks for drained partitions
	// and expired dedupe partitions to drop. Default 10s; negative turns
	// the background cleanup off (tests call Cleanup themselves).
	CleanupInterval time.Duration
	// MaxConns bounds the connection pool. Default 8.
	MaxConns int32
	// Cluster, when set, is the node's membership of the cluster sharing
	// the database (a *cluster.Node): each group commit wakes the owners of
	// its jobs' partitions (QueueNotify, delivered on commit; Committed
	// once it has: partitions the node owns are left to Applied, which
	// must then reach the node's own engine), and
	// Apply writes only under the leases of the partitions it touches
	// (cluster.FenceAll), failing with jobstore.ErrFenced otherwise.
	Cluster Cluster
}

// Cluster is what the store needs of a cluster node.
type Cluster interface {
	PartitionOf(q jobstore.Queue) int
	Owns(p int) (token int64, ok bool)
	QueueNotify(b *pgx.Batch, partitions []int) cluster.Notice
	Committed(ctx context.Context, nt cluster.Notice)
}

// Defaults; see Options.
const (
	DefaultPartitionJobs   = 1_000_000
	DefaultCleanupInterval = 10 * time.Second
	DefaultMaxConns        = 8
	// DefaultConnectTimeout bounds each connection attempt when the DSN
	// sets no connect_timeout.
	DefaultConnectTimeout = 5 * time.Second
)

func (o *Options) setDefaults() error {
	if o.DedupeWindow < 0 {
		return fmt.Errorf("DedupeWindow cannot be negative, got %s", o.DedupeWindow)
	}
	if o.PartitionJobs < 0 {
		return fmt.Errorf("PartitionJobs cannot be negative, got %d", o.PartitionJobs)
	}
	if o.MaxConns < 0 {
		return fmt.Errorf("MaxConns cannot be negative, got %d", o.MaxConns)
	}
	if o.DedupeWindow == 0 {
		o.DedupeWindow = jobstore.DefaultDedupeWindow
	}
	if o.PartitionJobs == 0 {
		o.PartitionJobs = DefaultPartitionJobs
	}
	if o.CleanupInterval == 0 {
		o.CleanupInterval = DefaultCleanupInterval
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Store is the PostgreSQL job store. See the package documentation for its
// tables.
type Store struct {
	pool *pgxpool.Pool
	opts Options
	log  *slog.Logger
	// span is the dedupe bucket span in nanoseconds: the window.
	span int64

	// appends is the group committer of Append calls, seqr hands out
	// their Seqs (see startCommits).
	appends *groupcommit.Committer[*appendReq]
	seqr    *sequencer
	closing chan struct{}
	// stop ends the committer's and the cleaner's work in progress when
	// Close gives up waiting... it never does: it is canceled after they
	// returned, for the pool's sake.
	ctx       context.Context
	stop      context.CancelFunc
	done      sync.WaitGroup
	closeOnce sync.Once

	// reads is what Pending showed of each queue, which lets Apply move
	// watermarks instead of writing finished rows.
	reads *reads

	// mu guards the queue id cache. Queue ids never change once assigned.
	mu       sync.RWMutex
	queueIDs map[jobstore.Queue]int32

	// What the group commits know of the partitions: partMu guards
	// partHi, dedupeMu dedupeParts.
	partMu      sync.Mutex
	partHi      int64 // upper bound of the highest jobs partition
	dedupeMu    sync.Mutex
	dedupeParts map[int64]bool // dedupe partitions known to exist
}

// Open connects to the database that dsn names, brings its schema up to
// date and starts the committer. Close releases it. Errors never include
// the DSN's password.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("jobstore/postgres: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx redacts the password from its parse errors.
		return nil, fmt.Errorf("jobstore/postgres: %w", err)
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// Without connect_timeout in the DSN, a connection to a host that
		// does not answer waits for the operating system to give up
		// (minutes); the callers, and the tracking API's clients, should hear
		// that the database is unavailable well before.
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	if _, set := cfg.ConnConfig.RuntimeParams["jit"]; !set {
		// The store's statements read a few rows by index, but a table
		// not yet analyzed (a partition just filled by a backlog) makes
		// the planner's estimate large enough for PostgreSQL to compile
		// the plan: 120 to 390 ms of JIT for a read that runs in 0.2 ms
		// (EXPLAIN ANALYZE of Pending in a 300,000-job drain).
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("jobstore/postgres: %w", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	s := &Store{
		pool:        pool,
		opts:        opts,
		log:         opts.Logger.With("component", "jobstore", "database", cfg.ConnConfig.Database, "host", cfg.ConnConfig.Host),
		span:        int64(opts.DedupeWindow),
		closing:     make(chan struct{}),
		ctx:         sctx,
		stop:        stop,
		queueIDs:    make(map[jobstore.Queue]int32),
		reads:       newReads(),
		dedupeParts: make(map[int64]bool),
	}
	if err := s.init(ctx); err != nil {
		stop()
		pool.Close()
		return nil, wrapErr("open", err)
	}
	if err := s.startCommits(); err != nil {
		stop()
		pool.Close()
		return nil, fmt.Errorf("jobstore/postgres: %w", err)
	}
	if opts.CleanupInterval > 0 {
		s.done.Add(1)
		go s.cleanLoop()
	}
	return s, nil
}

// init migrates the schema and loads what the committer keeps in memory.
func (s *Store) init(ctx context.Context) error {
	if err := migrate(ctx, s.pool); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockPartitions)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO meta (last_seq, dedupe_span) VALUES (0, $1) ON CONFLICT DO NOTHING", s.span); err != nil {
			return err
		}
		var span int64
		if err := tx.QueryRow(ctx, "SELECT dedupe_span FROM meta").Scan(&span); err != nil {
			return err
		}
		if span != s.span {
			// Buckets of another span cannot be compared with ours.
			s.log.Warn("dedupe window changed: the stored messageIds are forgotten",
				"was", time.Duration(span), "now", time.Duration(s.span))
			parts, err := dedupeParts(ctx, tx)
			if err != nil {
				return err
			}
			for b := range parts {
				if _, err := tx.Exec(ctx, "DROP TABLE "+dedupePartName(b)); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, "UPDATE meta SET dedupe_span = $1", s.span); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, partsTop, s.opts.PartitionJobs).Scan(&s.partHi)
	})
}

// dedupeParts lists the dedupe partitions by bucket.
func dedupeParts(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (map[int64]bool, error) {
	rows, err := q.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'dedupe'::regclass`)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	parts := make(map[int64]bool, len(names))
	for _, n := range names {
		var b int64
		if _, err := fmt.Sscanf(n, "dedupe_b%d", &b); err != nil {
			return nil, fmt.Errorf("unexpected dedupe partition %q", n)
		}
		parts[b] = true
	}
	return parts, nil
}

// wrapErr adds the operation to err and, when err means the database cannot
// be reached or cannot take writes, jobstore.ErrUnavailable. Context errors
// stay as they are, so errors.Is finds context.Canceled.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("jobstore/postgres: %s: %w", op, err)
	}
	if unavailableErr(err) {
		return fmt.Errorf("jobstore/postgres: %s: %w: %w", op, jobstore.ErrUnavailable, err)
	}
	return fmt.Errorf("jobstore/postgres: %s: %w", op, err)
}

// unavailableErr reports whether err means the database is unreachable,
// shutting down, out of resources (disk full, too many connections) or
// read-only.
func unavailableErr(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", // connection exception
			"53", // insufficient resources: disk full, out of memory, too many connections
			"57", // operator intervention: shutdown, cannot connect now
			"58", // system error: I/O error
			"25": // read-only transaction (a standby)
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) ||
		errors.Is(err, net.ErrClosed) || pgconn.Timeout(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// checkOpen fails when the store is closed.
func (s *Store) checkOpen() error {
	select {
	case <-s.closing:
		return ErrClosed
	default:
		return nil
	}
}

// retryDead runs f, and once more when it failed before its request
// reached the server (pgconn.SafeToRetry): an idle connection that died (a
// restarted server, a cut connection) is found dead only when used, and the
// other idle ones most likely died with it, so the pool drops them first.
func (s *Store) retryDead(f func() error) error {
	err := f()
	if err != nil && pgconn.SafeToRetry(err) {
		s.pool.Reset()
		err = f()
	}
	return err
}

// queueID returns the id of q, or ok false when the database has none (then
// q has no jobs).
func (s *Store) queueID(ctx context.Context, q jobstore.Queue) (id int32, ok bool, err error) {
	s.mu.RLock()
	id, ok = s.queueIDs[q]
	s.mu.RUnlock()
	if ok {
		return id, true, nil
	}
	err = s.retryDead(func() error {
		return s.pool.QueryRow(ctx, "SELECT id FROM queues WHERE source = $1 AND destination = $2", q.Source, q.Destination).Scan(&id)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	s.mu.Lock()
	s.queueIDs[q] = id
	s.mu.Unlock()
	return id, true, nil
}

// ensureQueues assigns ids to the queues of qs that have none, each in its
// own committed statement, so ids are stable before any job uses them.
func (s *Store) ensureQueues(ctx context.Context, qs map[jobstore.Queue]bool) error {
	var srcs, dsts []string
	s.mu.RLock()
	for q := range qs {
		if _, ok := s.queueIDs[q]; !ok {
			srcs = append(srcs, q.Source)
			dsts = append(dsts, q.Destination)
		}
	}
	s.mu.RUnlock()
	if len(srcs) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO queues (source, destination)
		SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1, 2 ON CONFLICT DO NOTHING`, srcs, dsts); err != nil {
		return err
	}
	rows, err := s.pool.Query(ctx, `SELECT q.id, q.source, q.destination FROM queues q
		JOIN unnest($1::text[], $2::text[]) AS u(s, d) ON q.source = u.s AND q.destination = u.d`, srcs, dsts)
	if err != nil {
		return err
	}
	defer rows.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for rows.Next() {
		var id int32
		var q jobstore.Queue
		if err := rows.Scan(&id, &q.Source, &q.Destination); err != nil {
			return err
		}
		s.queueIDs[q] = id
	}
	return rows.Err()
}

// seqArg converts a Seq for a query; Seqs are bigint in the database, so a
// Seq above MaxInt64 is past every job.
func seqArg(seq uint64) int64 {
	if seq > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(seq)
}

// pendingQuery reads a queue's pending jobs from max(after, watermark-1),
// and in the same snapshot the watermark and the committed Seq counter,
// which the store's reads remember (see reads). The jobs come by the
// (queue_id, seq) index in Seq order, from the partitions that can hold
// them (pruned at run time), and each is checked against finished by one
// index probe. OFFSET 0 keeps that check a per-row probe: as a NOT EXISTS
// the planner made it an anti-join, and with a generic plan (pgx prepares
// the statement, and PostgreSQL switches to a generic plan after five
// runs) it chose to materialize the queue's finished rows and compare
// every job with every one of them: 2,000 finished jobs ahead of a pending
// one took 300 to 550 ms a read in the backlog scenario.
const pendingQuery = `SELECT b.drop_below, b.last_seq, j.seq, j.message_id, j.type, j.received_at, j.payload
	FROM (SELECT q.drop_below, m.last_seq FROM queues q, meta m WHERE q.id = $1) b
	LEFT JOIN LATERAL (
		SELECT j.seq, j.message_id, j.type, j.received_at, j.payload
		FROM jobs j
		WHERE j.queue_id = $1 AND j.seq > GREATEST($2::bigint, b.drop_below - 1)
		  AND NOT EXISTS (SELECT 1 FROM finished f WHERE f.queue_id = $1 AND f.seq = j.seq OFFSET 0)
		ORDER BY j.seq
		LIMIT $3) j ON true
	ORDER BY j.seq`

// Pending returns up to limit pending jobs of q with Seq > after, in Seq
// order: the jobs at or above the queue's drop watermark that have no row in
// finished.
func (s *Store) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if limit <= 0 || after >= math.MaxInt64 {
		return nil, nil
	}
	id, ok, err := s.queueID(ctx, q)
	if err != nil || !ok {
		return nil, wrapErr("pending "+q.Source+"/"+q.Destination, err)
	}
	gen := s.reads.generation(id)
	var rows pgx.Rows
	err = s.retryDead(func() (err error) {
		rows, err = s.pool.Query(ctx, pendingQuery, id, int64(after), limit)
		return err
	})
	if err != nil {
		return nil, wrapErr("pending "+q.Source+"/"+q.Destination, err)
	}
	defer rows.Close()
	var jobs []jobstore.Job
	var seqs []int64
	var wm, last int64
	found := false
	for rows.Next() {
		found = true
		var seq, receivedAt *int64
		var messageID []byte
		var typ *string
		j := jobstore.Job{Queue: q, Event: event.Event{Source: q.Source}}
		if err := rows.Scan(&wm, &last, &seq, &messageID, &typ, &receivedAt, &j.Event.Payload); err != nil {
			return nil, wrapErr("pending "+q.Source+"/"+q.Destination, err)
		}
		if seq == nil {
			break // no pending job: the one row of the watermark alone
		}
		j.Seq = uint64(*seq)
		j.Event.MessageID = string(messageID)
		j.Event.Type = *typ
		j.Event.ReceivedAt = time.Unix(0, *receivedAt).UTC()
		jobs = append(jobs, j)
		seqs = append(seqs, *seq)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr("pending "+q.Source+"/"+q.Destination, err)
	}
	if found {
		s.reads.read(id, gen, wm, last, int64(after), seqs, len(jobs) == limit)
	}
	return jobs, nil
}

// Retries returns up to limit retry jobs of q due at or before until, soonest
// first (ties in Seq order), and the due time of the first job after them.
func (s *Store) Retries(ctx context.Context, q jobstore.Queue, until time.Time, limit int) ([]jobstore.Job, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, time.Time{}, err
	}
	id, ok, err := s.queueID(ctx, q)
	if err != nil || !ok {
		return nil, time.Time{}, wrapErr("retries "+q.Source+"/"+q.Destination, err)
	}
	// The due jobs by the (queue_id, due_at, seq) index, and without
	// their events the two candidates for "next": the first due job not
	// returned, and the first job not due. Reading a job that is not due
	// whole would cost a payload per call for a queue that is waiting.
	rows, err := s.pool.Query(ctx, `(SELECT true, seq, due_at, attempts, last_error, message_id, type, received_at, payload
		  FROM retries WHERE queue_id = $1 AND due_at <= $3 ORDER BY due_at, seq LIMIT $2)
		UNION ALL
		(SELECT false, 0, due_at, 0, '', NULL, NULL, 0, NULL
		  FROM retries WHERE queue_id = $1 AND due_at <= $3 ORDER BY due_at, seq OFFSET $2 LIMIT 1)
		UNION ALL
		(SELECT false, 0, due_at, 0, '', NULL, NULL, 0, NULL
		  FROM retries WHERE queue_id = $1 AND due_at > $3 ORDER BY due_at LIMIT 1)`,
		id, max(limit, 0), until.UnixNano())
	if err != nil {
		return nil, time.Time{}, wrapErr("retries "+q.Source+"/"+q.Destination, err)
	}
	defer rows.Close()
	var jobs []jobstore.Job
	var next time.Time
	for rows.Next() {
		var isJob bool
		var seq, dueAt, receivedAt int64
		var messageID []byte
		var typ *string
		j := jobstore.Job{Queue: q, Event: event.Event{Source: q.Source}}
		if err := rows.Scan(&isJob, &seq, &dueAt, &j.Attempts, &j.LastError, &messageID, &typ, &receivedAt, &j.Event.Payload); err != nil {
			return nil, time.Time{}, wrapErr("retries "+q.Source+"/"+q.Destination, err)
		}
		j.DueAt = time.Unix(0, dueAt).UTC()
		if !isJob {
			if next.IsZero() || j.DueAt.Before(next) {
				next = j.DueAt
			}
			continue
		}
		j.Seq = uint64(seq)
		j.Event.MessageID = string(messageID)
		j.Event.Type = *typ
		j.Event.ReceivedAt = time.Unix(0, receivedAt).UTC()
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, wrapErr("retries "+q.Source+"/"+q.Destination, err)
	}
	return jobs, next, nil
}

// Apply applies u in one transaction committed without waiting for its WAL
// flush (synchronous_commit off for this transaction only): losing it in a
// crash is safe, as jobstore.Update explains, and the order of effects
// inside the transaction keeps it so.
func (s *Store) Apply(ctx context.Context, u jobstore.Update) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.checkOpen(); err != nil {
		return err
	}
	for _, r := range u.Reschedule {
		if r.DueAt.IsZero() {
			return fmt.Errorf("jobstore/postgres: apply: reschedule of job %d of %s/%s: DueAt is zero", r.Job.Seq, r.Job.Queue.Source, r.Job.Queue.Destination)
		}
	}
	if u.Changes() == 0 {
		return nil
	}
	// Every job of an update was read from the store, so its queue has an
	// id; a queue the database does not know has no jobs to change.
	ids := make(map[jobstore.Queue]int32)
	known := func(q jobstore.Queue) (int32, bool, error) {
		if id, ok := ids[q]; ok {
			return id, true, nil
		}
		id, ok, err := s.queueID(ctx, q)
		if ok {
			ids[q] = id
		}
		return id, ok, err
	}

	// Drops: the highest watermark per queue.
	drops := make(map[int32]int64)
	for _, d := range u.Drops {
		id, ok, err := known(d.Queue)
		if err != nil {
			return wrapErr("apply", err)
		}
		if ok && d.Below > 0 {
			drops[id] = max(drops[id], seqArg(d.Below))
		}
	}

	// Pending jobs that end or move to retries: those that are their
	// queue's first pending ones move its watermark, the others get a
	// finished row (see reads). Retry jobs are upserted (the last
	// reschedule of a job wins) or deleted.
	type key struct {
		q   int32
		seq int64
	}
	ended := make(map[int32][]int64)
	retry := make(map[key]jobstore.Reschedule)
	var retryOrder []key
	var delQ []int32
	var delSeq []int64
	for _, r := range u.Reschedule {
		id, ok, err := known(r.Job.Queue)
		if err != nil {
			return wrapErr("apply", err)
		}
		if !ok {
			continue
		}
		k := key{id, seqArg(r.Job.Seq)}
		if r.Job.DueAt.IsZero() {
			ended[id] = append(ended[id], k.seq)
		}
		if _, seen := retry[k]; !seen {
			retryOrder = append(retryOrder, k)
		}
		retry[k] = r
	}
	for _, j := range u.Finish {
		id, ok, err := known(j.Queue)
		if err != nil {
			return wrapErr("apply", err)
		}
		if !ok {
			continue
		}
		if j.DueAt.IsZero() {
			ended[id] = append(ended[id], seqArg(j.Seq))
		} else {
			delQ, delSeq = append(delQ, id), append(delSeq, seqArg(j.Seq))
		}
	}
	var finQ []int32
	var finSeq []int64
	for id, seqs := range ended {
		slices.Sort(seqs)
		seqs = slices.Compact(seqs)
		ended[id] = seqs
		wm, rows := s.reads.plan(id, seqs)
		if wm > drops[id] {
			drops[id] = wm
		}
		for _, seq := range rows {
			finQ, finSeq = append(finQ, id), append(finSeq, seq)
		}
	}
	var dropIDs []int32
	var dropBelow []int64
	for id, b := range drops {
		dropIDs = append(dropIDs, id)
		dropBelow = append(dropBelow, b)
	}
	var (
		rQ                []int32
		rSeq, rDue, rRecv []int64
		rAttempts         []int32
		rErr, rType       []string
		rMsg, rPayload    [][]byte
	)
	for _, k := range retryOrder {
		r := retry[k]
		rQ, rSeq = append(rQ, k.q), append(rSeq, k.seq)
		rDue = append(rDue, r.DueAt.UnixNano())
		rAttempts = append(rAttempts, int32(r.Attempts))
		rErr = append(rErr, cleanText(r.LastError))
		rMsg = append(rMsg, []byte(r.Job.Event.MessageID))
		rType = append(rType, r.Job.Event.Type)
		rRecv = append(rRecv, r.Job.Event.ReceivedAt.UnixNano())
		rPayload = append(rPayload, r.Job.Event.Payload)
	}

	// In a cluster, the update is written only under the leases of the
	// partitions it touches, as they are now: a node that lost one writes
	// nothing, and the new owner delivers those jobs again.
	var tokens map[int]int64
	if c := s.opts.Cluster; c != nil {
		tokens = map[int]int64{}
		for q := range ids {
			p := c.PartitionOf(q)
			tok, ok := c.Owns(p)
			if !ok {
				return fmt.Errorf("jobstore/postgres: apply: %w: partition %d is not this node's", jobstore.ErrFenced, p)
			}
			tokens[p] = tok
		}
	}

	b := &pgx.Batch{}
	b.Queue("SET LOCAL synchronous_commit = off")
	if len(dropIDs) > 0 {
		b.Queue(`UPDATE queues q SET drop_below = GREATEST(q.drop_below, u.b)
			FROM unnest($1::int[], $2::bigint[]) AS u(id, b) WHERE q.id = u.id`, dropIDs, dropBelow)
	}
	if len(rQ) > 0 {
		b.Queue(`INSERT INTO retries (queue_id, seq, due_at, attempts, last_error, message_id, type, received_at, payload)
			SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::int[], $5::text[], $6::bytea[], $7::text[], $8::bigint[], $9::bytea[])
			ON CONFLICT (queue_id, seq) DO UPDATE
			SET due_at = excluded.due_at, attempts = excluded.attempts, last_error = excluded.last_error`,
			rQ, rSeq, rDue, rAttempts, rErr, rMsg, rType, rRecv, rPayload)
	}
	if len(finQ) > 0 {
		// Only Seqs whose partition still exists: a late Finish of a job
		// whose partition was dropped has nothing left to hide.
		b.Queue(`INSERT INTO finished (queue_id, seq)
			SELECT u.q, u.s FROM unnest($1::int[], $2::bigint[]) AS u(q, s)
			WHERE EXISTS (SELECT 1 FROM job_parts p WHERE u.s >= p.lo AND u.s < p.hi)
			ON CONFLICT DO NOTHING`, finQ, finSeq)
	}
	if len(delQ) > 0 {
		b.Queue(`DELETE FROM retries r USING unnest($1::int[], $2::bigint[]) AS u(q, s)
			WHERE r.queue_id = u.q AND r.seq = u.s`, delQ, delSeq)
	}
	err := s.inTx(ctx, tokens, b)
	if errors.Is(err, cluster.ErrFenced) {
		return fmt.Errorf("jobstore/postgres: apply: %w: %w", jobstore.ErrFenced, err)
	}
	if err != nil {
		return wrapErr("apply", err)
	}
	for id, seqs := range ended {
		s.reads.applied(id, seqs, drops[id])
	}
	for id, b := range drops {
		if _, ok := ended[id]; !ok {
			s.reads.applied(id, nil, b)
		}
	}
	return nil
}

// inTx runs b in one transaction on one connection, committed without
// waiting for its WAL flush when b says so. Alone, that is one round trip:
// BEGIN, b's statements and COMMIT go in one pipeline. In a cluster the
// fence comes first (cluster.FenceAll checks the tokens and locks the lease
// rows), and the statements only once it passed: three round trips. A
// failed statement leaves the transaction aborted, and the ROLLBACK ends
// it before the connection goes back to the pool.
func (s *Store) inTx(ctx context.Context, tokens map[int]int64, b *pgx.Batch) (err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
			if _, rerr := conn.Exec(context.Background(), "ROLLBACK"); rerr != nil {
				// The pool throws a closed connection away.
				conn.Conn().Close(context.Background())
			}
		}
		conn.Release()
	}()
	all := &pgx.Batch{}
	if len(tokens) > 0 {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			return err
		}
		if err := cluster.FenceAll(ctx, conn, tokens); err != nil {
			return err
		}
	} else {
		all.Queue("BEGIN")
	}
	all.QueuedQueries = append(all.QueuedQueries, b.QueuedQueries...)
	all.Queue("COMMIT")
	return conn.SendBatch(ctx, all).Close()
}

// cleanText makes s storable as PostgreSQL text, which takes neither NUL
// bytes nor invalid UTF-8.
func cleanText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// Queues lists the queues that hold pending or retry jobs, sorted by source
// then destination. For each known queue it probes the primary key index
// from the queue's watermark, so it does not read drained jobs.
func (s *Store) Queues(ctx context.Context) ([]jobstore.Queue, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	// The first pending job of each queue, by the primary key from the
	// watermark (ORDER BY keeps it there; see partLive).
	rows, err := s.pool.Query(ctx, `SELECT q.source, q.destination FROM queues q
		LEFT JOIN LATERAL (SELECT 1 AS one FROM jobs j WHERE j.queue_id = q.id AND j.seq >= q.drop_below
		    AND NOT EXISTS (SELECT 1 FROM finished f WHERE f.queue_id = q.id AND f.seq = j.seq OFFSET 0)
		  ORDER BY j.seq LIMIT 1) p ON true
		WHERE p.one IS NOT NULL OR EXISTS (SELECT 1 FROM retries r WHERE r.queue_id = q.id)
		ORDER BY q.source, q.destination`)
	if err != nil {
		return nil, wrapErr("queues", err)
	}
	qs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (jobstore.Queue, error) {
		var q jobstore.Queue
		err := row.Scan(&q.Source, &q.Destination)
		return q, err
	})
	return qs, wrapErr("queues", err)
}

// Close stops taking appends, answers every Append in progress, and closes
// the pool. Calls after the first return ErrClosed.
func (s *Store) Close() error {
	err := ErrClosed
	s.closeOnce.Do(func() {
		close(s.closing)
		s.stopCommits()
		s.done.Wait()
		s.stop()
		s.pool.Close()
		err = nil
	})
	return err
}
