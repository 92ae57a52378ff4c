package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The NOTIFY channels.
const (
	// jobsChannel carries the partitions that have new jobs, as a
	// comma-separated list, or "*" for all.
	jobsChannel = "fanout_jobs"
	// clusterChannel asks every node for a round now: a node joined, left
	// or released partitions.
	clusterChannel = "fanout_cluster"
)

// maxPayload keeps a notification under PostgreSQL's 8000-byte limit.
const maxPayload = 7900

// ErrFenced is returned by Fence when the token presented is not the
// partition's current one, or its lease has run out: another node owns the
// partition now, or may at any moment, and the transaction must not
// commit.
var ErrFenced = errors.New("cluster: partition lease lost")

// FenceIdleTimeout is how long a transaction that passed Fence may sit idle
// between statements before PostgreSQL ends its session (Fence sets
// idle_in_transaction_session_timeout for the rest of the transaction).
// It bounds how long a paused old owner, holding the lease row's lock in
// an open transaction, can delay a takeover.
const FenceIdleTimeout = time.Second

// Querier is the part of pgx.Tx that Fence needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

var _ Querier = (pgx.Tx)(nil)

// Fence checks, inside the caller's transaction, that token is still the
// fencing token of partition's lease and that the lease has not run out,
// and locks the lease row (FOR KEY SHARE) until the transaction ends. It
// returns an error wrapping ErrFenced when the check fails; the caller
// must then roll back.
//
// The lock is what makes the check hold until COMMIT: a node taking the
// partition over must lock the row FOR UPDATE, which waits for (and in
// acquire, skips) every transaction holding KEY SHARE on it. So a write
// that passed Fence commits before the takeover, and the new owner reads
// it; a write that comes after the takeover sees the new token and fails.
// KEY SHARE does not conflict with the owner's own renewals, which update
// the row without touching its key. A transaction that passed Fence and then
// sits idle (its process paused) would hold the takeover back, so Fence sets
// idle_in_transaction_session_timeout to FenceIdleTimeout for the rest of
// the transaction: PostgreSQL ends such a session and its transaction rolls
// back. Call Fence early in the transaction
// (before the writes) so that a stale owner does no work for nothing.
func Fence(ctx context.Context, tx Querier, partition int, token int64) error {
	return FenceAll(ctx, tx, map[int]int64{partition: token})
}

// FenceAll is Fence for several partitions at once, in one statement: the
// store's Apply may touch queues of several partitions.
func FenceAll(ctx context.Context, tx Querier, tokens map[int]int64) error {
	if len(tokens) == 0 {
		return nil
	}
	ps := make([]int32, 0, len(tokens))
	for p := range tokens {
		ps = append(ps, int32(p))
	}
	slices.Sort(ps) // lock rows in one order, so that fences never deadlock
	toks := make([]int64, len(ps))
	for i, p := range ps {
		toks[i] = tokens[int(p)]
	}
	rows, err := tx.Query(ctx, `
		SELECT c.partition
		FROM (SELECT set_config('idle_in_transaction_session_timeout', $3, true)) AS s,
		     cluster_partitions c
		JOIN unnest($1::int[], $2::bigint[]) AS f(partition, token)
		  ON c.partition = f.partition AND c.token = f.token
		WHERE c.expires_at > clock_timestamp()
		ORDER BY c.partition
		FOR KEY SHARE OF c`, ps, toks, strconv.FormatInt(FenceIdleTimeout.Milliseconds(), 10))
	if err != nil {
		return fmt.Errorf("cluster: fence: %w", err)
	}
	ok := make(map[int]bool, len(ps))
	var p int
	if _, err := pgx.ForEachRow(rows, []any{&p}, func() error {
		ok[p] = true
		return nil
	}); err != nil {
		return fmt.Errorf("cluster: fence: %w", err)
	}
	for _, p := range ps {
		if !ok[int(p)] {
			return fmt.Errorf("%w: partition %d, token %d is no longer valid", ErrFenced, p, tokens[int(p)])
		}
	}
	return nil
}

// Notify tells the owners of partitions, inside the caller's transaction,
// that they have new jobs: the owners hear of it when the transaction
// commits, and not at all if it rolls back. Call it in the transaction
// that appends the jobs. PostgreSQL sends one notification per distinct
// payload per transaction.
//
// NOTIFY takes a database-wide lock at commit, so the transactions that
// notify commit one at a time; the job store's group commit already does.
func Notify(ctx context.Context, tx pgx.Tx, partitions ...int) error {
	if len(partitions) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, jobsChannel, notifyPayload(partitions)); err != nil {
		return fmt.Errorf("cluster: notify: %w", err)
	}
	return nil
}

// QueueNotify is Notify as a statement of a batch sent inside the
// appending transaction (the job store's group commit pipelines its
// statements): no round trip of its own.
func QueueNotify(b *pgx.Batch, partitions ...int) {
	if len(partitions) == 0 {
		return
	}
	b.Queue(`SELECT pg_notify($1, $2)`, jobsChannel, notifyPayload(partitions))
}

// notifyPayload is the payload naming partitions: their numbers, or "*"
// for all when the list would not fit.
func notifyPayload(partitions []int) string {
	ps := slices.Clone(partitions)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p))
	}
	payload := b.String()
	if len(payload) > maxPayload {
		payload = "*"
	}
	return payload
}

// subscribe takes a connection of the pool for good and LISTENs on it.
func (n *Node) subscribe(ctx context.Context) (*pgxpool.Conn, error) {
	conn, err := n.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+jobsChannel+"; LISTEN "+clusterChannel); err != nil {
		hangUp(conn)
		return nil, err
	}
	return conn, nil
}

// hangUp closes a LISTENing session rather than hand it back to the pool.
func hangUp(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Conn().Close(ctx)
	conn.Release()
}

// listen turns notifications on conn (subscribed by Join, so that nothing
// sent after Join is missed) into wake-ups of owned partitions and rounds
// of the heartbeat loop. A lost connection is replaced after one
// Heartbeat; since notifications may have been missed meanwhile, every
// owned partition is woken then, and a round is run.
func (n *Node) listen(ctx context.Context, conn *pgxpool.Conn) {
	defer n.done.Done()
	for {
		err := n.receive(ctx, conn)
		hangUp(conn)
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("listener connection lost; wake-ups wait until it is back", "err", err)
		for conn = nil; conn == nil; {
			t := n.opts.Clock.NewTimer()
			t.Set(n.opts.Clock.Now().Add(n.opts.Heartbeat))
			select {
			case <-ctx.Done():
			case <-t.C():
			}
			t.Stop()
			if ctx.Err() != nil {
				return
			}
			if conn, err = n.subscribe(ctx); err != nil {
				n.log.Warn("listener reconnect", "err", err)
			}
		}
		n.wakes.add(n.Owned()...)
		n.kickRound()
	}
}

func (n *Node) receive(ctx context.Context, conn *pgxpool.Conn) error {
	for {
		note, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return err
		}
		switch note.Channel {
		case clusterChannel:
			n.kickRound()
		case jobsChannel:
			n.wake(note.Payload)
		}
	}
}

func (n *Node) kickRound() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// wake hands the owned partitions of a jobs payload to Wakeups.
func (n *Node) wake(payload string) {
	if payload == "*" {
		n.wakes.add(n.Owned()...)
		return
	}
	var ps []int
	for f := range strings.SplitSeq(payload, ",") {
		p, err := strconv.Atoi(f)
		if err != nil {
			n.log.Warn("bad notification payload", "channel", jobsChannel, "payload", payload)
			return
		}
		if _, ok := n.Owns(p); ok {
			ps = append(ps, p)
		}
	}
	n.wakes.add(ps...)
}
