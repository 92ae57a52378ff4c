// Package cluster lets several fanout nodes share one PostgreSQL database:
// membership, partitions owned through leases, fencing, balance, failover
// and wake-ups. PostgreSQL is the only coordinator: no consensus of our
// own, no other service.
//
// # Tables
//
//	cluster_nodes       id (bigserial, one per Join), name, admin_url
//	                    (where the others reach its admin API),
//	                    pipeline_digest (Options.Pipeline: the hash of its
//	                    sources and destinations, compared with the live
//	                    nodes', see Pipeline; '' from a node that gave
//	                    none), machine (Options.Machine: the cores it
//	                    runs on), started_at, heartbeat_at. A node is live
//	                    while its heartbeat is less than one Lease old; dead
//	                    rows are listed for an hour (GET /api/v1/cluster),
//	                    then deleted. Columns added after the first version
//	                    are added in place by Join (ADD COLUMN IF NOT
//	                    EXISTS).
//	cluster_partitions  partition, owner (a node id or NULL), token,
//	                    expires_at, acquired_at: one row per partition, the
//	                    lease and its fencing token.
//
// A node is identified by its id, not its name: a process restarted under
// the same name is a new member and takes partitions with new tokens, so
// the two incarnations can never pass for each other.
//
// # Partitions: by destination
//
// Queues map to a fixed number of partitions (default 64) by a hash of
// the destination alone (PartitionOf): every queue of one destination, from
// every source, lives in one partition, so one node delivers it.
//
// The alternative, a hash of (source, destination), spreads one busy
// destination over several nodes, but then the destination's rate limit
// and concurrency become cluster-wide resources: each owner would need a
// split budget (which strands capacity on owners whose sources are quiet,
// and must be rebalanced on every membership change) or a token bucket in
// the database (a round trip, and a hot row, per request). Fairness across
// a destination's sources, the round-robin of the delivery scheduler, would
// need the same. By destination, the rate limit, concurrency, circuit
// breaker, AIMD window and round-robin stay what they are on one node,
// local and exact, and the engine needs no change to keep them.
//
// The price: one destination's deliveries cannot use more than one node.
// That is the right place for the limit to be: a destination's throughput
// is bounded by its own rate limit and concurrency, not by fanout's CPU,
// and the load the cluster spreads is many destinations. Ingest is not
// partitioned at all: any node accepts any event.
//
// The partition count is fixed when the first node creates the tables; a
// node configured with another count is refused at Join. FNV-1a is fixed
// too: a change of either would move queues while nodes of two versions
// run.
//
// # Leases: rows with an expiry, not advisory locks
//
// A session advisory lock is owned by a connection. That makes ownership
// hostage to TCP: a node cut off by a network partition keeps its locks
// until the server notices the dead connection, which with default
// keepalives takes minutes, far past the 10 s failover. It ties each lease
// to one pinned connection (poorly compatible with pgxpool and with
// transaction-mode poolers), gives no fencing token to check writes
// against, and is invisible to the cluster view except through pg_locks.
//
// A lease row has an expiry set by the database's clock (now() + Lease),
// renewed by the owner's heartbeat, and visible to every node. Failover is
// then a plain function of time: a dead node's leases end at most Lease
// after its last renewal, whatever happened to its connections. Every
// expiry is decided by the database's clock alone, so the nodes' clocks
// may disagree; a node's own clock only decides when it stops delivering
// (below), and only its rate matters there, not its setting.
//
// # One round, every Heartbeat
//
//  1. Upsert the node's row (heartbeat_at = now()), renew every lease the
//     node holds that has not run out (RETURNING partition, token), delete
//     node rows dead for an hour, read the live nodes and the partitions:
//     one pipelined batch, one round trip.
//  2. A lease held locally but not renewed is lost (it ran out, or another
//     node took it): the engine hears of it on Changes.
//  3. The node's share: the live nodes ordered by id split the partitions,
//     the first Partitions mod N of them one more. Every node computes
//     every share from the same table, so nobody assigns partitions to
//     anybody; differing views (a heartbeat seen by one node and not yet by
//     another) last one round.
//  4. Over its share, the node hands its highest partitions over (below).
//     Under its share, it takes free or expired partitions (UPDATE ...
//     token = token + 1 over SELECT ... FOR UPDATE SKIP LOCKED).
//
// # Handover: drain, then release
//
// A partition given up on purpose (rebalancing) moves in two phases, so
// that a planned move sends nothing twice:
//
//  1. Drain: the engine hears at once that it must start no more requests
//     on it (a Change with Draining). The node keeps the lease, renewed by
//     every round as before, and Owns keeps giving its token, so the
//     outcomes of the requests still in flight are written under it.
//  2. Release: when the engine has nothing in flight on the partition and
//     every outcome written, it calls Drained; the node then drops the
//     lease locally (no write presents the token after this), sets owner
//     = NULL and expires_at = now(), and NOTIFYs fanout_cluster, so that
//     the others run a round at once and the node under its share takes it.
//
// The wait is bounded by Options.Grace (default Lease/2): after it the node
// releases anyway. A request still in flight then (a destination that hangs
// until the client's timeout) is the fencing's case: its outcome is refused
// and the new owner sends its jobs again, as after a death. Releasing at
// once instead, as a first version did, had every outcome in flight at a
// rebalance refused: thousands of duplicates over ten restarts in `fanout
// bench cluster` (BENCHMARKS.md).
//
// Joining: the new node's row and NOTIFY make every node run a round; those
// over their new share hand the surplus over, and the new node (and any
// node under its share) takes it on the NOTIFY of the release. A partition
// is unowned for the time its requests in flight take to finish, at most
// the grace, then the few milliseconds between the release and the take:
// always less than a Lease. Leaving: Leave runs after the engine has
// stopped and written its last outcomes (server.New), so there is nothing
// left to drain: it releases every lease at once, deletes the node's row
// and NOTIFYs; the others take the partitions at once. Dying: the node's
// leases run out at most Lease after its last renewal, and its row stops
// being live at the same time; at their next round (at most one Heartbeat
// later) the others see a larger share and take the expired leases. At the
// defaults (Heartbeat 1s, Lease 5s) that is at most 6 s, within the 10 s
// asked; the requests in flight at the death are the ones fencing cannot
// save from being sent twice.
//
// # Fencing
//
// Each partition's token increases by one at each takeover (never at a
// renewal or a release). The engine gets the token with the partition
// (Change, Owns) and presents it on every write of that partition's jobs:
// the store's Apply and claims call Fence(ctx, tx, partition, token) first
// in their transaction. Fence selects the lease row with that token and an
// unexpired lease, FOR KEY SHARE, and fails with ErrFenced if there is none.
//
// Why this holds when the old owner is only slow, not dead (a GC pause,
// SIGSTOP, a VM migration, a network partition that heals):
//
//   - A write that reaches Fence after a takeover committed sees the new
//     token (each READ COMMITTED statement sees the latest commit, and a
//     row being taken over is waited for, then re-read) and fails.
//   - A write that passed Fence before the takeover holds KEY SHARE on the
//     lease row until it commits or rolls back. The takeover locks the row
//     FOR UPDATE, which conflicts with KEY SHARE, so it cannot happen in
//     between: SKIP LOCKED makes the taker pass over that partition until
//     the old transaction is over, and the new owner then reads its
//     result. The old owner's renewals, which update the row without
//     touching its key, do not conflict with KEY SHARE.
//   - A slow owner paused inside such a transaction would hold the
//     takeover back for as long as it is paused. Fence therefore sets
//     idle_in_transaction_session_timeout (FenceIdleTimeout, 1 s) for the
//     rest of the transaction: PostgreSQL ends the idle session, the
//     transaction rolls back, and the takeover proceeds.
//   - Fence also refuses a lease that has run out on the database's clock
//     (clock_timestamp(), not the transaction's start), so an owner whose
//     lease lapsed cannot write even before anyone took over.
//
// What fencing cannot cover is the request to the destination, which is
// not in the database. For that the node stops on its own before its lease
// can end: the renewal's deadline is the moment the renewal was sent plus
// Lease minus Margin, on the node's monotonic clock. The database sets the
// expiry to its now() + Lease, read after the request was sent, so the
// node's deadline comes at least Margin before the database's expiry as
// long as the two clocks tick at about the same rate; no agreement on the
// time of day is needed. Owns turns false at that deadline without waiting
// for the heartbeat loop, so an engine that asks before each request, once
// its jobs are read (a read of a database that stopped answering may end
// past the deadline), never starts a delivery on a lease that may be gone. A request already in
// flight when a paused process resumes may still reach the destination
// after the takeover: a duplicate, which at-least-once delivery and the
// messageId idempotency keys already allow; its outcome is not recorded,
// since Fence refuses it.
//
// # Wake-ups
//
// The append transaction queues the node's notifications (QueueNotify) in
// its batch: a pg_notify per owner, on that node's own channel
// (fanout_jobs_<id>), naming the partitions, delivered on commit and not
// at all on rollback. A commit wakes its partitions' owners and no other
// node, however many nodes there are: when every node heard every commit,
// each of N nodes woke for the commits of all N. A partition the appending
// node owns is not notified at all; its own store announces the jobs to
// its engine (jobstore's Applied). Each node holds one connection in
// LISTEN and hands the partitions it owns to Wakeups, coalescing repeats
// while the engine is busy (memory bounded by the partition count). The
// delivery is a push, not a poll: in the tests, under a millisecond after
// the commit. A partition gained is announced on Changes, and the engine
// scans it then, so notifications sent before the gain are not needed.
//
// The owners come from the last round's read of cluster_partitions (at
// most two heartbeats old, viewTTL), and a partition may have moved since.
// A commit before the move is found by the new owner's scan of its gain;
// for one after the move, the notification went to the old owner, and:
//
//   - the old owner, alive, forwards it to every node (fanout_jobs): the
//     new owner wakes at once;
//   - the appending node notifies every node after its commit (Committed)
//     when, by then, it had lost a partition it counted as its own, or its
//     view was more than viewTTL old; with no view that young, it notifies
//     every node in the transaction;
//   - and each partition gained is woken once more viewTTL after the gain
//     (rewake): an appending node's view at most viewTTL old can only have
//     named the old owner for a commit before that, so a notification lost
//     to an owner that left or died is made up for then.
//
// When the LISTEN connection is lost, notifications sent meanwhile are
// lost too, so after reconnecting the node wakes every partition it owns.
// NOTIFY serializes committing transactions on a database-wide lock; the
// job store's group commit serializes them already (its meta row).
//
// # Limits (this phase)
//
//   - Wiring: server.New joins (cluster.node_name) when storage.postgres is
//     set and Leaves after the engine's last outcomes are written; the
//     job store (jobstore/postgres, Options.Cluster) queues QueueNotify in each
//     group commit's first round trip and calls FenceAll in Apply with
//     the tokens Owns gives at that moment (jobstore.ErrFenced when a
//     partition is not owned or the token is stale: the update is
//     dropped, the new owner delivers again); the delivery engine
//     (delivery.Options.Ownership) follows Changes and Wakeups, scanning a
//     gained partition's queues with one Store.Queues call per batch of
//     gains, forgetting a lost one's queues at once, asking Owns before
//     each dispatch turn and again once a request's jobs are read, and
//     calling Drained when a partition handed over
//     has nothing left in flight.
//   - A handover is not cancelled: a partition being drained is released
//     even if the node's share grows again meanwhile (the node retakes a
//     free partition at its next round).
//   - In a cluster the engine reads every job back from the store: the
//     jobs a node's own appends announce are not all of a queue's new jobs
//     (other nodes append to it too), so they only wake the queue. One
//     Pending read per page, not per job, but more reads than on one node.
//   - Apply costs one more round trip in a cluster (FenceAll before the
//     batch of writes).
//   - Comparing pipelines (Options.Pipeline) and counting the nodes on
//     one machine (Options.Colocated) is one more read of cluster_nodes
//     per Heartbeat on each node, in a loop of its own so that a slow read
//     never delays a renewal. The comparison tells, it does not refuse: a
//     node whose pipeline differs still joins and delivers.
//   - A hot destination is delivered by one node (above).
//   - Balance counts partitions, not load: two busy destinations hashed to
//     one partition stay together. More partitions than nodes (64 by
//     default) keeps this small.
//   - With several servers (below), a node's takeover of one server's
//     partitions does not wait for another server, but its start-up needs
//     them all.
//
// # Several servers
//
// When storage.postgres lists N servers, partition p lives on server
// p mod N (ServerOf): the destination's jobs (jobstore/shard), its lease
// and its fencing token are all in that server's database, so Fence runs in
// the same transaction as the writes it guards, exactly as with one server.
// Each server has its own cluster tables holding only its partitions
// (Options.Server and Servers); a node joins on every server, one Node per
// server under one name, and a Group gathers them for the delivery engine
// (Owns asks the Node of the partition's server; Changes and Wakeups merge
// theirs). The shares are computed per server among the nodes live there,
// from that server's own table, so each server balances by itself.
//
// Why not one coordinating database and the jobs spread: the fence must be
// checked in the transaction that writes the outcome, which is on the
// destination's server; a lease on another database could change between
// the check and the commit. And with one coordinator, its outage would stop
// every server's delivery; here a server that is down stops only its own
// Node: its leases run out, the engine stops its partitions, the other Nodes
// are untouched, and when it is back its Node takes its partitions again
// with new tokens. Nothing coordinates across servers, so nothing needs to.
//
// A database keeps the partition rows it was created with. Join refuses
// one whose rows are not those of its place in the list (another order,
// another length): the jobs stored there under the old layout would have no
// owner. Changing the list needs the nodes stopped, the jobs delivered and
// the cluster_partitions tables dropped.
package cluster
