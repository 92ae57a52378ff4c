// Package delivery is fanout's delivery engine: a virtual queue per (source,
// destination), scheduled so that no queue can slow another.
//
// Each destination has one scheduler goroutine that owns all of its queues.
// It keeps the queues that can send now in a ring and serves them round-robin,
// one request per turn, while the destination has a free concurrency slot and
// a rate-limit token. A queue that is paused (a wait the destination asked
// for, a 429, a spent quota), waiting for its next retry, or at its adaptive
// concurrency limit leaves the ring and so holds no slot: the others share
// them. Within a queue, a user the destination throttles alone waits alone
// (holds, see sieve): the queue's other users go on. Because every ready queue gets a turn before
// any gets a second, a source that sends a thousand times more than another
// only ever has one request ahead of it per slot; it cannot make the small
// one wait behind its backlog (head-of-line blocking, the problem fanout
// exists to solve).
//
// Jobs live in the store. A queue holds only its head in memory and pages the
// rest in by cursor; a queue that has read everything the store held takes
// the jobs the store announces as appended without reading them back, so a
// queue that keeps up costs no store read per event. Outcomes flow back to
// the scheduler over a channel, and the store changes they imply (prefix
// drops, retries, finished retries) are coalesced into one unsynced write per
// scheduler turn.
package delivery

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// Target is one configured destination the engine delivers to.
type Target struct {
	// Name is the destination's configured name.
	Name string
	// Type is its integration's type name, used as a profile label.
	Type        string
	Destination destinations.Destination
	// Batch bounds how many jobs of one queue go in one Transform call.
	Batch destinations.BatchLimits
	// Client performs the requests. Default http.DefaultClient.
	Client *http.Client
	Limits
	// Limiter is RateLimit's limiter when the integration shares it
	// (destinations.Config.Limiter); nil makes one.
	Limiter *rate.Limiter
	// Sources are the sources connected to the destination. In a cluster,
	// a wake-up for the destination's partition reads their queues.
	Sources []string
	// Deduplicates is the integration's Deduplicates: whether its API drops
	// a repeated event on its own. Where it does not, a retry after a
	// timeout or 5xx on a batch is reported with Report.DuplicateRisk.
	Deduplicates bool
}

// End is how a delivery attempt left its job.
type End int

// The ways an attempt can leave a job.
const (
	EndDelivered   End = iota + 1 // delivered; the job is gone
	EndFailed                     // rejected by the destination; the job is gone
	EndUnsupported                // the integration does not take it; the job is gone
	EndArchived                   // retry window over; written to the archive
	EndRetrying                   // will be tried again
)

func (e End) String() string {
	return [...]string{"", "delivered", "failed", "unsupported", "archived", "retrying"}[e]
}

// Report describes one job's attempt. Observers get one per job per attempt.
type Report struct {
	Queue jobstore.Queue
	Job   *jobstore.Job // Attempts already counts this attempt
	// Result holds the outcome and the request and response that decided it.
	Result destinations.SendResult
	End    End
	At     time.Time
	// Expired says the job was archived without an attempt: its retry
	// window ended while the destination's circuit was open. Job.Attempts
	// then counts only the attempts made before, and Result holds no
	// request.
	Expired bool
	// Unattempted says the attempt did not count against the job: the
	// destination answered that a quota is spent (Result.Quota).
	// Job.Attempts then counts only the attempts made before.
	Unattempted bool
	// DuplicateRisk says the job is retried after an ambiguous failure (a
	// timeout or 5xx on a batch of several events) of an integration whose
	// API does not deduplicate: the destination may have taken it already,
	// and the retry may count it twice.
	DuplicateRisk bool
}

// Options configures an Engine.
type Options struct {
	Store   jobstore.Store
	Targets []Target
	// Archive receives jobs whose retry window ended. Required.
	Archive archive.Store
	// Clock defaults to the wall clock. The engine measures intervals
	// (pauses, backoff, probes, timers) and the due time of retries on its
	// Steady time, which does not jump; see dest.now.
	Clock clock.Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Observe, when set, is called from the scheduler goroutines for every
	// attempt. It must not block.
	Observe func(Report)
	// Seed seeds the backoff jitter; 0 picks a random seed.
	Seed uint64
	// Ownership, when set, is this node's share of a cluster: the engine
	// delivers only the queues of the partitions it owns, follows their
	// changes and hears of jobs appended by other nodes through it. Nil:
	// every queue is this engine's.
	Ownership Ownership
	// ShutdownGrace is how long Run waits for in-flight requests after its
	// context ends before cancelling them. Default DefaultShutdownGrace.
	ShutdownGrace time.Duration
}

// DefaultShutdownGrace is Options.ShutdownGrace when it is zero.
const DefaultShutdownGrace = 10 * time.Second

// Engine delivers jobs from the store to destinations.
type Engine struct {
	opts  Options
	dests map[string]*dest
	// byPart lists the destinations of each partition, with Ownership.
	byPart map[int][]*dest
}

// New validates the options and builds an engine. Call Run to start it.
func New(opts Options) (*Engine, error) {
	if opts.Store == nil {
		return nil, errors.New("delivery: Store is required")
	}
	if opts.Archive == nil {
		return nil, errors.New("delivery: Archive is required")
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ShutdownGrace == 0 {
		opts.ShutdownGrace = DefaultShutdownGrace
	}
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	e := &Engine{opts: opts, dests: make(map[string]*dest, len(opts.Targets))}
	for i, t := range opts.Targets {
		if t.Destination == nil {
			return nil, fmt.Errorf("delivery: target %q has no Destination", t.Name)
		}
		if _, dup := e.dests[t.Name]; dup {
			return nil, fmt.Errorf("delivery: target %q appears twice", t.Name)
		}
		t.Limits = t.Limits.WithDefaults()
		if t.Client == nil {
			t.Client = http.DefaultClient
		}
		d := &dest{
			Target:   t,
			e:        e,
			log:      opts.Logger.With("destination", t.Name),
			queues:   map[string]*queue{},
			notified: map[string]*handoff{},
			wake:     make(chan struct{}, 1),
			done:     make(chan completion, t.Concurrency),
			turn:     make(chan struct{}, 1),
			rnd:      rand.New(rand.NewPCG(seed, uint64(i))),
			labels:   pprof.Labels("destination", t.Name, "type", t.Type),
		}
		d.turn <- struct{}{} // held until the scheduler first rests
		d.sender = destinations.Sender{Client: t.Client, Name: t.Name, Logger: d.log, Now: opts.Clock.Now}
		d.keyer, _ = t.Destination.(destinations.HoldKeyer)
		d.limiter = t.Limiter
		if d.limiter == nil {
			d.limiter = destinations.NewLimiter(t.RateLimit)
		}
		e.dests[t.Name] = d
		if opts.Ownership != nil {
			if e.byPart == nil {
				e.byPart = map[int][]*dest{}
			}
			d.part = opts.Ownership.PartitionOf(jobstore.Queue{Destination: t.Name})
			e.byPart[d.part] = append(e.byPart[d.part], d)
		}
	}
	return e, nil
}

// Run delivers until ctx ends, then stops dispatching, waits up to
// ShutdownGrace for in-flight requests, records their outcomes and returns.
// Jobs not finished stay in the store for the next start.
func (e *Engine) Run(ctx context.Context) error {
	if e.opts.Ownership != nil {
		// The partitions owned are announced on Changes, those owned at
		// Join included; each is scanned when gained.
		return e.runSchedulers(ctx, true)
	}
	qs, err := e.opts.Store.Queues(ctx)
	if err != nil {
		return fmt.Errorf("delivery: list queues: %w", err)
	}
	now := e.opts.Clock.Steady()
	for _, q := range qs {
		d, ok := e.dests[q.Destination]
		if !ok {
			e.opts.Logger.Warn("jobs wait for a destination that is not configured",
				"source", q.Source, "destination", q.Destination)
			continue
		}
		dq := d.queue(q.Source)
		dq.diskMore = true
		dq.retryNext = now // unknown until the store is asked
		// Into the ring, or nothing would read the queue before a new
		// event for it arrives. The schedulers have not started yet.
		d.consider(dq, now)
	}
	return e.runSchedulers(ctx, false)
}

// runSchedulers runs every destination's scheduler, and with follow the
// follower of the cluster's changes, until ctx ends.
func (e *Engine) runSchedulers(ctx context.Context, follow bool) error {
	var wg sync.WaitGroup
	if follow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.follow(ctx)
		}()
	}
	for _, d := range e.dests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.run(ctx)
		}()
	}
	wg.Wait()
	return nil
}

// Notify tells the engine of jobs the store has just made readable; wire it
// to the store's announcement of each Append (jobstore.AppliedFunc). It
// never blocks. A queue that has read everything the store held takes the
// announced jobs as they are, without reading them back; any other reads
// them from the store in its turn, so a notification for it only says that
// it has work.
func (e *Engine) Notify(a jobstore.Appended) {
	a.Runs(func(entries []jobstore.Entry, dests []string, first uint64) {
		for k, name := range dests {
			if d, ok := e.dests[name]; ok {
				d.notify(entries, first+uint64(k), uint64(len(dests)))
			}
		}
	})
}

// completion carries a finished request back to the scheduler.
type completion struct {
	q       *queue
	jobs    []jobstore.Job
	results []destinations.SendResult
	probe   bool
	seq     uint64 // the queue's number for the request (queue.sent)
}

// dest is one destination's scheduler and the state it owns.
type dest struct {
	Target
	e      *Engine
	log    *slog.Logger
	labels pprof.LabelSet
	// part is the destination's partition, with Options.Ownership.
	part int

	// Owned by the scheduler goroutine.
	queues   map[string]*queue // by source name
	ring     ring
	wakeHeap wakeHeap
	inflight int
	limiter  *rate.Limiter
	circuit  circuit
	// expireAt is when an open circuit's queues are next swept for jobs
	// whose retry window has ended (see expireSweep).
	expireAt time.Time
	update   jobstore.Update
	// updateSince is when the oldest change in update was first seen
	// unwritten; zero when update is empty.
	updateSince time.Time
	// storeFails counts the store calls that failed in a row; while it is
	// above zero, nothing reads or writes the store before storeRetryAt
	// (see storeFailed).
	storeFails   int
	storeRetryAt time.Time
	rnd          *rand.Rand
	sender       destinations.Sender
	// keyer is the Destination as a HoldKeyer, nil when it is not one.
	keyer destinations.HoldKeyer

	done chan completion
	// turn is the scheduler's turn token. The scheduler holds it while it
	// changes its state and lets go of it only to rest: while it waits for
	// something to do, and while it waits on the job store (awaitStore).
	// State takes it to read the state meanwhile. It starts held, so that
	// State waits for a scheduler that has not started, and is let go of
	// when the scheduler stops.
	turn chan struct{}
	// last is the last snapshot State took, given marked stale when the
	// scheduler does not rest before State's context ends.
	last atomic.Pointer[DestinationState]
	// storeWaitSince is when the store call the scheduler waits in began;
	// zero when it waits in none.
	storeWaitSince time.Time

	// notified holds, by source, what was announced since the scheduler
	// last looked; free holds emptied handoffs for notify to reuse.
	mu       sync.Mutex
	notified map[string]*handoff
	free     []*handoff
	wake     chan struct{}
	// spare is the emptied map of the scheduler's last look; it owns it.
	spare map[string]*handoff
	// own is the destination's ownership in a cluster (see ownState),
	// under mu.
	own ownState
	// handover is the partition's handover this destination has yet to
	// finish (handedOver); owned by the scheduler goroutine.
	handover *handover
}

// handoff holds the jobs announced for one queue since its scheduler last
// looked. A queue that has read all the store holds takes them from here;
// one that has not, or that was announced more than a page of jobs, reads
// them from the store.
type handoff struct {
	jobs     []jobstore.Job
	overflow bool
}

// notify takes in the jobs of entries, one source's, for this destination:
// the first has Seq seq, the next ones follow every stride.
func (d *dest) notify(entries []jobstore.Entry, seq, stride uint64) {
	source := entries[0].Event.Source
	d.mu.Lock()
	if d.e.opts.Ownership != nil && !d.own.owned {
		// Another node's to deliver; it hears of the jobs by a wake-up.
		d.mu.Unlock()
		return
	}
	h := d.notified[source]
	if h == nil {
		h = d.spareHandoff()
		d.notified[source] = h
	}
	if !h.overflow && d.e.opts.Ownership != nil {
		// In a cluster, other nodes append to the same queue: jobs
		// announced here are not all the queue's new jobs, and taking them
		// would move its cursor past theirs. The queue reads the store.
		clear(h.jobs)
		h.jobs, h.overflow = h.jobs[:0], true
	}
	if !h.overflow && len(h.jobs)+len(entries) > pageSize {
		clear(h.jobs)
		h.jobs, h.overflow = h.jobs[:0], true
	}
	if !h.overflow {
		q := jobstore.Queue{Source: source, Destination: d.Name}
		for _, e := range entries {
			h.jobs = append(h.jobs, jobstore.Job{Queue: q, Seq: seq, Event: e.Event})
			seq += stride
		}
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// spareHandoff returns an emptied handoff to reuse, or a new one. Called
// with d.mu held.
func (d *dest) spareHandoff() *handoff {
	if n := len(d.free); n > 0 {
		h := d.free[n-1]
		d.free = d.free[:n-1]
		return h
	}
	return &handoff{}
}

func (d *dest) queue(source string) *queue {
	q, ok := d.queues[source]
	if !ok {
		q = newQueue(jobstore.Queue{Source: source, Destination: d.Name}, d.Concurrency)
		d.queues[source] = q
	}
	return q
}

// pageSize is how many jobs a queue loads at once. It bounds the memory a
// queue holds: at most about this many jobs plus those in flight.
const pageSize = 64

// run is the scheduler loop. One iteration: take in completions and
// notifications, wake queues whose time has come, dispatch round-robin while
// slots and tokens last, write the coalesced store changes, then sleep until
// something happens.
//
// The loop keeps one invariant: each queue of d.queues is in exactly one of
// three places.
//
//   - The ring (inRing): it may dispatch now, as far as it knows.
//   - The wake heap (heapIdx >= 0): it has work, but time must pass first
//     (the end of a pause, its next retry falling due, a held user's hold
//     ending); wakeDue takes it out when its time comes.
//   - Idle, in neither: only an event can give it something to do, a
//     completion (it is at its concurrency limit) or a notification (it has
//     nothing to send). A queue idle with nothing at all is forgotten.
//
// The ring alone is kept lazily: a queue that stops being ready while in it
// (a wait for its request in flight comes back) stays there, and may also be
// in the heap, until dispatch pops it, finds it not ready and considers it
// again. Taking it out at once would mean a search of the ring.
//
// consider is the only way into the ring or the heap, and it puts a queue
// where its state says it belongs, so finding work never scans the queues:
// a turn looks at the ring's head, the heap's due top and the queues that
// an event concerns.
//
// Fairness comes from the ring being a FIFO served one request per turn.
// dispatch pops the queue at the head, sends one request's worth of its
// jobs, and considers it again, which puts it, if still ready, at the tail:
// behind every other ready queue. So between two requests of one queue,
// every other ready queue sends one, whatever the queues' backlogs; a queue
// that becomes ready joins at the tail too, and waits at most one round of
// the ring, never for a big queue's backlog to drain. A queue that is
// paused, waiting for a retry or at its concurrency limit is out of the
// ring, so it holds no turn and no slot.
//
// The rules that say what an answer means for a queue (pause, backoff,
// split, hold, AIMD, circuit) live in decide; complete applies them. Every
// time here is on the clock's steady time (dest.now), which a jump of the
// wall clock does not move.
func (d *dest) run(ctx context.Context) {
	workCtx, cancelWork := context.WithCancel(context.Background())
	defer cancelWork()
	timer := d.e.opts.Clock.NewTimer()
	defer timer.Stop()
	defer d.endTurn()
	w := &workers{ctx: workCtx, ch: make(chan completion, d.Concurrency)}
	for {
		now := d.now()
		d.takeOwnership()
		d.takeNotified()
		d.wakeDue(now)
		wait := d.dispatch(w, now)
		// Not ctx: it ends at shutdown, and a write of outcomes made then
		// (ctx done just before this turn, or during the write) would fail
		// with "context canceled", log an error and leave the outcomes to
		// shutdown's flush. Outcomes are written on the way out anyway, so
		// a write under way finishes (bounded by storeTimeout).
		if d.flushDue(now) {
			d.flush(context.Background())
		}
		d.handedOver()
		if next := d.nextWake(now, wait); !next.IsZero() {
			timer.Set(next)
		}
		d.endTurn()
		select {
		case c := <-d.done:
			d.beginTurn()
			d.complete(c)
			for more := true; more; {
				select {
				case c := <-d.done:
					d.complete(c)
				default:
					more = false
				}
			}
		case <-d.wake:
			d.beginTurn()
		case <-timer.C():
			d.beginTurn()
		case <-ctx.Done():
			d.beginTurn()
			d.shutdown(w, cancelWork)
			return
		}
		timer.Stop()
		select { // drain a fire that raced with Stop
		case <-timer.C():
		default:
		}
	}
}

// shutdown ends the loop once Run's context is done. It dispatches nothing
// more, but still records the outcome of every request in flight (complete),
// so that a job a destination took is settled and not sent again after the
// restart. The requests get ShutdownGrace to finish; after that their
// context is cancelled and they end as retryable. Then the workers stop and
// the last outcomes are written, with a fresh context since ctx is done.
func (d *dest) shutdown(w *workers, cancelWork context.CancelFunc) {
	grace := time.AfterFunc(d.e.opts.ShutdownGrace, cancelWork)
	defer grace.Stop()
	for d.inflight > 0 {
		d.complete(<-d.done)
	}
	close(w.ch)
	w.wg.Wait()
	d.flush(context.Background())
	d.handedOver()
}

// takeNotified hands each queue the jobs announced for it since the last
// look (see notify) and considers it. notify runs on the store's committer
// goroutine and must not wait, so the lock is held only to swap the map of
// announcements for an empty one, never while queues are worked on. The
// emptied handoffs go back to notify through d.free and the emptied map
// becomes the next swap's: a steady stream of notifications allocates
// nothing.
func (d *dest) takeNotified() {
	d.mu.Lock()
	if len(d.notified) == 0 {
		d.mu.Unlock()
		return
	}
	got := d.notified
	d.notified, d.spare = d.spare, nil
	if d.notified == nil {
		d.notified = map[string]*handoff{}
	}
	d.mu.Unlock()
	now := d.now()
	for src, h := range got {
		q := d.queue(src)
		q.takeHandoff(h)
		d.consider(q, now)
		clear(h.jobs) // let go of the events' payloads
		h.jobs, h.overflow = h.jobs[:0], false
	}
	d.mu.Lock()
	for _, h := range got {
		d.free = append(d.free, h)
	}
	d.mu.Unlock()
	clear(got)
	d.spare = got
}

// consider puts q in the ring if it may dispatch now, or in the wake heap
// if time alone will make it ready.
func (d *dest) consider(q *queue, now time.Time) {
	if q.gone {
		return // its partition was lost
	}
	if now.IsZero() {
		now = d.now()
	}
	q.releaseHolds(now)
	if q.ready(now) {
		if !q.inRing {
			q.inRing = true
			d.ring.push(q)
		}
		// A notification can make a queue ready while it waits for its
		// next retry: it leaves the heap, or the scheduler would wake for
		// nothing when that time came.
		d.wakeHeap.remove(q)
		return
	}
	if w := q.nextWake(now); !w.IsZero() {
		d.wakeHeap.set(q, w)
		return
	}
	if q.idle(now, d.Concurrency) && !q.inRing {
		d.wakeHeap.remove(q)
		delete(d.queues, q.id.Source)
	}
}

// wakeDue takes out of the wake heap the queues whose pause has ended or
// whose retry has fallen due by now, and considers each: into the ring if it
// can send, back into the heap if it must wait longer (a retry pushed later),
// idle otherwise. It runs before dispatch, so a queue that wakes competes in
// the same turn.
func (d *dest) wakeDue(now time.Time) {
	for len(d.wakeHeap) > 0 && !d.wakeHeap[0].wakeAt.After(now) {
		q := heap.Pop(&d.wakeHeap).(*queue)
		d.consider(q, now)
	}
}

// nextWake is the earliest time the scheduler must look again without being
// woken: a queue's pause or retry, a rate-limit token, a circuit probe, the
// age limit of unwritten outcomes.
func (d *dest) nextWake(now time.Time, wait time.Duration) time.Time {
	var next time.Time
	if len(d.wakeHeap) > 0 {
		next = d.wakeHeap[0].wakeAt
	}
	if !d.updateSince.IsZero() {
		w := d.updateSince.Add(flushAge)
		if d.storeFails > 0 && w.Before(d.storeRetryAt) {
			w = d.storeRetryAt
		}
		if next.IsZero() || w.Before(next) {
			next = w
		}
	}
	if wait > 0 {
		if w := now.Add(wait); next.IsZero() || w.Before(next) {
			next = w
		}
	}
	return next
}

// dispatch sends requests while the destination has free slots and the ring
// has ready queues. It returns how long to wait for a rate-limit token or a
// circuit probe when that is what stopped it.
func (d *dest) dispatch(w *workers, now time.Time) time.Duration {
	if d.ring.len() > 0 && !d.owns() {
		// The lease may be gone: start nothing. The Change saying so
		// follows and forgets the queues.
		return 0
	}
	for d.inflight < d.Concurrency && d.ring.len() > 0 {
		ok, probe := d.circuit.allow(now)
		if !ok {
			if !now.Before(d.expireAt) {
				d.expireAt = now.Add(expireEvery)
				if d.expireSweep(now) {
					d.expireAt = now
					return time.Millisecond
				}
			}
			if d.circuit.probing {
				return 0
			}
			return d.circuit.probeAt.Sub(now)
		}
		// The token is looked at here and taken below, once a job is in
		// hand: a queue that turns out to be empty must not spend it.
		if d.limiter != nil {
			if tokens := d.limiter.TokensAt(now); tokens < 1 {
				return max(time.Millisecond, time.Duration((1-tokens)/float64(d.limiter.Limit())*float64(time.Second)))
			}
		}
		q := d.ring.pop()
		q.inRing = false
		if !q.ready(now) {
			d.consider(q, now)
			continue
		}
		jobs, err := d.take(q, now)
		if errors.Is(err, errLeaseEnded) {
			d.consider(q, now)
			return 0
		}
		if err != nil {
			// The store could not be read: leave the ring until the
			// destination's backoff ends rather than spin on the queue. Its
			// jobs stay where they are.
			if !errors.Is(err, errStoreBackoff) {
				d.log.Error("read jobs", "source", q.id.Source, "err", err)
			}
			q.pausedUntil = d.storeRetryAt
		}
		if len(jobs) == 0 {
			d.consider(q, now)
			continue
		}
		if d.limiter != nil {
			d.limiter.AllowN(now, 1) // there is a token: TokensAt said so
		}
		d.inflight++
		q.inflight++
		if probe {
			d.circuit.probing = true
		}
		q.sent++
		d.start(w, completion{q: q, jobs: jobs, probe: probe, seq: q.sent})
		d.consider(q, now)
	}
	return 0
}

// expireEvery is how often an open circuit's queues are swept for jobs
// whose retry window has ended: a job is archived at most this long after
// its window.
const expireEvery = time.Minute

// While the store fails (a database down, a disk gone), a destination
// stops calling it for a backoff that doubles from storeRetryMin up to
// storeRetryMax with each failure in a row, and resets on the first call
// that succeeds: the engine neither spins on a store that is down nor waits
// long once it is back. Every store call is bounded by storeTimeout, so an
// unreachable database cannot hold the scheduler.
const (
	storeRetryMin = 250 * time.Millisecond
	storeRetryMax = 5 * time.Second
	storeTimeout  = 10 * time.Second
)

// storeFailed records a failed store call and returns when the store may
// be called again.
func (d *dest) storeFailed(now time.Time) time.Time {
	d.storeFails++
	wait := storeRetryMax
	if d.storeFails < 6 {
		wait = min(storeRetryMax, storeRetryMin<<(d.storeFails-1))
	}
	d.storeRetryAt = now.Add(wait)
	return d.storeRetryAt
}

// storeOK records a store call that succeeded.
func (d *dest) storeOK() {
	if d.storeFails > 0 {
		d.log.Info("store is back", "failed_calls", d.storeFails)
	}
	d.storeFails = 0
}

// take removes the next request's worth of jobs from q, loading from the
// store as needed: due retries first, then pending jobs.
func (d *dest) take(q *queue, now time.Time) ([]jobstore.Job, error) {
	// A batch may be bigger than a page: read what it needs, in one read,
	// so that a backlog goes out in full batches, not in pages.
	if len(q.buf) == 0 {
		if err := d.load(q, now, max(pageSize, d.Batch.MaxEvents)); err != nil {
			return nil, err
		}
	}
	if len(q.buf) == 0 {
		return nil, nil
	}
	most := 1
	if d.Batch.MaxEvents > 1 {
		most = d.Batch.MaxEvents
		// Jobs taken in from an announcement may be fewer than a batch.
		if len(q.buf) < d.Batch.MaxEvents && q.diskMore {
			if err := d.load(q, now, d.Batch.MaxEvents); err != nil {
				d.log.Warn("read more jobs for a batch", "source", q.id.Source, "err", err)
			}
		}
	}
	if !d.owns() {
		// The read may have taken long (a database cut off, up to
		// storeTimeout), past the lease's local deadline: send nothing.
		// The jobs stay in the buffer, for a renewal that comes late, or
		// for the loss that follows to forget with the queue.
		return nil, errLeaseEnded
	}
	if len(q.sizes) > 0 {
		most = min(most, q.sizes[0])
		q.sizes = q.sizes[1:]
		if len(q.sizes) == 0 {
			q.sizes = nil
		}
	}
	if len(q.holds) > 0 && d.keyer != nil {
		d.sieve(q, now, most)
		if len(q.buf) == 0 {
			q.buf = nil
			return nil, nil
		}
	}
	n, size := 1, len(q.buf[0].Event.Payload)
	for n < len(q.buf) && n < most {
		s := len(q.buf[n].Event.Payload)
		if d.Batch.MaxBytes > 0 && size+s > d.Batch.MaxBytes {
			break
		}
		size += s
		n++
	}
	jobs := make([]jobstore.Job, n)
	copy(jobs, q.buf[:n])
	clear(q.buf[:n])
	q.buf = q.buf[n:]
	if len(q.buf) == 0 {
		q.buf = nil
	}
	return jobs, nil
}

// sieve moves the jobs of held users out of the first most sendable jobs
// of q's buffer into their holds, behind the held job, so that a held
// user's later events wait behind it and not in front of it, and every
// other user's go on. Only the jobs about to be sent are looked at, so
// that HoldKey runs once per job. When the holds are full, the queue
// pauses until the first hold ends rather than hold more in memory.
func (d *dest) sieve(q *queue, now time.Time, most int) {
	kept := q.buf[:0]
	i := 0
	for ; i < len(q.buf) && len(kept) < most; i++ {
		j := q.buf[i]
		if key := d.keyer.HoldKey(j.Event); key != "" {
			if _, head := q.holdOut[j.Seq]; head {
				kept = append(kept, j)
				continue
			}
			if h := q.holds[key]; h != nil {
				if !q.hold(key, j, h.until) {
					q.pauseUntil(q.holdNext, pauseHolds)
					break
				}
				continue
			}
		}
		kept = append(kept, j)
	}
	n := copy(q.buf[len(kept):], q.buf[i:])
	clear(q.buf[len(kept)+n:])
	q.buf = q.buf[:len(kept)+n]
}

// load pages jobs of q in from the store until buf holds want, or at least
// a page. The coalesced update is written first, so the store never
// returns a job this scheduler already settled.
func (d *dest) load(q *queue, now time.Time, want int) error {
	if d.storeFails > 0 && now.Before(d.storeRetryAt) {
		return errStoreBackoff
	}
	if err := d.flush(context.Background()); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	page := max(pageSize, want-len(q.buf))
	if q.retryDue(now) {
		d.awaitStore()
		jobs, next, err := d.e.opts.Store.Retries(ctx, q.id, now, page+len(q.loadedRetries))
		d.storeAnswered()
		if err != nil {
			d.storeFailed(now)
			return fmt.Errorf("read retries: %w", err)
		}
		var fresh []jobstore.Job
		for _, j := range jobs {
			if _, loaded := q.loadedRetries[j.Seq]; !loaded {
				q.loadedRetries[j.Seq] = struct{}{}
				fresh = append(fresh, j)
			}
		}
		q.retryNext = next
		if len(fresh) == page {
			q.retryNext = now // more are due
		}
		q.buf = append(fresh, q.buf...)
	}
	if q.diskMore && len(q.buf) < want {
		page = max(pageSize, want-len(q.buf))
		d.awaitStore()
		jobs, err := d.e.opts.Store.Pending(ctx, q.id, q.cursor, page)
		d.storeAnswered()
		if err != nil {
			d.storeFailed(now)
			return fmt.Errorf("read pending jobs: %w", err)
		}
		if len(jobs) < page {
			q.diskMore = false
		}
		if len(jobs) > 0 {
			q.cursor = jobs[len(jobs)-1].Seq
			q.track(jobs)
			q.buf = append(q.buf, jobs...)
		}
	}
	d.storeOK()
	return nil
}

// errStoreBackoff is load's error while the destination waits before
// calling a failing store again.
var errStoreBackoff = errors.New("the store failed; waiting before calling it again")

// errLeaseEnded is take's error when the destination's partition is no
// longer owned once its jobs are in hand (Ownership.Owns).
var errLeaseEnded = errors.New("the partition's lease ended")

// workers are the goroutines that perform a destination's requests outside
// its scheduler. They live as long as the scheduler: a goroutine per request
// grew its stack from the initial 8 KB to the HTTP client's depth in every
// request, 6% of the CPU of a drain in a profile.
type workers struct {
	ctx context.Context
	// ch carries requests to the workers. Its capacity is the destination's
	// concurrency, which bounds the requests in flight, so the scheduler
	// never blocks on it.
	ch chan completion
	n  int // goroutines started; never fewer than the requests in flight
	wg sync.WaitGroup
}

// start hands c, already counted in d.inflight, to a worker, starting one
// if every worker may be busy.
func (d *dest) start(w *workers, c completion) {
	if w.n < d.inflight {
		w.n++
		w.wg.Add(1)
		go d.work(w)
	}
	w.ch <- c
}

// work performs requests until the scheduler stops, under profile labels that
// name the destination, so a CPU profile shows which integration burns it.
func (d *dest) work(w *workers) {
	defer w.wg.Done()
	pprof.Do(w.ctx, d.labels, func(ctx context.Context) {
		for c := range w.ch {
			events := make([]event.Event, len(c.jobs))
			for i := range c.jobs {
				events[i] = c.jobs[i].Event
			}
			c.results = d.sender.Send(ctx, d.Destination, events)
			d.done <- c
		}
	})
}

// complete applies the outcome of one request, as decide judges it, to its
// queue, its destination's circuit and its jobs.
func (d *dest) complete(c completion) {
	now, wall := d.now(), d.e.opts.Clock.Now()
	q := c.q
	d.inflight--
	q.inflight--
	if c.probe {
		d.circuit.probing = false
	}

	v := decide(facts{Now: now, Wall: wall, Streak: q.streak, Jitter: d.rnd.Float64(),
		Deduplicates: d.Deduplicates}, c.results)
	switch v.Circuit {
	case circuitSuccess:
		d.circuit.success()
	case circuitFailure:
		d.circuit.failure(now, c.probe, d.rnd.Float64())
	}
	if !v.PauseUntil.IsZero() {
		q.pauseUntil(v.PauseUntil, v.Pause)
	}
	if v.Throttled {
		q.throttle++
	}
	q.streak = v.Streak
	switch v.Limit {
	case limitIncrease:
		q.increase(d.Concurrency)
	case limitDecrease:
		q.decrease(c.seq)
	}

	var expired []*jobstore.Job
	var expiredResults []destinations.SendResult
	var requeue, split, released []jobstore.Job
	for i := range c.jobs {
		j := &c.jobs[i]
		res := &c.results[i]
		step := v.Jobs[i]
		if q.holdOut != nil && step.HoldUntil.IsZero() {
			released = append(released, q.holdAnswered(j.Seq)...)
		}
		if step.Reason != "" {
			res.Reason = step.Reason
		}
		if step.End == EndFailed {
			res.Outcome = destinations.Rejected // a split event found alone
		}
		if !step.Unattempted {
			j.Attempts++
		}
		if step.End == EndRetrying {
			j.LastError = res.Reason
			if !step.Unattempted && d.expired(j, now, wall) {
				if q.holdOut != nil && !step.HoldUntil.IsZero() {
					released = append(released, q.holdAnswered(j.Seq)...)
				}
				// Reported and settled by archive, once the record is written.
				expired = append(expired, j)
				expiredResults = append(expiredResults, *res)
				continue
			}
		}
		d.observe(Report{Queue: q.id, Job: j, Result: *res, End: step.End, At: wall,
			Unattempted: step.Unattempted, DuplicateRisk: step.DuplicateRisk})
		switch {
		case step.End != EndRetrying:
			d.settle(q, j)
		case step.Split:
			split = append(split, *j)
		case step.Requeue:
			requeue = append(requeue, *j)
		case !step.HoldUntil.IsZero():
			if !q.hold(step.Hold, *j, step.HoldUntil) {
				// Too many users held: the whole queue waits instead.
				q.pauseUntil(step.HoldUntil, pauseHolds)
				requeue = append(requeue, *j)
			}
		default:
			d.reschedule(q, j, now.Add(Backoff(j.Attempts, d.rnd.Float64())), res.Reason)
		}
	}
	if len(expired) > 0 {
		if err := d.archive(q, expired, expiredResults, false); err != nil {
			// Keep the jobs and try to archive them again after their next
			// attempt.
			for i, j := range expired {
				d.observe(Report{Queue: q.id, Job: j, Result: expiredResults[i], End: EndRetrying, At: wall})
				d.reschedule(q, j, now.Add(Backoff(j.Attempts, d.rnd.Float64())), j.LastError)
			}
		}
	}
	if n := len(split); n > 0 {
		// The halves go first, each its own batch: the first half, then
		// the second, then whatever the queue had.
		halves := []int{n}
		if n > 1 {
			halves = []int{(n + 1) / 2, n / 2}
		}
		q.sizes = append(halves, q.sizes...)
		requeue = append(split, requeue...)
	}
	// A hold's head is answered: the user's later jobs follow it.
	requeue = append(requeue, released...)
	if len(requeue) > 0 {
		q.buf = append(requeue, q.buf...)
	}
	d.consider(q, now)
}

func (d *dest) observe(r Report) {
	if d.e.opts.Observe != nil {
		d.e.opts.Observe(r)
	}
}

// expired reports whether j's retry window has ended. The window starts at
// the job's receipt, a wall time stamped by the tracking API, so it is
// measured on the wall clock; but it has ended only when the steady clock
// agrees (see dest.now): a wall clock set forward an hour must not archive
// jobs an hour early. Set backwards, the wall clock makes jobs received
// before the jump wait up to that much longer before they are archived;
// none is archived early either way.
func (d *dest) expired(j *jobstore.Job, now, wall time.Time) bool {
	end := j.Event.ReceivedAt.Add(d.RetryWindow)
	return !wall.Before(end) && !now.Before(end)
}

// now returns the scheduler's time: the clock's Steady time, which does not
// jump when the wall clock is set. How a jump of the wall clock plays out:
//
//   - Pauses, backoffs, circuit probes, timers and the age of unwritten
//     outcomes are intervals on the steady clock: a jump neither shortens
//     nor stretches them.
//   - A retry's DueAt, persisted in the store, is a steady time too, and
//     the store is asked for due retries with the steady time, so that the
//     retry set neither stalls (wall set back) nor comes due all at once
//     (wall set forward) while the process runs. The steady clock starts
//     at the wall time of the process's start, so across a restart a jump
//     made meanwhile moves the due times by that much, once.
//   - An event's receipt (receivedAt) is wall time, stamped at ingest; the
//     retry window is judged on both clocks (expired), so a jump archives
//     no job early, and one received after a jump backwards ends its
//     window by the wall clock as it should.
//   - What the outside world reads as wall time stays wall time: Report.At
//     (latency is receipt to delivery), an archive record's ArchivedAt,
//     the Response.ReceivedAt an HTTP-date Retry-After is measured from,
//     and midnight UTC when a daily quota resets.
//
// No job is lost to a jump: jobs leave the store only by being settled.
func (d *dest) now() time.Time { return d.e.opts.Clock.Steady() }

// archive writes jobs whose retry window ended to the archive, each with its
// last error, then reports them archived and settles them: observers hear
// of an archived job only once its record is written. results[i] is what
// ended jobs[i]; expired says no attempt was made (see Report.Expired). On
// error nothing is settled or reported, and the caller keeps the jobs.
func (d *dest) archive(q *queue, jobs []*jobstore.Job, results []destinations.SendResult, expired bool) error {
	now := d.e.opts.Clock.Now() // archive records and reports carry wall time
	recs := make([]archive.Record, len(jobs))
	for i, j := range jobs {
		recs[i] = archive.Record{
			Source: q.id.Source, Destination: q.id.Destination, MessageID: j.Event.MessageID,
			ReceivedAt: j.Event.ReceivedAt, ArchivedAt: now, Attempts: j.Attempts,
			LastError: j.LastError, Event: j.Event.Payload,
		}
	}
	if err := d.e.opts.Archive.Write(q.id, now, recs); err != nil {
		d.log.Error("archive jobs", "source", q.id.Source, "err", err, "jobs", len(jobs))
		return err
	}
	for i, j := range jobs {
		d.observe(Report{Queue: q.id, Job: j, Result: results[i], End: EndArchived, At: now, Expired: expired})
		d.settle(q, j)
	}
	return nil
}

// expireBudget bounds the jobs one sweep of an open circuit's queues
// archives, so that the scheduler turn stays short; a sweep that uses it up
// is followed by another right away.
const expireBudget = 20000

// expireSweep archives, without an attempt, the loaded and waiting jobs of
// the destination's queues whose retry window has ended. It runs while the
// destination's circuit is open: then only probes are sent, so jobs would
// otherwise wait past their window for as long as the destination is down,
// and "retried until the window ends, then archived" would not hold. It
// reports whether the budget ran out before the sweep was done.
func (d *dest) expireSweep(now time.Time) (more bool) {
	budget := expireBudget
	for _, q := range d.queues {
		if budget <= 0 {
			return true
		}
		budget -= d.expireQueue(q, now, budget)
	}
	return budget <= 0
}

// expireQueue archives up to budget expired jobs of q: the expired ones
// among those loaded, and, while every loaded job has expired, the next page
// from the store. It returns how many it archived.
func (d *dest) expireQueue(q *queue, now time.Time, budget int) int {
	reason := "retry window ended while the destination's circuit was open; no attempt made since"
	done := 0
	for done < budget {
		if len(q.buf) == 0 && q.hasWork(now) {
			if err := d.load(q, now, pageSize); err != nil {
				d.log.Error("read jobs to archive", "source", q.id.Source, "err", err)
				break
			}
		}
		var jobs []*jobstore.Job
		var keep []jobstore.Job
		for i := range q.buf {
			j := q.buf[i]
			if len(jobs) < budget-done && d.expired(&j, now, d.e.opts.Clock.Now()) {
				if j.LastError == "" {
					j.LastError = reason
				}
				jobs = append(jobs, &j)
			} else {
				keep = append(keep, j)
			}
		}
		if len(jobs) == 0 {
			break
		}
		results := make([]destinations.SendResult, len(jobs))
		for i := range results {
			results[i].Reason = reason
		}
		if err := d.archive(q, jobs, results, true); err != nil {
			break // the jobs stay loaded; the next sweep tries again
		}
		q.buf = keep
		done += len(jobs)
		if len(keep) > 0 {
			break // the rest of the queue is younger
		}
	}
	d.consider(q, now)
	return done
}

// dropEvery is how far a queue's settled prefix must advance before it is
// dropped with one range deletion. Each job is point-deleted as it ends; the
// occasional range lets the store discard those tombstones in bulk, while
// keeping range tombstones few (the store explains why they must be few).
const dropEvery = 4096

// settle removes an ended job from the store.
func (d *dest) settle(q *queue, j *jobstore.Job) {
	d.update.Finish = append(d.update.Finish, *j)
	d.release(q, j)
}

// release forgets an ended or rescheduled job in its queue's bookkeeping.
func (d *dest) release(q *queue, j *jobstore.Job) {
	if !j.DueAt.IsZero() {
		delete(q.loadedRetries, j.Seq)
		return
	}
	q.sinceDrop++
	if below := q.settle(j.Seq); below != 0 && q.sinceDrop >= dropEvery {
		d.update.Drops = append(d.update.Drops, jobstore.Drop{Queue: q.id, Below: below})
		q.sinceDrop = 0
	}
}

// reschedule moves a job to the retry set.
func (d *dest) reschedule(q *queue, j *jobstore.Job, due time.Time, reason string) {
	d.update.Reschedule = append(d.update.Reschedule, jobstore.Reschedule{
		Job: *j, DueAt: due, Attempts: j.Attempts, LastError: reason,
	})
	d.release(q, j)
	if q.retryNext.IsZero() || due.Before(q.retryNext) {
		q.retryNext = due
	}
	if r := j.Event.ReceivedAt; q.retryOldest.IsZero() || r.Before(q.retryOldest) {
		q.retryOldest = r
	}
}

// flushEvery and flushAge bound how many outcomes the scheduler gathers,
// and for how long, before it writes them to the store in one update.
// Writing after every wake-up, a few outcomes at a time, cost a tenth of
// fanout's CPU per delivered event in a drain (see BENCHMARKS.md); an
// outcome not yet written costs at most a duplicate after a crash, and load
// writes them all before it reads.
const (
	flushEvery = 64
	flushAge   = 20 * time.Millisecond
)

// flushDue reports whether the gathered outcomes should be written now:
// enough of them, the oldest old enough, or nothing in flight whose outcome
// would come to join them. The first time it sees outcomes it starts their
// age, which nextWake then waits for.
func (d *dest) flushDue(now time.Time) bool {
	u := &d.update
	n := u.Changes()
	if n == 0 {
		return false
	}
	if d.updateSince.IsZero() {
		d.updateSince = now
	}
	if d.storeFails > 0 && now.Before(d.storeRetryAt) {
		return false
	}
	return n >= flushEvery || d.inflight == 0 || now.Sub(d.updateSince) >= flushAge
}

// flush writes the coalesced store changes. When the store fails they are
// kept, and written with what gathers meanwhile once the destination's
// store backoff ends: a reschedule written late is a job retried late,
// whereas one dropped would leave the job pending in the store behind the
// queue's cursor, not sent again before a restart.
func (d *dest) flush(ctx context.Context) error {
	u := &d.update
	if u.Changes() == 0 {
		d.updateSince = time.Time{}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	d.awaitStore()
	err := d.e.opts.Store.Apply(ctx, *u)
	d.storeAnswered()
	if err != nil {
		if fenced(err) {
			// The partition is another node's now: it delivers these jobs
			// again. Nothing to keep.
			d.log.Warn("delivery outcomes refused: the partition's lease is lost; the new owner delivers their jobs again",
				"partition", d.part, "changes", u.Changes())
			d.updateSince = time.Time{}
			u.Drops, u.Reschedule, u.Finish = u.Drops[:0], u.Reschedule[:0], u.Finish[:0]
			return err
		}
		d.storeFailed(d.now())
		d.log.Error("write delivery outcomes; kept to write again", "err", err, "changes",
			u.Changes())
		return fmt.Errorf("write delivery outcomes: %w", err)
	}
	d.storeOK()
	d.updateSince = time.Time{}
	u.Drops, u.Reschedule, u.Finish = u.Drops[:0], u.Reschedule[:0], u.Finish[:0]
	return nil
}
