// Package shard is the job store spread over several PostgreSQL servers,
// when storage.postgres lists more than one: a [jobstore.Store] that wraps
// one store per server (jobstore/postgres, through its exported API) and
// sends each queue's jobs to the server its destination lives on. It is
// how a cluster's write and delivery capacity grows past one database,
// as the many job databases of the source documents did.
//
// # Where things live
//
// The cluster maps every queue of a destination to one of its partitions
// (cluster.PartitionOf, 64 by default), and partition p lives on server
// p mod N (cluster.ServerOf). Everything about a destination is on that
// server: its jobs, its retries, its watermark, and in the cluster tables
// of that server, the lease of its partition and the fencing token its
// writes present. So the destination's rate limit, concurrency and the
// round-robin across its sources stay with one owner, as on one server,
// and a write is fenced in the same transaction that makes it.
//
// Each node has one cluster membership per server (cluster.Group), each
// leasing only that server's partitions from that server's tables; each
// server's store is given that membership (postgres.Options.Cluster), so
// its group commits wake the owners listening on that server. A server
// that is down stops only its own membership: the node's leases there run
// out, its engine stops delivering those partitions, and the partitions
// of the other servers are delivered as before. When it is back, the
// memberships take its partitions again (new tokens) and delivery resumes,
// with no restart.
//
// Why by partition and not by (source, destination) or by event: a
// destination split over two servers would need its limits and its
// fairness shared between two owners, and its fencing across two
// databases; an event kept whole on one server would put a destination's
// jobs on every server. By partition, one server, one owner, one fence.
// The price is the one a partition already has: a destination cannot use
// more than one server's write capacity.
//
// # Append: all or a 503, and what a resend stores
//
// Append splits each entry's destinations by server (an entry for none
// goes to the first server, for its dedupe record), appends on every
// server concerned at once, each with its own group commit, and returns
// once all have committed. It does not commit across servers atomically:
// there is no two-phase commit here. When one server fails, Append fails
// (jobstore.ErrUnavailable, which the tracking API answers with 503 and
// Retry-After), whatever the others did: a 200 is never given for an event
// that is not stored on every server it goes to. The other servers may
// have committed their part. That is safe because each server deduplicates
// by (source, messageId) the entries it stores: the client's resend (the
// same messageIds, as every Segment library sends) is a duplicate on the
// servers that stored it and stored on the one that was missing, so after
// the resend every destination has its job exactly once. An entry is
// reported a duplicate only when every server it went to found it one.
//
// So, while one server of N is down, ingest answers 503 for every request
// that has at least one event for one of that server's destinations, and
// 200 for the others. A batch is not split into a 200 for part of it: the
// tracking API has no way to say "these were stored, send those again"
// that the Segment libraries understand, and a resend of the whole batch
// is cheap and correct (the stored part is deduplicated).
//
// One consequence of per-server deduplication: an event resent within the
// window with more destinations than the first time (its integrations
// object changed) is delivered to the new destinations when they live on
// another server; on one server it is a duplicate as a whole. Clients do
// not do that in practice.
//
// # Seqs are per server
//
// Each server numbers its own jobs. Seqs increase within every queue, and
// every queue lives on one server, so what the delivery engine relies on
// (a queue's cursor, its watermark, the order of its announcements) holds;
// Seqs of queues on different servers are unrelated and may coincide. The
// servers announce their own part of each Append (Options.Applied of each
// server's store, all behind one lock: OneAtATime), so an Append concerning
// two servers is announced in two calls.
//
// # Reads and updates
//
// Pending and Retries go to the queue's server. Apply splits an update by
// server (the engine's updates concern one destination, so usually one
// server). Queues asks every server; one that does not answer fails the
// call, unless this node owns none of that server's partitions
// (Options.Holds): the engine lists queues to scan the partitions it gains,
// and a server on which it owns nothing has none of those. The engine
// lists with QueuesIn, naming the partitions gained, one listing at a time
// per server (PartitionServer says which server a partition lives on), so
// only their server is asked: a node that takes partitions of one server is
// held up neither by another server that is down or slow nor by the
// listing the engine is retrying there (under a heavy write load, listing
// a server's queues was seen to take longer than the engine's 10 s store
// timeout, for a minute).
//
// # Start-up
//
// Every server must answer at start-up (the schema is brought up to date
// on each, and each membership joins): a node does not start with a
// server down, and the error names the server (storage.postgres[i]).
// Running nodes ride out an outage without a restart.
package shard
