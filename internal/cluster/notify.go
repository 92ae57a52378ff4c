package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
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

// Notify tells every node, inside the caller's transaction, that
// partitions have new jobs: their owners hear of it when the transaction
// commits, and not at all if it rolls back. It is for appenders that are
// not nodes (a node addresses its notifications, see QueueNotify).
// PostgreSQL sends one notification per distinct payload per transaction.
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

// nodeChannel is the channel that carries the notifications addressed to
// node id: its payloads are those of jobsChannel.
func nodeChannel(id int64) string { return jobsChannel + "_" + strconv.FormatInt(id, 10) }

// viewTTL is how long the owners read by a round (Node.view) address
// notifications: two heartbeats, so that a view is replaced before it is
// too old to use while rounds succeed. It is also how long after a gain the
// node wakes the partition once more (rewake): a notification addressed by
// a view at most viewTTL old, to the previous owner, was committed before
// that.
func (n *Node) viewTTL() time.Duration { return 2 * n.opts.Heartbeat }

// Notice is what QueueNotify did with a transaction's partitions, for
// Committed to check once the transaction has committed.
type Notice struct {
	// self are the partitions this node owned: no notification, the
	// node's engine hears of the jobs from its own store (Applied).
	self []int
	// addressed were notified to their owner in the view of viewSent.
	addressed []int
	viewSent  time.Time
}

// QueueNotify queues, in a batch sent inside the appending transaction,
// the notifications that wake the owners of partitions when it commits: no
// round trip of its own (the job store's group commit pipelines its
// statements). Each notification goes to one node, not to every node: a
// commit wakes its partitions' owners only, however many nodes there are.
//
//   - A partition this node owns is not notified: the engine hears of the
//     jobs from the store that appends them.
//   - One owned by another node, in the owners the last round read (if
//     that view is less than viewTTL old), goes to that node's channel.
//   - Any other (no view, an old view, a lease that had run out) goes to
//     every node, as Notify does.
//
// The view may be out of date: the partition may have moved since it was
// read. Then the commit may be before the move, and the new owner's scan of
// what it gained finds the jobs; or after it, and then one of these
// catches it: Committed notifies every node if this node had lost a
// partition it kept (self) by the time the commit returned, or if the view
// was more than viewTTL old by then; a node notified of a partition it does
// not own forwards the notification to every node (forward); and a node
// wakes each partition it gains once more viewTTL after the gain
// (rewake), for the case where the notification went to a node that left.
func (n *Node) QueueNotify(b *pgx.Batch, partitions []int) Notice {
	if len(partitions) == 0 {
		return Notice{}
	}
	ps := slices.Clone(partitions)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	now := n.opts.Clock.Now()
	var nt Notice
	var all []int
	byOwner := map[int64][]int{}
	n.mu.Lock()
	fresh := !n.viewSent.IsZero() && now.Sub(n.viewSent) <= n.viewTTL()
	nt.viewSent = n.viewSent
	for _, p := range ps {
		if l, ok := n.owned[p]; ok && now.Before(l.until) {
			nt.self = append(nt.self, p)
			continue
		}
		if o := n.viewOwners[p]; fresh && o != 0 && o != n.id {
			byOwner[o] = append(byOwner[o], p)
			nt.addressed = append(nt.addressed, p)
			continue
		}
		all = append(all, p)
	}
	n.mu.Unlock()
	for _, o := range slices.Sorted(maps.Keys(byOwner)) {
		b.Queue(`SELECT pg_notify($1, $2)`, nodeChannel(o), notifyPayload(byOwner[o]))
	}
	if len(all) > 0 {
		b.Queue(`SELECT pg_notify($1, $2)`, jobsChannel, notifyPayload(all))
	}
	return nt
}

// Committed notifies every node of the partitions of nt whose owner may not
// have heard of the commit that just returned (see QueueNotify): those this
// node owned but no longer does, and, when the view that addressed them is
// more than viewTTL old now, those sent to their owner. Most commits need
// nothing: no round trip.
func (n *Node) Committed(ctx context.Context, nt Notice) {
	var late []int
	for _, p := range nt.self {
		if _, ok := n.Owns(p); !ok {
			late = append(late, p)
		}
	}
	if len(nt.addressed) > 0 && n.opts.Clock.Now().Sub(nt.viewSent) > n.viewTTL() {
		late = append(late, nt.addressed...)
	}
	if len(late) == 0 {
		return
	}
	if _, err := n.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, jobsChannel, notifyPayload(late)); err != nil {
		// The server is most likely down: every listener reconnects when
		// it is back and wakes every partition it owns.
		n.log.Warn("notify after commit", "partitions", late, "err", err)
	}
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
	listen := "LISTEN " + jobsChannel + "; LISTEN " + clusterChannel
	if n.id != 0 { // known after Join's registration, which listens to it then
		listen += "; LISTEN " + nodeChannel(n.id)
	}
	if _, err := conn.Exec(ctx, listen); err != nil {
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
			n.wake(note.Payload, false)
		default: // this node's channel
			n.wake(note.Payload, true)
		}
	}
}

func (n *Node) kickRound() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// wake hands the owned partitions of a jobs payload to Wakeups. Those of a
// notification addressed to this node (addressed) that it does not own
// are forwarded to every node: the sender's view was out of date, and the
// owner may be another node already.
func (n *Node) wake(payload string, addressed bool) {
	if payload == "*" {
		n.wakes.add(n.Owned()...)
		return
	}
	var ps, stray []int
	for f := range strings.SplitSeq(payload, ",") {
		p, err := strconv.Atoi(f)
		if err != nil {
			n.log.Warn("bad notification payload", "channel", jobsChannel, "payload", payload)
			return
		}
		if _, ok := n.Owns(p); ok {
			ps = append(ps, p)
		} else if addressed {
			stray = append(stray, p)
		}
	}
	n.wakes.add(ps...)
	n.strays.add(stray...)
}

// forward notifies every node of the partitions that notifications
// addressed to this node named while it did not own them (wake), a batch
// at a time: off the listener's goroutine, which must not wait for a
// round trip.
func (n *Node) forward(ctx context.Context) {
	defer n.done.Done()
	for {
		var ps []int
		select {
		case <-ctx.Done():
			return
		case p := <-n.strays.out:
			ps = append(ps, p)
		}
		for more := true; more; {
			select {
			case p := <-n.strays.out:
				ps = append(ps, p)
			default:
				more = false
			}
		}
		fctx, cancel := context.WithTimeout(ctx, n.opts.Heartbeat)
		if _, err := n.pool.Exec(fctx, `SELECT pg_notify($1, $2)`, jobsChannel, notifyPayload(ps)); err != nil && ctx.Err() == nil {
			n.log.Warn("forward notification", "partitions", ps, "err", err)
		}
		cancel()
	}
}

// rewake wakes the partitions gained at least viewTTL ago that are still
// owned, once (see QueueNotify), and returns when the next is due.
func (n *Node) rewake() (next time.Time, ok bool) {
	now := n.opts.Clock.Now()
	var ps []int
	n.mu.Lock()
	for p, at := range n.rewakes {
		if now.Before(at) {
			if !ok || at.Before(next) {
				next, ok = at, true
			}
			continue
		}
		delete(n.rewakes, p)
		if l, owned := n.owned[p]; owned && now.Before(l.until) && !l.draining() {
			ps = append(ps, p)
		}
	}
	n.mu.Unlock()
	slices.Sort(ps)
	n.wakes.add(ps...)
	return next, ok
}
