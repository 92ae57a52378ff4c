// Package pebble is fanout's embedded job store: a [jobstore.Store] on a
// Pebble database in one directory, the default storage.
//
// # Why this layout
//
// A job store for a delivery engine is written once per job, read once soon
// after, and then thrown away. On an LSM such as Pebble the expensive part is
// not writing but deleting: a point deletion per delivered job is one more
// key written, carried through compactions, and stepped over by every
// iterator until it reaches the bottom level. So the layout is built so that
// finished jobs go away in whole ranges, and so that every read is one seek
// followed by a short forward scan.
//
// # Keys
//
// Every key starts with one byte that names its keyspace. A queue is encoded
// as its source and destination names, each preceded by its length as a
// uvarint. Because of the length prefixes no queue's encoding is a prefix of
// another's, so all keys of one queue in one keyspace form one contiguous
// range: [prefix+queue, prefixEnd(prefix+queue)). Integers are big-endian, so
// byte order is numeric order; times are Unix nanoseconds with the sign bit
// flipped, so byte order is time order.
//
//	'p' queue seq             pending job        value: job record
//	'r' queue dueAt seq       retry job          value: job record
//	'd' day source messageId  dedupe record      value: when it was stored (8 bytes)
//	'm' "seq"                 highest Seq ever assigned (8 bytes)
//
// Step by step, what each operation does with them:
//
//  1. Append writes, in one synced batch, one 'p' key per (event,
//     destination) with a fresh Seq, one 'd' key per new event, and the new
//     high-water mark under 'm' "seq". Seqs are assigned by a single
//     committer goroutine (see commit.go), so within a queue keys are
//     appended in Seq order and become visible in that order.
//  2. Pending(q, after) seeks to 'p' q after+1 and scans forward within q's
//     range. A queue's pending jobs are one contiguous range in Seq order.
//  3. Finish of a pending job point-deletes its 'p' key. Reschedule of a
//     pending job deletes its 'p' key and writes its 'r' record in the same
//     batch: a crash leaves one or the other, never neither. Rescheduling a
//     retry job deletes its old 'r' key and writes the new one; Finish of a
//     retry job point-deletes it. Iterators skip point tombstones without
//     our help, and a tombstone goes away on its own once a compaction
//     carries it to the bottom level or a Drop's range covers it, so even a
//     small queue that never reaches its next Drop does not keep its
//     finished jobs forever.
//  4. Drop{q, Below} is a single DeleteRange('p' q, 'p' q Below). The engine
//     issues one every few thousand settled jobs of a queue, not per job:
//     each range tombstone in the memtable must be re-fragmented by every
//     new iterator until the memtable flushes, so thousands of them would
//     make reads quadratic (Append's dedupe Gets included: they read the
//     memtable's range tombstones too). The range lets compactions drop the drained
//     prefix's point tombstones at once and lets a scan from the start of
//     the queue (after a restart) skip them with one seek.
//  5. Retries(q, until) is a prefix scan of 'r' q: keys sort by due time, so
//     the scan stops at the first job due after until (or over the limit),
//     and that job's due time is "next".
//  6. Queues skip-scans: at each 'p' or 'r' key it decodes the queue and
//     seeks straight to the end of that queue's range. It reads about one
//     key per queue, never the drained jobs.
//  7. Dedupe records are bucketed by UTC day. An event is a duplicate when
//     its (source, messageId) has a record in one of the buckets that can
//     overlap the window (two for the default 24h) whose stored time is
//     within the window; the time is compared exactly, the bucket only
//     narrows the lookup. Once a bucket has wholly left the window, the
//     next group of appends that stores something carries one DeleteRange
//     that removes it and every older one. An in-memory Bloom filter per bucket (filter.go), loaded from the
//     records when the store opens, answers nearly every lookup of a new
//     messageId without Pebble; a "maybe" goes to Pebble, whose bloom
//     filters on every level keep that lookup cheap too.
//  8. The high-water mark is written in the same batch as the jobs it
//     numbers, so after a crash the store resumes above every Seq that any
//     stored job has, and never hands one out twice.
//
// # Records
//
// Job records are a compact binary encoding (see record.go): a version byte
// and length-prefixed fields. The queue, Seq and due time are not repeated
// in the value; they are read back from the key. A record that does not
// decode is reported as an error that wraps the cause, never a panic.
//
// Each job record carries a full copy of its event's payload, so an event
// sent to three destinations is stored three times. That keeps a job
// self-contained (one read delivers it, and dropping a queue frees its
// payloads without reference counting); storing each event once and
// referring to it from its jobs is left for later, when fan-out is wide
// enough for the space to matter.
//
// When a memtable flushes, job records move to blob files (Pebble's value
// separation) and the sstables keep their keys and a reference. Compactions
// then move keys, not payloads: what a backlog of millions of jobs costs the
// compactions, which share two cores with delivery, is the size of its keys.
//
// # Durability
//
// Append returns only after its batch is fsynced, and concurrent Appends
// share fsyncs (group commit: jobstore/groupcommit gathers the calls,
// commit.go writes each group and pipelines the syncs). Apply is not synced;
// jobstore.Update explains why losing one is safe. What Open does with a
// damaged directory, so that it never runs with jobs silently missing, is
// told in damage.go.
package pebble
