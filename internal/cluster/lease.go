package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// schemaLock is the advisory lock key under which Join creates the tables,
// so that nodes starting together take turns.
const schemaLock = 0x66616e6f7574 // "fanout"

// migrate creates the cluster's tables and the rows of the partitions
// that live on this server if they are missing, and checks that the
// database holds those partitions and no others.
func migrate(ctx context.Context, pool *pgxpool.Pool, opts Options) error {
	here := opts.partitionsHere()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLock)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			CREATE TABLE IF NOT EXISTS cluster_nodes (
				id           bigserial PRIMARY KEY,
				name         text NOT NULL,
				started_at   timestamptz NOT NULL DEFAULT now(),
				heartbeat_at timestamptz NOT NULL DEFAULT now()
			);
			CREATE TABLE IF NOT EXISTS cluster_partitions (
				partition   int PRIMARY KEY,
				owner       bigint,
				token       bigint NOT NULL DEFAULT 0,
				expires_at  timestamptz NOT NULL DEFAULT '-infinity',
				acquired_at timestamptz
			)`); err != nil {
			return err
		}
		// Appended: the node's admin API, for the cluster-wide admin
		// views; the digest of its pipeline (Options.Pipeline); its
		// machine (Options.Machine).
		if _, err := tx.Exec(ctx, `
			ALTER TABLE cluster_nodes
				ADD COLUMN IF NOT EXISTS admin_url text NOT NULL DEFAULT '',
				ADD COLUMN IF NOT EXISTS pipeline_digest text NOT NULL DEFAULT '',
				ADD COLUMN IF NOT EXISTS machine text NOT NULL DEFAULT ''`); err != nil {
			return err
		}
		var have []int
		if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(partition ORDER BY partition), '{}')
			FROM cluster_partitions`).Scan(&have); err != nil {
			return err
		}
		if len(have) == 0 {
			_, err := tx.Exec(ctx, `INSERT INTO cluster_partitions (partition)
				SELECT unnest($1::int[])`, here)
			return err
		}
		return opts.checkPartitions(have)
	})
	if err != nil {
		return fmt.Errorf("cluster: create tables: %w", err)
	}
	return nil
}

// heartbeatLoop runs a round every Heartbeat, when another node asks for
// one through NOTIFY, and when a local deadline passes; and it releases
// the leases handed over, when the engine says they are drained or their
// grace ends.
func (n *Node) heartbeatLoop(ctx context.Context) {
	defer n.done.Done()
	t := n.opts.Clock.NewTimer()
	defer t.Stop()
	next := n.opts.Clock.Now().Add(n.opts.Heartbeat)
	for {
		at := next
		if d, ok := n.expireLocal(); ok && d.Before(at) {
			at = d
		}
		if d, ok := n.handOver(ctx); ok && d.Before(at) {
			at = d
		}
		if d, ok := n.rewake(); ok && d.Before(at) {
			at = d
		}
		t.Set(at)
		kicked := false
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-n.handed:
			continue
		case <-n.kick:
			kicked = true
		}
		// A timer that fired for a local deadline or a grace only expires
		// or releases leases, at the top of the loop.
		if now := n.opts.Clock.Now(); kicked || !now.Before(next) {
			n.round(ctx)
			next = now.Add(n.opts.Heartbeat)
		}
	}
}

// expireLocal drops the leases whose local deadline has passed, telling
// Changes, and returns the earliest deadline still ahead.
func (n *Node) expireLocal() (next time.Time, ok bool) {
	now := n.opts.Clock.Now()
	n.mu.Lock()
	var lost []Change
	for p, l := range n.owned {
		if !now.Before(l.until) {
			delete(n.owned, p)
			lost = append(lost, Change{Partition: p, Token: l.token})
			continue
		}
		if !ok || l.until.Before(next) {
			next, ok = l.until, true
		}
	}
	n.mu.Unlock()
	slices.SortFunc(lost, func(a, b Change) int { return a.Partition - b.Partition })
	for _, c := range lost {
		n.log.Warn("lease not renewed in time: stopped delivering the partition", "partition", c.Partition, "token", c.Token)
		n.changes.push(c)
	}
	return next, ok
}

// partitionRow is a partition as one round reads it.
type partitionRow struct {
	partition int
	owner     int64 // 0: none
	valid     bool  // the lease has not run out
}

// round is one heartbeat: renew this node's leases, then give up surplus
// partitions or take free ones so that every live node holds its share.
//
// The share: the live nodes (heartbeat within one Lease), ordered by id,
// split the partitions so that the first Partitions mod nodes of them hold
// one more. Every node computes the same shares from the same table, so no
// node has to tell another what to do. A node over its share releases the
// surplus at once; a node under it takes partitions that are free or whose
// lease ran out. So when a node joins, partitions move within about one
// heartbeat, never unowned for longer; when one dies, its leases run out
// within Lease and the others take them at their next round.
func (n *Node) round(parent context.Context) {
	// A round that ends after the local deadlines is of no use; until then
	// it is worth waiting for.
	ctx, cancel := context.WithTimeout(parent, n.opts.Lease-n.opts.Margin)
	defer cancel()
	// sent is when the renewal leaves: the database sets the lease to end
	// Lease after it reads its clock, which is later, so sent+Lease on the
	// node's monotonic clock is never past the database's expiry.
	sent := n.opts.Clock.Now()
	until := sent.Add(n.opts.Lease - n.opts.Margin)

	batch := &pgx.Batch{}
	// The insert puts back a row deleted meanwhile (the node was taken for
	// dead an hour), as Join wrote it.
	batch.Queue(`INSERT INTO cluster_nodes (id, name, admin_url, pipeline_digest, machine) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()`, n.id, n.name, n.opts.AdminURL, n.opts.Pipeline, n.opts.Machine)
	renewed := map[int]int64{}
	batch.Queue(`UPDATE cluster_partitions SET expires_at = now() + $2::interval
		WHERE owner = $1 AND expires_at > now() RETURNING partition, token`,
		n.id, n.opts.Lease).Query(func(rows pgx.Rows) error {
		var p int
		var token int64
		_, err := pgx.ForEachRow(rows, []any{&p, &token}, func() error {
			renewed[p] = token
			return nil
		})
		return err
	})
	batch.Queue(`DELETE FROM cluster_nodes WHERE heartbeat_at < now() - interval '1 hour'`)
	var live []int64
	batch.Queue(`SELECT id FROM cluster_nodes WHERE heartbeat_at > now() - $1::interval ORDER BY id`,
		n.opts.Lease).Query(func(rows pgx.Rows) error {
		var id int64
		_, err := pgx.ForEachRow(rows, []any{&id}, func() error {
			live = append(live, id)
			return nil
		})
		return err
	})
	var parts []partitionRow
	batch.Queue(`SELECT partition, coalesce(owner, 0), expires_at > now()
		FROM cluster_partitions ORDER BY partition`).Query(func(rows pgx.Rows) error {
		var r partitionRow
		_, err := pgx.ForEachRow(rows, []any{&r.partition, &r.owner, &r.valid}, func() error {
			parts = append(parts, r)
			return nil
		})
		return err
	})
	if err := n.pool.SendBatch(ctx, batch).Close(); err != nil {
		if parent.Err() == nil {
			n.log.Warn("heartbeat failed: leases not renewed", "err", err)
		}
		return
	}
	n.renewed(renewed, until, sent)
	n.setView(sent, parts)

	share := shareOf(n.id, live, len(n.opts.partitionsHere()))
	owned := n.Owned()
	switch {
	case len(owned) > share:
		n.drain(owned[share:])
		n.handOver(ctx)
	case len(owned) < share:
		n.acquire(ctx, share-len(owned), until)
	}
}

// setView records the owners a round read, sent at sent, for QueueNotify.
func (n *Node) setView(sent time.Time, parts []partitionRow) {
	owners := make(map[int]int64, len(parts))
	for _, r := range parts {
		if r.valid && r.owner != 0 {
			owners[r.partition] = r.owner
		}
	}
	n.mu.Lock()
	n.viewSent, n.viewOwners = sent, owners
	n.mu.Unlock()
}

// shareOf returns how many partitions node id should hold when the nodes
// of live share them.
func shareOf(id int64, live []int64, partitions int) int {
	i := slices.Index(live, id)
	if i < 0 {
		// Not yet seen as live (cannot happen after its own heartbeat,
		// but be safe): hold nothing rather than more than a share.
		return 0
	}
	share := partitions / len(live)
	if i < partitions%len(live) {
		share++
	}
	return share
}

// renewed records the leases the database renewed; an owned partition that
// was not renewed is lost (its lease ran out or another node took it).
func (n *Node) renewed(renewed map[int]int64, until, sent time.Time) {
	n.mu.Lock()
	n.renewedAt = sent
	var changes []Change
	for p, l := range n.owned {
		if tok, ok := renewed[p]; !ok || tok != l.token {
			delete(n.owned, p)
			changes = append(changes, Change{Partition: p, Token: l.token})
		}
	}
	for p, tok := range renewed {
		if _, ok := n.owned[p]; !ok {
			// Dropped locally at the deadline, yet still ours in the
			// database: a late renewal. Ours again, same token.
			changes = append(changes, Change{Partition: p, Token: tok, Owned: true})
		}
		l := n.owned[p] // a handover in progress goes on
		l.token, l.until = tok, until
		n.owned[p] = l
	}
	n.mu.Unlock()
	n.publish(changes)
}

func (n *Node) publish(changes []Change) {
	slices.SortFunc(changes, func(a, b Change) int {
		if a.Owned != b.Owned { // losses first
			if a.Owned {
				return 1
			}
			return -1
		}
		return a.Partition - b.Partition
	})
	rewakeAt := n.opts.Clock.Now().Add(n.viewTTL())
	for _, c := range changes {
		if c.Owned {
			n.mu.Lock()
			n.rewakes[c.Partition] = rewakeAt
			n.mu.Unlock()
			n.log.Info("partition gained", "partition", c.Partition, "token", c.Token)
		} else {
			n.log.Info("partition lost", "partition", c.Partition, "token", c.Token)
		}
		n.changes.push(c)
	}
}

// drain starts handing partitions over: the engine hears at once that it
// must start no more requests on them (a Change with Draining), while the
// node keeps their leases, renewed by every round, so that the outcomes
// of the requests in flight are written under them. handOver releases
// them when the engine says they are drained (Drained), or at the end of
// the grace. Releasing at once instead would have those outcomes refused
// by the fencing and their jobs sent again by the next owner: a planned
// move must send nothing twice.
func (n *Node) drain(ps []int) {
	end := n.opts.Clock.Now().Add(n.opts.Grace)
	n.mu.Lock()
	var changes []Change
	for _, p := range ps {
		if l, ok := n.owned[p]; ok && !l.draining() {
			l.graceEnd = end
			n.owned[p] = l
			changes = append(changes, Change{Partition: p, Token: l.token, Draining: true})
		}
	}
	n.mu.Unlock()
	if len(changes) > 0 {
		n.log.Info("handing partitions over: waiting for their requests in flight", "partitions", len(changes), "grace", n.opts.Grace)
	}
	n.publish(changes)
}

// handOver releases the leases handed over whose engine is done with them
// or whose grace has ended, and returns the earliest grace still running.
// Each is dropped locally first, so that no write presents its token
// after the release, then ended in the database, with the lease ended now
// so the next owner need not wait; NOTIFY has the others take it at once.
// The token stays: the next owner increments it.
func (n *Node) handOver(ctx context.Context) (next time.Time, ok bool) {
	now := n.opts.Clock.Now()
	var ps, overdue []int
	n.mu.Lock()
	for p, l := range n.owned {
		switch {
		case !l.draining():
		case l.drained || !now.Before(l.graceEnd):
			delete(n.owned, p)
			ps = append(ps, p)
			if !l.drained {
				overdue = append(overdue, p)
			}
		case !ok || l.graceEnd.Before(next):
			next, ok = l.graceEnd, true
		}
	}
	n.mu.Unlock()
	if len(ps) == 0 {
		return next, ok
	}
	slices.Sort(ps)
	if len(overdue) > 0 {
		// Their last outcomes will be refused by the fencing, and the next
		// owner sends those jobs again.
		slices.Sort(overdue)
		n.log.Warn("handover grace over with requests still in flight: releasing anyway",
			"partitions", overdue, "grace", n.opts.Grace)
	}
	batch := &pgx.Batch{}
	batch.Queue(`UPDATE cluster_partitions SET owner = NULL, expires_at = now()
		WHERE owner = $1 AND partition = ANY($2)`, n.id, ps)
	batch.Queue(`SELECT pg_notify($1, 'release')`, clusterChannel)
	rctx, cancel := context.WithTimeout(ctx, n.opts.Lease-n.opts.Margin)
	defer cancel()
	if err := n.pool.SendBatch(rctx, batch).Close(); err != nil {
		// The leases run out by themselves; the others wait one Lease.
		n.log.Warn("release partitions", "partitions", ps, "err", err)
		return next, ok
	}
	n.log.Info("partitions released", "partitions", ps)
	return next, ok
}

// acquire takes up to want partitions that are free or whose lease ran
// out, incrementing each one's fencing token.
//
// FOR UPDATE SKIP LOCKED: a partition row on which a transaction of the
// old owner still holds the KEY SHARE lock that Fence takes is skipped, not
// waited for: the old owner's write finishes first, under the old token,
// and the partition is taken at a later round. A row another node is
// taking at the same moment is skipped too.
func (n *Node) acquire(ctx context.Context, want int, until time.Time) {
	rows, err := n.pool.Query(ctx, `
		UPDATE cluster_partitions p
		SET owner = $1, token = p.token + 1, expires_at = now() + $3::interval, acquired_at = now()
		FROM (
			SELECT partition FROM cluster_partitions
			WHERE owner IS NULL OR expires_at <= now()
			ORDER BY partition LIMIT $2
			FOR UPDATE SKIP LOCKED
		) free
		WHERE p.partition = free.partition
		RETURNING p.partition, p.token`, n.id, want, n.opts.Lease)
	if err != nil {
		n.log.Warn("acquire partitions", "err", err)
		return
	}
	var gained []Change
	var p int
	var token int64
	_, err = pgx.ForEachRow(rows, []any{&p, &token}, func() error {
		gained = append(gained, Change{Partition: p, Token: token, Owned: true})
		return nil
	})
	if err != nil {
		// The UPDATE may have committed without our hearing: the next
		// round's renewal finds the leases ours and reports them gained.
		n.log.Warn("acquire partitions", "err", err)
		return
	}
	n.mu.Lock()
	for _, c := range gained {
		n.owned[c.Partition] = lease{token: c.Token, until: until}
	}
	n.mu.Unlock()
	n.publish(gained)
}
