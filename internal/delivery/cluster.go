package delivery

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/jobstore"
)

// Ownership is a node's share of a cluster (a *cluster.Node): the engine
// delivers only the queues of the partitions it owns. Every queue of one
// destination is in one partition, so a destination's scheduler is wholly
// owned or not at all, and its limits, circuit and round-robin stay local.
type Ownership interface {
	PartitionOf(q jobstore.Queue) int
	// Owns reports whether the node owns partition p now. The scheduler
	// asks before each dispatch turn, and again once a request's jobs are
	// read, since a read may block past the deadline: it turns false at the
	// lease's local deadline, before the Change saying so is read.
	Owns(p int) (token int64, ok bool)
	// Changes are the partitions gained and lost, in order.
	Changes() <-chan cluster.Change
	// Wakeups are owned partitions with new jobs, appended on any node.
	Wakeups() <-chan int
	// Drained says that partition p, handed over under token (a Change
	// with Draining), has no request in flight left and every outcome
	// written: the node may release its lease now.
	Drained(p int, token int64)
}

// How a destination follows its partition's ownership. Only with
// Options.Ownership; without, every destination is owned from the start.
//
//   - Gained: the destination is marked owned at once, then the store's
//     queues of the gained partitions are listed (Store.Queues, in the
//     background, one listing at a time per server: see follow), and each
//     listed queue is read from its watermark, retries included. A
//     listing's result goes only to partitions still in the gain it was
//     made for.
//   - Jobs this node appends (notify) only mark their queue as having more
//     in the store: other nodes append to the same queues, so the jobs
//     announced here are not all of a queue's new jobs, and taking them as
//     they are would move its cursor past the others'.
//   - Lost: the scheduler forgets every queue at once (their loaded jobs
//     are left in the store for the new owner) and dispatches nothing
//     more. Requests in flight finish; their outcomes go to the store like
//     any other, where the store's fencing refuses them once the lease is
//     gone (jobstore.ErrFenced): the update is dropped, and the new owner
//     delivers those jobs again (at least once).
//   - Handed over (a loss with Draining): the same, but the lease is still
//     this node's, so those outcomes are written. Once every destination
//     of the partition has nothing in flight and nothing unwritten, the
//     last of them calls Drained and the node releases the lease: a
//     planned move sends nothing twice. If the grace ends first, the node
//     releases anyway and the case is a loss's.
//   - Wakeup: another node (or this one) appended jobs to the partition:
//     every queue of the destination's connected sources, and every queue
//     it knows, reads the store from its cursor.
type ownState struct {
	owned, lost, woken bool
	scanned            []string // sources whose queues the gain scan found
	// handover is set with lost when the loss is a handover.
	handover *handover
}

// handover counts the destinations of a partition handed over that are
// not yet drained; the last one tells the node.
type handover struct {
	o     Ownership
	part  int
	token int64
	left  atomic.Int32
}

// drained is called once by each destination of the partition.
func (h *handover) drained() {
	if h.left.Add(-1) == 0 {
		h.o.Drained(h.part, h.token)
	}
}

// setOwnership records a change of d's ownership; the scheduler applies it
// at its next turn (takeOwnership). Called by the engine's follower.
func (d *dest) setOwnership(f func(s *ownState)) {
	d.mu.Lock()
	f(&d.own)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// owns reports whether d may dispatch now.
func (d *dest) owns() bool {
	o := d.e.opts.Ownership
	if o == nil {
		return true
	}
	_, ok := o.Owns(d.part)
	return ok
}

// takeOwnership applies the ownership changes recorded since the last turn.
// It runs before takeNotified, so that queues found by a gain scan are
// marked as having jobs in the store before announced jobs are taken in.
func (d *dest) takeOwnership() {
	if d.e.opts.Ownership == nil {
		return
	}
	d.mu.Lock()
	lost, scanned, woken, h := d.own.lost, d.own.scanned, d.own.woken, d.own.handover
	d.own.lost, d.own.scanned, d.own.woken, d.own.handover = false, nil, false, nil
	if lost {
		clear(d.notified)
	}
	d.mu.Unlock()
	if h != nil {
		if d.handover != nil {
			d.handover.drained() // an older handover's token: the node ignores it
		}
		d.handover = h
	}
	if lost {
		d.forget()
	}
	now := d.now()
	for _, src := range scanned {
		q := d.queue(src)
		q.diskMore = true
		q.retryNext = now // unknown until the store is asked
		d.consider(q, now)
	}
	if woken {
		for _, src := range d.Sources {
			d.queue(src)
		}
		for _, q := range d.queues {
			q.diskMore = true
			d.consider(q, now)
		}
	}
}

// forget drops every queue of a destination whose partition was lost. The
// outcomes gathered and not yet written are tried once: the store refuses
// them if the lease is gone, and the new owner delivers their jobs again.
func (d *dest) forget() {
	for _, q := range d.queues {
		q.gone = true
	}
	d.queues = map[string]*queue{}
	d.ring = ring{}
	d.wakeHeap = nil
	d.flush(context.Background())
	d.log.Info("partition lost: stopped delivering", "partition", d.part, "in_flight", d.inflight)
}

// handedOver tells the handover in progress, if any, that this destination
// is drained once nothing is in flight and every outcome is written. A
// write that failed is kept and tried again (flush); until it succeeds, the
// destination is not drained, and the node's grace bounds the wait.
func (d *dest) handedOver() {
	if d.handover == nil || d.inflight > 0 {
		return
	}
	if d.update.Changes() > 0 {
		return
	}
	d.handover.drained()
	d.handover = nil
	d.log.Info("partition handed over: requests in flight finished and written", "partition", d.part)
}

// follow applies the cluster's ownership changes and wake-ups to the
// destinations until ctx ends.
//
// It never waits for the store. Listing the queues of partitions gained
// (scan) takes from a fraction of a second to several seconds on a loaded
// PostgreSQL, and is retried for as long as the store fails; a follower
// that listed them itself read no change meanwhile, so a handover arriving
// then (a node joining just after this one took a dead node's partitions
// over) waited behind the listing while the schedulers went on sending on
// the partition, Owns still true for its writes, until the grace ran out
// and the node released the lease with requests in flight: their outcomes
// refused and their jobs sent again by the next owner. So the listings run
// in goroutines of their own, and the follower applies every change, a
// loss or a handover first of all, the moment it reads it.
//
// One listing runs at a time per server (storage.postgres lists several,
// and the store tells which server a partition lives on: lister); the
// partitions of a server gained while its listing runs wait for its next
// one, together. Listings of different servers never wait for each other:
// with one listing for the whole node, a gain on a healthy server waited
// behind the listing of one that was down, retried until it came back, and
// the failover of partitions that had nothing to do with the outage waited
// as long. A listing none of whose partitions is still in its gain (all
// lost, as when their server went down and the leases ran out) is called
// off, so that the next gain on that server is listed at once.
func (e *Engine) follow(ctx context.Context) {
	o := e.opts.Ownership
	changes, wakeups := o.Changes(), o.Wakeups()
	f := &follower{e: e, gen: map[int]uint64{}, pending: map[int]bool{},
		listing: map[int]*listing{}, scanned: make(chan scan)}
	f.server, f.list = e.lister()
	defer func() {
		for _, l := range f.listing {
			l.cancel()
		}
		for range f.listing {
			<-f.scanned
		}
	}()
	for {
		f.listPending(ctx)
		select {
		case <-ctx.Done():
			return
		case c, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
			f.change(c)
			// The changes of one round arrive together: apply all that
			// are ready before listing, so that their gains share one
			// listing per server.
			for more := true; more; {
				select {
				case c, ok := <-changes:
					if !ok {
						changes, more = nil, false
						continue
					}
					f.change(c)
				default:
					more = false
				}
			}
		case sc := <-f.scanned:
			f.done(sc)
		case p := <-wakeups:
			for _, d := range e.byPart[p] {
				d.setOwnership(func(s *ownState) {
					if s.owned {
						s.woken = true
					}
				})
			}
		}
	}
}

// follower is the state of the engine's follower goroutine (follow).
type follower struct {
	e *Engine
	// server returns the server partition p lives on; list lists the
	// queues of partitions of one server (see lister).
	server func(p int) int
	list   func(ctx context.Context, partitions []int) ([]jobstore.Queue, error)
	// gen counts the changes of each partition, so that a listing's
	// result is applied to a partition only if it is still in the gain the
	// listing was for: not lost since, nor lost and gained again (that
	// gain waits for a listing of its own).
	gen map[int]uint64
	// pending are the partitions gained and not yet being listed.
	pending map[int]bool
	// listing is the listing running on each server, if any.
	listing map[int]*listing
	// scanned carries each listing's result back when it ends.
	scanned chan scan
}

// listing is a listing of the queues of partitions gained on one server,
// running in its goroutine.
type listing struct {
	gens   map[int]uint64 // the partitions listed, with their gen at the start
	cancel context.CancelFunc
}

// scan is a listing's result: the server listed and the queues found.
type scan struct {
	server int
	queues []jobstore.Queue
}

// listPending starts a listing on every server that has partitions pending
// and no listing running.
func (f *follower) listPending(ctx context.Context) {
	if len(f.pending) == 0 {
		return
	}
	byServer := map[int][]int{}
	for p := range f.pending {
		if srv := f.server(p); f.listing[srv] == nil {
			byServer[srv] = append(byServer[srv], p)
		}
	}
	for srv, ps := range byServer {
		lctx, cancel := context.WithCancel(ctx)
		l := &listing{gens: map[int]uint64{}, cancel: cancel}
		for _, p := range ps {
			l.gens[p] = f.gen[p]
			delete(f.pending, p)
		}
		f.listing[srv] = l
		go func() {
			qs := f.scan(lctx, srv, ps)
			f.scanned <- scan{server: srv, queues: qs}
		}()
	}
}

// change applies c to the destinations of its partition at once; a gain's
// queues are listed later (listPending, done).
func (f *follower) change(c cluster.Change) {
	f.gen[c.Partition]++
	if c.Owned {
		f.pending[c.Partition] = true
	} else {
		delete(f.pending, c.Partition)
	}
	if l := f.listing[f.server(c.Partition)]; l != nil && !f.current(l) {
		l.cancel() // nothing left to list for: see follow
	}
	ds := f.e.byPart[c.Partition]
	var h *handover
	if c.Draining {
		h = &handover{o: f.e.opts.Ownership, part: c.Partition, token: c.Token}
		h.left.Store(int32(len(ds)))
		if len(ds) == 0 {
			f.e.opts.Ownership.Drained(c.Partition, c.Token)
		}
	}
	for _, d := range ds {
		d.setOwnership(func(s *ownState) {
			if c.Owned {
				s.owned = true
			} else {
				*s = ownState{lost: true, handover: h}
			}
		})
	}
}

// current reports whether a partition of l is still in the gain l lists.
func (f *follower) current(l *listing) bool {
	for p, g := range l.gens {
		if g == f.gen[p] {
			return true
		}
	}
	return false
}

// done ends a server's listing: it hands the queues found to the
// destinations of the partitions listed that are still in the same gain.
func (f *follower) done(sc scan) {
	l := f.listing[sc.server]
	delete(f.listing, sc.server)
	l.cancel()
	found := map[string][]string{}
	for _, q := range sc.queues {
		p := f.e.opts.Ownership.PartitionOf(q)
		if g, ok := l.gens[p]; ok && g == f.gen[p] {
			found[q.Destination] = append(found[q.Destination], q.Source)
		}
	}
	parts, n := 0, 0
	for p, g := range l.gens {
		if g != f.gen[p] {
			continue
		}
		parts++
		for _, d := range f.e.byPart[p] {
			srcs := found[d.Name]
			n += len(srcs)
			d.setOwnership(func(s *ownState) { s.scanned = append(s.scanned, srcs...) })
		}
	}
	if parts > 0 {
		f.e.opts.Logger.Info("partitions gained: delivering their queues", "server", sc.server, "partitions", parts, "queues", n)
	}
}

// spreadStore is a store spread over several servers (jobstore/shard): it
// tells which server a partition lives on, and lists the queues of some
// partitions asking only their servers.
type spreadStore interface {
	PartitionServer(p int) int
	QueuesIn(ctx context.Context, partitions []int) ([]jobstore.Queue, error)
}

// lister returns where each partition lives and how to list the queues of
// partitions of one server: the spread store's, or, for a store on one
// server (every partition on server 0), its Queues.
func (e *Engine) lister() (server func(p int) int, list func(context.Context, []int) ([]jobstore.Queue, error)) {
	if ss, ok := e.opts.Store.(spreadStore); ok {
		return ss.PartitionServer, ss.QueuesIn
	}
	return func(int) int { return 0 }, func(ctx context.Context, _ []int) ([]jobstore.Queue, error) {
		return e.opts.Store.Queues(ctx)
	}
}

// scan lists the queues of partitions gained on server srv, calling again
// with a backoff while the store fails, until ctx ends.
func (f *follower) scan(ctx context.Context, srv int, gained []int) []jobstore.Queue {
	wait := storeRetryMin
	for {
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		qs, err := f.list(sctx, gained)
		cancel()
		if err == nil || ctx.Err() != nil {
			return qs
		}
		f.e.opts.Logger.Error("list the queues of partitions gained; trying again",
			"server", srv, "partitions", len(gained), "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, storeRetryMax)
	}
}

// fenced reports whether err is the store refusing a write of a partition
// this node no longer owns.
func fenced(err error) bool { return errors.Is(err, jobstore.ErrFenced) }
