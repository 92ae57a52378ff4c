// Package groupcommit batches a job store's concurrent Append calls into
// group commits: what both stores (jobstore/pebble and jobstore/postgres)
// do the same way, in one place.
//
// Each caller hands its request to a Committer and waits. The committer
// takes one call, then every other call already waiting, up to a size
// bound: that is a group. It answers at once the calls whose context has
// ended, and hands the rest to the store's commit function, which writes
// them in one commit (a synced Pebble batch, a PostgreSQL transaction) and
// answers each call. So one fsync or one WAL flush serves every call of the
// group, and the more calls arrive at once, the larger the groups and the
// fewer the commits per call.
//
// What a commit is, in what order groups become visible, and what happens
// between writing and answering stay in the store: the committer only
// queues, groups, bounds, hands over and, with Close, stops.
package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/fanout/fanout/internal/jobstore"
)

// DefaultMaxBytes is the default of Options.MaxBytes: 8 MB, still hundreds
// of requests of the tracking API. In the embedded store it stays well
// below half a memtable (32 MB), above which Pebble would write a batch as
// a "flushable batch" of its own; in PostgreSQL it keeps one transaction's
// COPY to a few megabytes.
const DefaultMaxBytes = 8 << 20

// ErrClosed is what Commit returns after Close when Options.ErrClosed is
// not set.
var ErrClosed = errors.New("groupcommit: closed")

// Options configures a Committer. The zero value is ready to use.
type Options struct {
	// MaxBytes bounds a group: the committer stops taking calls into it
	// once their sizes (see Commit) add up to MaxBytes or more, so a
	// single call larger than MaxBytes makes a group of its own. Default
	// DefaultMaxBytes; it cannot be negative.
	MaxBytes int
	// InFlight is how many groups may be committing at once, each on a
	// goroutine of its own. While all of them are busy, the committer
	// waits, and the calls arriving meanwhile join the next group. Default
	// 1: the commit function then runs on the committer goroutine itself,
	// one group after the other, in the order they were formed. It cannot
	// be negative.
	InFlight int
	// ErrClosed is what Commit returns once Close has been called, the
	// store's own "closed" error. Default ErrClosed.
	ErrClosed error
}

func (o *Options) setDefaults() error {
	if o.MaxBytes < 0 {
		return fmt.Errorf("MaxBytes cannot be negative, got %d", o.MaxBytes)
	}
	if o.InFlight < 0 {
		return fmt.Errorf("InFlight cannot be negative, got %d", o.InFlight)
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.InFlight == 0 {
		o.InFlight = 1
	}
	if o.ErrClosed == nil {
		o.ErrClosed = ErrClosed
	}
	return nil
}

// Call is one caller's request on its way through a Committer.
type Call[T any] struct {
	// Req is the store's request, as passed to Commit.
	Req  T
	ctx  context.Context
	size int
	// done is buffered: answering never blocks the committer, whether or
	// not the caller still waits.
	done chan error
}

// Answer ends the call with err, nil when its request is committed. A
// commit function answers every call it is handed, exactly once, though
// not necessarily before it returns.
func (c *Call[T]) Answer(err error) {
	c.done <- err
}

// AnswerAll answers every call of calls with err.
func AnswerAll[T any](calls []*Call[T], err error) {
	for _, c := range calls {
		c.Answer(err)
	}
}

// CommitFunc commits one group. It owns calls, and must answer each of
// them (Call.Answer), after or before it returns.
type CommitFunc[T any] func(calls []*Call[T])

// Committer gathers calls into groups and hands each group to a
// CommitFunc. Start it with Start; Close stops it.
type Committer[T any] struct {
	opts   Options
	commit CommitFunc[T]
	// calls is unbuffered on purpose: a call that the committer has not
	// taken is still blocked in its send and can give up (Close, its
	// context) without leaving a request behind that nobody answers.
	calls     chan *Call[T]
	closing   chan struct{}
	stopped   chan struct{} // closed when run has returned
	closeOnce sync.Once
}

// Start validates opts and starts the committer goroutine, which hands
// each group to commit.
func Start[T any](opts Options, commit CommitFunc[T]) (*Committer[T], error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("groupcommit: %w", err)
	}
	c := &Committer[T]{
		opts:    opts,
		commit:  commit,
		calls:   make(chan *Call[T]),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go c.run()
	return c, nil
}

// Commit hands req, which counts size against Options.MaxBytes, to the
// committer and waits until its group's commit answers it. It returns that
// answer, Options.ErrClosed if Close was called before the committer took
// the call, or ctx's error if ctx ends first. In the last case the request
// may still be committed: the caller cannot know, as after a lost
// connection.
func (c *Committer[T]) Commit(ctx context.Context, req T, size int) error {
	call := &Call[T]{Req: req, ctx: ctx, size: size, done: make(chan error, 1)}
	select {
	case c.calls <- call:
	case <-c.closing:
		return c.opts.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-call.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops taking calls, and returns once every group taken has been
// handed over and every commit function has returned. Calls waiting to be
// taken, and later ones, return Options.ErrClosed. A commit function that
// answers after it returns (the embedded store's syncer) is the store's to
// wait for. Close may be called more than once.
func (c *Committer[T]) Close() {
	c.closeOnce.Do(func() { close(c.closing) })
	<-c.stopped
}

// run is the committer goroutine. Step by step:
//
//  1. Block for one call: the first of the group.
//  2. Wait for one of Options.InFlight slots. A call arriving meanwhile
//     stays blocked in its send and joins this group in step 3, so the
//     busier the commits, the larger the next group.
//  3. Take every other call already waiting, until the group reaches
//     MaxBytes.
//  4. Answer the calls whose context has ended, and leave them out: their
//     callers have gone, and a request nobody waits for is not written.
//  5. Hand the group to the commit function, on this goroutine when
//     InFlight is 1 (a goroutine of its own would only be waited for),
//     else on one of its own, which frees the slot when it returns.
//
// Close is seen before a call waiting to be taken, so that a closing store
// starts no new group.
func (c *Committer[T]) run() {
	defer close(c.stopped)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	slots := make(chan struct{}, c.opts.InFlight)
	for {
		select {
		case <-c.closing:
			return
		default:
		}
		var first *Call[T]
		select {
		case first = <-c.calls:
		case <-c.closing:
			return
		}
		slots <- struct{}{}
		group := c.gather(first)
		if len(group) == 0 {
			<-slots
			continue
		}
		if c.opts.InFlight == 1 {
			c.commit(group)
			<-slots
			continue
		}
		inflight.Go(func() {
			defer func() { <-slots }()
			c.commit(group)
		})
	}
}

// gather forms a group from first and the calls waiting (steps 3 and 4 of
// run).
func (c *Committer[T]) gather(first *Call[T]) []*Call[T] {
	group := []*Call[T]{first}
	size := first.size
gather:
	for size < c.opts.MaxBytes {
		select {
		case call := <-c.calls:
			group = append(group, call)
			size += call.size
		default:
			break gather
		}
	}
	return slices.DeleteFunc(group, func(call *Call[T]) bool {
		if err := call.ctx.Err(); err != nil {
			call.Answer(err)
			return true
		}
		return false
	})
}

// Announce tells applied, when it is set, what one Append call stored: its
// entries but those dup marks as duplicates, whose jobs have consecutive
// Seqs from first. A call that stored nothing is not announced. See
// jobstore.AppliedFunc.
func Announce(applied jobstore.AppliedFunc, entries []jobstore.Entry, dup []bool, first uint64) {
	if applied == nil {
		return
	}
	stored := entries
	if slices.Contains(dup, true) {
		stored = make([]jobstore.Entry, 0, len(entries))
		for i, e := range entries {
			if !dup[i] {
				stored = append(stored, e)
			}
		}
	}
	if len(stored) > 0 {
		applied(jobstore.Appended{Entries: stored, First: first})
	}
}
