// Package postgres is fanout's PostgreSQL job store: a [jobstore.Store] on
// a database that several fanout nodes can share.
//
// # Why this layout
//
// A job is written once, read once soon after, and then thrown away. On
// PostgreSQL the expensive part is again the throwing away: a DELETE per
// delivered job leaves a dead tuple and dead index entries that VACUUM must
// find and reclaim later, and an UPDATE per attempt does the same to the
// row it replaces. Under a steady million jobs an hour that is a table that
// is forever being vacuumed and never shrinks. So jobs are only ever
// inserted, their end is recorded by inserting too (or, for a whole prefix
// of a queue, by moving one watermark), and space comes back when a whole
// partition of jobs has ended and is dropped: DROP TABLE returns its files
// to the operating system at once, with nothing for VACUUM to do. This is
// RudderStack's rotating job tables ("datasets") done with declarative
// partitioning, so that queries name one table and PostgreSQL prunes the
// partitions a query cannot touch.
//
// # Tables
//
//	meta       one row: last_seq, the committed counter (every Seq up to
//	           it is committed or rolled back); dedupe_span, the window
//	           the dedupe buckets were made for
//	seq_alloc  one row: last_seq, the highest Seq handed out
//	queues     id, source, destination, drop_below: one row per virtual
//	           queue; the id keeps the jobs' keys small, drop_below is the
//	           queue's watermark (every job below it has ended)
//	jobs       (queue_id, seq) primary key, the event's message_id, type,
//	           received_at (Unix ns) and payload. Partitioned by range of
//	           seq: jobs_p<lo> holds Seqs [lo, lo+PartitionJobs)
//	finished   (queue_id, seq) of pending jobs that ended or moved to retries
//	           out of order (ahead of a job of their queue still pending);
//	           partitioned exactly like jobs (finished_p<lo>)
//	job_parts  lo, hi of each jobs/finished partition pair
//	retries    (queue_id, seq) primary key, due_at, attempts, last_error and
//	           a copy of the event; index (queue_id, due_at, seq)
//	dedupe     (bucket, source, message_id) primary key, stored_at.
//	           Partitioned by bucket: dedupe_b<n> holds bucket n, the
//	           records stored in [n*window, (n+1)*window)
//	schema_migrations  the schema versions applied
//
// message_id is bytea, not text: PostgreSQL text refuses NUL bytes, and one
// event with "\u0000" in its messageId must not fail the whole group commit
// it shares with others.
//
// # Operations, step by step
//
//  1. Append hands its entries to the committer goroutine, which gathers
//     every Append waiting into a group and commits it in one transaction
//     (commit.go), two groups at a time, each on a connection of its
//     own. A group's round trips: BEGIN and the dedupe upsert,
//     pipelined; its Seqs (step 2); one COPY of all its jobs; the wait for
//     lower Seqs and COMMIT, pipelined. Seqs are taken once the dedupe has
//     answered, for the stored jobs only, so each Append's stored jobs
//     have consecutive Seqs, as jobstore.Appended expects. Partitions the
//     new Seqs need (and the next one, once the Seqs pass the middle of
//     the highest partition) are created and committed before the COPY,
//     under an advisory lock. synchronous_commit is on: Append returns
//     after COMMIT, that is after the WAL is flushed, and the group's
//     Appends share that flush. Options.Applied hears of each Append's
//     jobs after the commit and before Append returns.
//  2. Seqs are handed out by seq_alloc, advanced in a short transaction of
//     its own on the committer's own session, not in the group's: were it
//     in the group's, its row lock would be held until the group commits,
//     and the groups of the whole database would copy their jobs and flush
//     their WAL one at a time (they did, when meta.last_seq was the only
//     counter). Readers page by Seq, so Seqs must still commit in order: a
//     reader paging with Pending(after) must never see Seq n+1 before Seq
//     n. So before seq_alloc's transaction commits, the group's
//     transaction takes an advisory lock keyed by its first Seq, held
//     until it ends; and in its last round trip it waits for every such
//     lock with a lower key (read from pg_locks): every group of any node
//     with lower Seqs that is still in flight; then it moves meta.last_seq
//     up to its last Seq and commits. So meta.last_seq stays the committed
//     counter, moved in Seq order. Dedupe upserts, COPYs and WAL flushes of
//     different groups overlap; only the commits are ordered. No
//     deadlock: a group waits only for lower Seqs, and a group holding
//     Seqs has made all its dedupe writes, which a later group may wait
//     for. A group that rolls back leaves its Seqs unused, a gap, which
//     Seqs may have. On one node the groups take Seqs one at a time, and
//     announce and answer in Seq order. See sequencer (seq.go).
//     A new jobs partition has no planner statistics: the committer has it
//     analyzed, with its finished twin, after its first thousand Seqs and
//     a few times more as it fills (analyzeMarks), so that Pending is
//     planned for the rows it has.
//  3. Pending(q, after) reads jobs of q with seq > max(after, drop_below-1)
//     that have no finished row, by the primary key, from the partitions
//     that can hold such Seqs, probing finished once per job (a per-row
//     subplan: as an anti-join, a generic plan materialized the queue's
//     finished rows and compared every job with each). In the same
//     snapshot it reads the watermark and the committed Seq counter, and
//     the store remembers what the read showed (watermark.go): the
//     queue's pending Seqs up to the last one read, or up to the counter
//     when the page was not full.
//  4. Apply runs in one transaction with synchronous_commit off for that
//     transaction only: like the embedded store's unsynced batch, losing
//     it in a crash means jobs delivered again, never lost, because a
//     rescheduled job's end (watermark or finished row) and its retries
//     row commit together. Pending jobs that end or move to retries and
//     are their queue's first pending ones, as the store's reads showed,
//     move the queue's watermark; only the others, ending out of order,
//     get a finished row. The engine ends most jobs in order, so a drain
//     writes one small UPDATE per update instead of a row, an index entry
//     and their WAL per job, and a read from the watermark (a queue read
//     again from 0) finds its first pending job at once instead of
//     stepping over up to a Drop's worth (4,096) of finished rows. Per
//     update: one UPDATE of queues for the Drops and the watermarks (a
//     watermark only moves up); one INSERT ... ON CONFLICT into retries
//     for all Reschedules (a retry job rescheduled again is updated in
//     place: a failing job is written once per attempt, but attempts are
//     spaced by backoff, so this is a small share of the writes); one
//     INSERT of finished rows; one DELETE from retries for retry jobs that
//     ended. BEGIN, all of them and COMMIT go in one round trip (a pgx
//     batch); in a cluster, BEGIN and the fence take two before it.
//  5. Retries(q, until) reads q's due retries by the (queue_id, due_at,
//     seq) index, and "next" from the same index without reading an
//     event: the due_at of the first due job not returned, or else of the
//     first job not due. A queue whose jobs wait for their backoff costs
//     one index probe a call, not a payload.
//  6. Queues lists the queues with a retry row, or with a job at or above
//     their watermark that has no finished row: one index probe per queue
//     and partition, from the watermark, never a scan of drained jobs.
//  7. Cleanup (every CleanupInterval) looks at each partition wholly below
//     the committed last_seq (so no group in flight can still write to it)
//     and drops it, with its finished twin, when no queue has a job in it at
//     or above the queue's watermark without a finished row. That check is
//     one index probe per queue, from its watermark. A DROP needs an ACCESS
//     EXCLUSIVE lock on the parent, and a DROP waiting for it would queue
//     every later reader behind it, so it waits at most 200 ms and is tried
//     again at the next cleanup. The partition the counter is in cannot
//     go that way, and once a backlog has drained it would keep its space
//     until appends filled it: so when it is drained and has used at least
//     1/64 of its Seqs or holds 1 MB (retireBytes), and no group is in
//     flight (seq_alloc equals last_seq), Cleanup first moves the committed
//     counter to its end (a gap in the Seqs: seq_alloc follows), and it
//     goes with the others. TestBacklogSpaceReturned
//     shows 200,000 jobs' 83 MB coming back to within a few kB.
//     Nodes sharing the database check, drop, retire and compact
//     partitions one step at a time, under an advisory lock, each step
//     first finding its partition still there: a drained partition is
//     dropped once, by the node that comes first.
//  8. A partition that is not drained but holds few pending jobs (at most
//     1/64 of its span and 1/8 of its rows: a queue whose destination is
//     down, among healthy ones) is rewritten by Cleanup
//     (compactJobPart): its pending jobs are copied, Seqs and all, into a
//     new table for the same range, which is attached in its place, and
//     the old one is dropped. Only the swap takes the exclusive lock.
//
// # In a cluster
//
// With Options.Cluster (server.New sets it whenever storage.postgres is
// set), two things change:
//
//   - The group commit queues the node's notifications (QueueNotify) in
//     its first round trip, for the partitions of every queue of the
//     group: each owner on another node hears of the jobs when the group
//     commits, and not at all if it rolls back; no extra round trip. The
//     partitions this node owns are not notified: Options.Applied, which
//     must reach this node's engine (server.New wires it so), announces
//     them. After the commit, Committed notifies every node of those whose
//     owner may have changed meanwhile, which takes a round trip only then.
//   - Apply first asks the node for the token of every partition the update
//     touches (Owns) and fails at once with jobstore.ErrFenced if one is
//     not owned; then, in the transaction, cluster.FenceAll checks the
//     tokens and locks the lease rows (FOR KEY SHARE) before the writes,
//     one more round trip. A stale token fails with jobstore.ErrFenced and
//     writes nothing: the engine drops the update, and the partition's new
//     owner delivers those jobs again (at least once). A write that passed
//     the fence commits before any takeover of its partitions: the taker
//     passes over a locked lease row until the write is over.
//
// # Deduplication
//
// An event is a duplicate when its (source, messageId) was stored less than
// the window ago, by any node. The rule has to hold when two nodes store
// the same id at the same moment, which a lookup followed by an insert
// cannot promise; a unique index can, because an insert that meets another
// transaction's uncommitted entry for the same key waits for it to commit
// or abort. But a unique index over all time would never shrink, and a
// partitioned table's unique index must contain the partition key.
//
// So records are bucketed: the bucket span is the window, bucket n is
// partition dedupe_b<n>, and a record stored at t goes into the bucket of t.
// A record that can still be in the window is in the current bucket or the
// previous one. One statement per group decides (commit.go, upsertDedupe):
//
//	INSERT INTO dedupe ... SELECT ... FROM unnest(ids)
//	WHERE NOT EXISTS (a record of the id in the previous bucket newer than now-window)
//	ON CONFLICT (bucket, source, message_id)
//	DO UPDATE SET stored_at = excluded.stored_at WHERE dedupe.stored_at <= now-window
//	RETURNING source, message_id
//
// The ids it returns were stored; the others are duplicates. Within the
// current bucket the primary key decides, and a writer that meets another
// transaction's uncommitted record of the same id waits for it: first
// commit wins, on any node. A record older than the window is replaced (the
// id is stored again and remembered from now); a duplicate leaves the record
// as it is, so it does not extend the window.
//
// The lookup in the previous bucket sees only committed records. That is
// exact except for a writer on another node still committing on the other
// side of the boundary, which can only be one whose clock read less than
// clockMargin (a minute) before the boundary. So a group within clockMargin
// of its bucket's end also records its winners in the next bucket, where
// such a writer meets them in the primary key; an id that meets a record
// there lost the race, is a duplicate after all, and its first record is
// deleted again in the same transaction. That costs a second write for one
// event in 1,440 with the default 24h window, and assumes the nodes' clocks
// agree within a minute. Rows are inserted in key order, and a group takes
// its Seqs only after every dedupe write of the group, so that two groups,
// of one node or two, wait for each other rather than deadlock.
//
// Buckets before the previous one cannot hold a record from the window, and
// Cleanup drops them whole. The span is stored in meta: a store opened with
// another window drops the dedupe partitions and starts afresh (it logs so),
// because buckets of different spans cannot be compared.
//
// # Migrations
//
// The schema is a list of versioned SQL scripts (schema.go) applied at
// Open, each in a transaction with its row in schema_migrations, under a
// session advisory lock (pg_advisory_lock): nodes starting together take
// turns, and the second finds nothing left to do. The runner is
// internal/pgmigrate, shared with the stats and the archive, which keep
// version tables of their own.
//
// # Errors
//
// Every Append that fails is ErrUnavailable, whatever the cause: a group
// that did not commit stored nothing, and one whose COMMIT answer was lost
// is not known to be stored, so the client must send again (and the dedupe
// records answer a resend of what was stored). Other calls wrap
// ErrUnavailable when the cause is the connection or the server (connection
// errors, SQLSTATE classes 08, 25, 53, 57, 58). The DSN's password appears
// in no error and no log line: pgx redacts it from its parse errors, and the
// store logs only the host and database.
//
// # Limits (phase A)
//
//   - Commits are still ordered database-wide (step 2): a group's COMMIT
//     waits for the groups with lower Seqs, whatever their queues. Only the
//     commits wait, not the work before them, but in a cluster of many
//     nodes one slow group delays the commits of all. Per-partition
//     counters would lift that, with Pending's order kept per partition.
//   - Each group takes Seqs in a transaction of its own (two more round
//     trips than a group that takes them in its own transaction, and a
//     read of pg_locks before its COMMIT), which a group of a few events
//     pays in latency.
//   - A partition stays as long as one job in it is pending: a queue whose
//     destination is down holds every partition it has jobs in, compacted
//     to its pending jobs but still a table (three files and a relcache
//     entry) each. Merging adjacent compacted partitions into one is left
//     for later.
//   - Pending reads every job from the cursor to the first pending one,
//     payload and all, before the finished rows rule them out: the jobs
//     that ended out of order ahead of the queue's first pending one. The
//     watermark follows in-order ends, so that is few.
//   - What the store remembers of its reads (watermark.go) is per process:
//     after a restart, or for a queue read past a gap, ends get finished
//     rows until a read from the watermark has been made again. It is
//     bounded to maxOpen Seqs per queue.
//   - JIT is turned off for the store's connections (unless the DSN sets
//     jit): a partition not yet analyzed made the planner's estimates
//     large enough for PostgreSQL to compile 0.2 ms reads for 120 to 390 ms.
//   - The dedupe records of a backlog stay for the dedupe window (155
//     bytes an event with messageIds of 20 characters, in
//     TestBacklogSpaceReturned): they are not the backlog's leftovers but
//     the promise that a resend within the window is caught, and they are
//     needed for the window whatever became of the jobs. They go whole,
//     with their bucket, between one and two windows after they were
//     written (Cleanup drops the buckets before the previous one), with
//     nothing for VACUUM to do. So a drained backlog gives back its job
//     tables at once (the next Cleanup) and its dedupe records when the
//     window has passed; "back within 10%" is measured on the job tables,
//     and the bench reports the dedupe records apart. A fixed-size hash
//     of (source, messageId) would make a record smaller when messageIds
//     are long (a UUID's 36 bytes and the source become 16), not when they
//     are short: the tuple header and the index entry are most of it.
//   - Each job carries a copy of its event's payload, as in the embedded
//     store.
package postgres
