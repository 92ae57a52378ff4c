// Package jobstore defines fanout's durable job storage: one job per (event,
// destination), grouped into virtual queues per (source, destination). The
// embedded implementation lives in jobstore/pebble, the PostgreSQL one in
// jobstore/postgres, and jobstore/open picks one from the configuration.
// Every implementation passes the conformance suite in jobstore/storetest.
//
// Besides the Store methods, every implementation takes an Applied
// callback in its options (see AppliedFunc): how the delivery engine hears
// of new jobs without reading them back.
package jobstore

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/fanout/fanout/internal/event"
)

// ErrUnavailable wraps every error that means the store cannot take writes
// right now (disk full, database down). The tracking API answers it with 503.
var ErrUnavailable = errors.New("storage unavailable")

// ErrFenced is returned by Apply when the update touches queues of a
// cluster partition this node no longer owns (its lease ran out or another
// node took it over): nothing of the update was written, and the new owner
// delivers its jobs again. Only stores shared by a cluster return it.
var ErrFenced = errors.New("partition lease lost; the update was not written")

// DefaultDedupeWindow is how long a (source, messageId) pair is remembered
// when a store's DedupeWindow option is zero, and the default of the
// configuration file's dedupe_window.
const DefaultDedupeWindow = 24 * time.Hour

// Queue names one virtual queue: the jobs of one source for one destination.
type Queue struct {
	Source      string
	Destination string
}

// Job is one event to deliver to one destination.
type Job struct {
	Queue Queue
	// Seq is assigned by the store when the job is appended. It increases
	// with every append, so a queue's pending jobs are ordered by Seq.
	Seq   uint64
	Event event.Event
	// Attempts counts the delivery attempts made so far.
	Attempts int
	// DueAt is, for a job waiting to be retried, when it is due. Zero for a
	// pending job that was never rescheduled.
	DueAt time.Time
	// LastError describes the last failed attempt.
	LastError string
}

// Entry is one event to append with the destinations it goes to.
type Entry struct {
	Event        event.Event
	Destinations []string
	// Replay skips deduplication: the event is delivered again on purpose
	// (fanout replay of archived events), and leaves no dedupe record.
	Replay bool
}

// Appended is what a store announces once the jobs of one Append call are
// readable: the entries it stored (duplicates left out) and the Seq of the
// first job. Within one Append the jobs have consecutive Seqs from First, in
// the order of Entries and, within an entry, of its Destinations. Between
// Appends Seqs only increase, but they may skip numbers (the PostgreSQL
// store leaves unused the Seqs it reserved for duplicates), so one
// announcement says nothing of the Seqs of another.
type Appended struct {
	Entries []Entry
	First   uint64
}

// Runs calls fn for each run of consecutive entries of a that have the same
// source and destinations, in order. The job of entries[i] for dests[k] has
// Seq first + i*len(dests) + k.
func (a Appended) Runs(fn func(entries []Entry, dests []string, first uint64)) {
	seq := a.First
	for i := 0; i < len(a.Entries); {
		e := a.Entries[i]
		j := i + 1
		for j < len(a.Entries) && a.Entries[j].Event.Source == e.Event.Source &&
			slices.Equal(a.Entries[j].Destinations, e.Destinations) {
			j++
		}
		fn(a.Entries[i:j], e.Destinations, seq)
		seq += uint64((j - i) * len(e.Destinations))
		i = j
	}
}

// AppliedFunc is the announcement of newly stored jobs that every store
// takes as its Applied option. A store calls it once per Append call that
// stored at least one entry, with what that call stored (duplicates left
// out) and the Seqs Pending reads its jobs back with, once they are
// readable and before Append returns. Calls come one at a time, each
// queue's jobs in Seq order. (A store spread over several servers,
// jobstore/shard, numbers each server's jobs on its own and announces each
// server's part of an Append in a call of its own: Seqs are ordered within
// a queue, and a queue lives on one server.) A store may call it before its write is durable (the embedded
// store does, while its fsync runs): should the write then fail, Append
// fails and the client sends again, a duplicate that at-least-once delivery
// allows. It runs on the store's committer and must not block.
type AppliedFunc func(Appended)

// Reschedule moves a job to the retry set, due at DueAt.
type Reschedule struct {
	// Job is the job as it was read: a pending job (Job.DueAt zero) or a
	// retry job (Job.DueAt set), whose old record is replaced.
	Job       Job
	DueAt     time.Time
	Attempts  int
	LastError string
}

// Drop removes every pending job of Queue whose Seq is below Below, at a
// cost that does not grow with the number of jobs (a range deletion, a
// moved watermark). The delivery engine drops a queue's prefix once every
// job in it has ended or been rescheduled.
type Drop struct {
	Queue Queue
	Below uint64
}

// Update is a set of changes applied together. It is not synced: losing it in
// a crash means some jobs are delivered again, never that one is lost,
// because a rescheduled job's pending record is only removed in the same
// write that creates its retry record.
type Update struct {
	Drops      []Drop
	Reschedule []Reschedule
	// Finish removes jobs that ended (delivered, failed or archived), one
	// by one.
	Finish []Job
}

// Changes is how many changes u holds.
func (u *Update) Changes() int { return len(u.Drops) + len(u.Reschedule) + len(u.Finish) }

// Store is fanout's job storage.
type Store interface {
	// Append durably stores each entry's event and one pending job per
	// destination, then returns, so a nil error means every job survives a
	// crash. Concurrent calls share one sync (group commit). An event whose
	// (source, messageId) was appended within the dedupe window is not
	// stored again and duplicate[i] is true for it.
	Append(ctx context.Context, entries []Entry) (duplicate []bool, err error)
	// Pending returns up to limit pending jobs of q with Seq > after, in Seq
	// order, skipping jobs that were rescheduled or finished.
	Pending(ctx context.Context, q Queue, after uint64, limit int) ([]Job, error)
	// Retries returns up to limit retry jobs of q due at or before until,
	// soonest first, and when the next one after those is due (zero when
	// there is none).
	Retries(ctx context.Context, q Queue, until time.Time, limit int) (jobs []Job, next time.Time, err error)
	Apply(ctx context.Context, u Update) error
	// Queues lists the queues that hold pending or retry jobs, without
	// reading finished ones. The engine calls it at start-up.
	Queues(ctx context.Context) ([]Queue, error)
	// Close flushes and releases the store.
	Close() error
}
