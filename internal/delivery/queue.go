package delivery

import (
	"bytes"
	"slices"
	"sort"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// queue is the in-memory head of one virtual queue: the jobs of one source
// for one destination. Only a few jobs per queue live in memory (buf); the
// rest wait in the store and are paged in by cursor, so memory does not grow
// with the backlog. A queue is owned by its destination's scheduler
// goroutine and never touched by another.
type queue struct {
	id jobstore.Queue
	// gone says the queue's partition was lost (see dest.forget): it is in
	// no ring, heap or map any more, and a completion for it must not put
	// it back.
	gone bool

	// buf holds loaded jobs not yet dispatched: due retries first, then
	// pending jobs in Seq order. Jobs sent again at once (paused by a wait,
	// split, released from a hold) go back to its front.
	buf []jobstore.Job
	// cursor is the highest pending Seq loaded so far; diskMore says the
	// store may hold pending jobs beyond it.
	cursor   uint64
	diskMore bool
	// out tracks the pending jobs loaded and not yet ended or rescheduled, in
	// Seq order, from outHead on. When its head ends, the queue's prefix in
	// the store is dropped with one Drop.
	out     []pend
	outHead int
	// sinceDrop counts the jobs settled since the queue's last Drop. Seqs
	// are global, not per queue, so the count, not the Seq, says how much a
	// Drop would cover.
	sinceDrop int
	// retryNext is when the earliest retry job on disk is due; zero when
	// there is none. loadedRetries holds the retry jobs in buf or in flight,
	// so that a reload does not take them twice.
	retryNext     time.Time
	loadedRetries map[uint64]struct{}
	// retryOldest is the earliest receipt among the jobs rescheduled since
	// the retry set was last seen empty: the age of a queue whose jobs all
	// wait for a retry on disk (a destination that is down). It can be
	// older than the oldest job still waiting, never younger.
	retryOldest time.Time

	// pausedUntil is set by a wait the destination asked for, a 429 or a
	// quota: the queue dispatches nothing before it. pause says why.
	pausedUntil time.Time
	pause       pauseReason
	// streak counts the 429s without a wait in a row, which
	// ThrottleBackoff grows from.
	streak int
	// inflight counts dispatched requests; limit is the AIMD concurrency.
	// sent numbers the queue's requests; cut is the number of the last
	// one sent before the limit was last cut (decrease).
	inflight int
	limit    float64
	// ceiling is the limit at its last cut; see increase.
	sent    uint64
	cut     uint64
	ceiling float64
	// holds are the users the destination throttles alone (Result.Hold),
	// by hold key, with the jobs that wait for each; held counts those
	// jobs and holdNext is the earliest hold's end. See hold.
	holds    map[string]*hold
	held     int
	holdNext time.Time
	// holdOut names, by Seq, the hold of each hold's head that is out.
	holdOut map[uint64]string
	// sizes caps the next batches taken from the head, front first: the
	// halves of a batch the destination asked to split.
	sizes []int

	inRing   bool
	heapIdx  int // index in the wake heap, -1 when absent
	wakeAt   time.Time
	throttle int // 429s seen, for visibility
}

type pend struct {
	seq        uint64
	receivedAt time.Time
	done       bool
}

func newQueue(id jobstore.Queue, limit int) *queue {
	return &queue{id: id, limit: float64(limit), heapIdx: -1, loadedRetries: map[uint64]struct{}{}}
}

// hasWork reports whether the queue has jobs it could send now or after
// loading, ignoring pauses and concurrency.
func (q *queue) hasWork(now time.Time) bool {
	return len(q.buf) > 0 || q.diskMore || q.retryDue(now)
}

func (q *queue) retryDue(now time.Time) bool {
	return !q.retryNext.IsZero() && !q.retryNext.After(now)
}

// ready reports whether the queue may dispatch now.
func (q *queue) ready(now time.Time) bool {
	return q.hasWork(now) && !q.pausedUntil.After(now) && q.inflight < int(q.limit)
}

// idle reports whether the queue holds nothing at all, so it can be
// forgotten. A queue whose concurrency was cut by throttling is kept, so that
// its next events do not hammer the destination at full concurrency again.
func (q *queue) idle(now time.Time, maxLimit int) bool {
	return q.limit >= float64(maxLimit) && len(q.buf) == 0 && !q.diskMore && q.inflight == 0 && q.outHead == len(q.out) &&
		q.retryNext.IsZero() && len(q.loadedRetries) == 0 && !q.pausedUntil.After(now) && len(q.holds) == 0
}

// nextWake returns when the queue may become ready by the passing of time
// alone: the end of a pause, the next retry falling due, or a hold ending.
// Zero when never.
func (q *queue) nextWake(now time.Time) time.Time {
	if q.pausedUntil.After(now) {
		if len(q.buf) > 0 || q.diskMore || !q.retryNext.IsZero() || q.held > 0 {
			return q.pausedUntil
		}
		return time.Time{}
	}
	var w time.Time
	if q.retryNext.After(now) && len(q.buf) == 0 && !q.diskMore {
		w = q.retryNext
	}
	if !q.holdNext.IsZero() && (w.IsZero() || q.holdNext.Before(w)) {
		w = q.holdNext
	}
	return w
}

// pauseUntil pauses the queue until t, unless it is paused longer already.
func (q *queue) pauseUntil(t time.Time, why pauseReason) {
	if t.After(q.pausedUntil) {
		q.pausedUntil, q.pause = t, why
	}
}

// decrease halves the queue's concurrency for the answer to its request
// number seq, unless the limit was cut after that request went out: the
// requests in flight when the destination first pushes back come back
// with the same answer, and each halving the limit again took a queue
// from 64 to 1 on one burst of 429s (a soak run's sink that allowed 200
// requests/s then got 74/s). One cut per round of requests, as TCP does.
func (q *queue) decrease(seq uint64) {
	if seq <= q.cut {
		return
	}
	q.ceiling = q.limit
	q.limit = aimdDecrease(q.limit)
	q.cut = q.sent
}

// increase grows the queue's concurrency by 1/limit (about +1 per round
// of requests), up to max; within ceilingBand of the limit at which the
// destination last pushed back (ceiling) it grows ceilingRounds times
// slower, and past the band at the usual pace again: the destination
// then takes more than it did.
//
// Why: a 429 with Retry-After: 1 costs the queue a whole second without a
// request, which it must honour. Plain AIMD climbs back from the halved
// limit to the one that overran the destination in a few rounds and
// overruns it again, so the queue spent much of its time paused: against
// the soak run's sink (200 requests/s, burst 20, 50 ms) it made 74
// requests/s. Lingering near the ceiling makes the 429s, and so the
// pauses, rare: 178/s in TestPauseAndAIMDNearTheAllowedRate, which
// simulates that sink.
func (q *queue) increase(max int) {
	step := 1 / q.limit
	if q.ceiling > 0 && q.limit >= q.ceiling-ceilingBand {
		if q.limit > q.ceiling+ceilingBand {
			q.ceiling = 0
		} else {
			step /= ceilingRounds
		}
	}
	q.limit = min(q.limit+step, float64(max))
}

const (
	ceilingRounds = 200
	ceilingBand   = 1
)

// hold is one user of a queue that the destination throttles alone. Its
// jobs wait in queue order: the held one first, then the later ones sieve
// finds. When the hold ends, only its head goes out (sending); the others
// wait for the head's answer, so that a user held again is not overtaken
// by its own later events. Once the head gets an answer that is not
// another hold, the rest go back to the queue, in order, and the hold is
// gone.
type hold struct {
	until   time.Time
	jobs    []jobstore.Job
	sending bool
}

// Holds bound the memory of throttled users per queue: at most maxHolds
// users and maxHeld jobs wait in holds. Past either, the queue pauses
// instead (pauseHolds), which costs the other users latency, not memory.
var (
	maxHolds = 1024
	maxHeld  = 4096
)

// hold puts j behind the user key until until, or reports false when the
// holds are full. A hold's head that comes back held again goes back to
// the front of its hold.
func (q *queue) hold(key string, j jobstore.Job, until time.Time) bool {
	h := q.holds[key]
	if head, ok := q.holdOut[j.Seq]; ok && head == key && h != nil {
		delete(q.holdOut, j.Seq)
		h.jobs = insertBySeq(h.jobs, j)
		h.sending, h.until = false, until
		q.held++
		q.nextHold()
		return true
	}
	if q.held >= maxHeld || (h == nil && len(q.holds) >= maxHolds) {
		return false
	}
	if h == nil {
		if q.holds == nil {
			q.holds = map[string]*hold{}
		}
		h = &hold{}
		q.holds[key] = h
	}
	// By Seq, which is queue order: requests in flight together may come
	// back held in any order.
	h.jobs = insertBySeq(h.jobs, j)
	q.held++
	if !h.sending && until.After(h.until) {
		h.until = until
		q.nextHold()
	}
	return true
}

func insertBySeq(jobs []jobstore.Job, j jobstore.Job) []jobstore.Job {
	i := sort.Search(len(jobs), func(i int) bool { return jobs[i].Seq > j.Seq })
	return slices.Insert(jobs, i, j)
}

// nextHold sets holdNext to the earliest end of a hold whose head is not
// out.
func (q *queue) nextHold() {
	q.holdNext = time.Time{}
	for _, h := range q.holds {
		if !h.sending && (q.holdNext.IsZero() || h.until.Before(q.holdNext)) {
			q.holdNext = h.until
		}
	}
}

// releaseHolds sends the head of each hold that has ended by now back to
// the head of the queue.
func (q *queue) releaseHolds(now time.Time) {
	if q.held == 0 || q.holdNext.IsZero() || q.holdNext.After(now) {
		return
	}
	var back []jobstore.Job
	for key, h := range q.holds {
		if h.sending || h.until.After(now) || len(h.jobs) == 0 {
			continue
		}
		j := h.jobs[0]
		h.jobs[0] = jobstore.Job{}
		h.jobs = h.jobs[1:]
		h.sending = true
		q.held--
		if q.holdOut == nil {
			q.holdOut = map[uint64]string{}
		}
		q.holdOut[j.Seq] = key
		back = append(back, j)
	}
	q.nextHold()
	q.buf = append(back, q.buf...)
}

// holdAnswered is told of the answer to a job that is not another hold of
// it. If the job was a hold's head, the hold is over: its other jobs are
// returned, in order, to go back to the queue after the head.
func (q *queue) holdAnswered(seq uint64) []jobstore.Job {
	key, ok := q.holdOut[seq]
	if !ok {
		return nil
	}
	delete(q.holdOut, seq)
	h := q.holds[key]
	delete(q.holds, key)
	if len(q.holds) == 0 {
		q.holds, q.holdOut = nil, nil // a map does not shrink; let a burst's go
	}
	if h == nil {
		return nil
	}
	q.held -= len(h.jobs)
	return h.jobs
}

// takeHandoff takes in the jobs announced for the queue since its scheduler
// last looked. If the queue has read everything the store held (no
// diskMore), the announced jobs are the ones that follow its cursor, and
// as many as fit in a page join buf without a read; the rest, and all of
// them for a queue that is still reading its backlog, stay for load to read
// from the store. Jobs at or below the cursor were read already: a read that
// ran after the store applied them and before they were announced.
func (q *queue) takeHandoff(h *handoff) {
	if q.diskMore || h.overflow {
		q.diskMore = true
		return
	}
	jobs := h.jobs
	for len(jobs) > 0 && jobs[0].Seq <= q.cursor {
		jobs = jobs[1:]
	}
	if room := max(pageSize-len(q.buf), 0); len(jobs) > room {
		jobs = jobs[:room]
		q.diskMore = true
	}
	if len(jobs) == 0 {
		return
	}
	start := len(q.buf)
	q.buf = append(q.buf, jobs...)
	for i := start; i < len(q.buf); i++ {
		// A copy: the announced payload shares its memory with the rest of
		// the request it came in, which must not live as long as the job.
		q.buf[i].Event.Payload = bytes.Clone(q.buf[i].Event.Payload)
	}
	q.cursor = jobs[len(jobs)-1].Seq
	q.track(jobs)
}

// track records pending jobs just loaded.
func (q *queue) track(jobs []jobstore.Job) {
	// Move the live part to the front once the settled prefix is most of
	// the slice: while a backlog drains, some jobs are always in flight,
	// so the slice is never wholly settled, and without this it would grow
	// by every job the queue ever loaded.
	if q.outHead > 0 && q.outHead >= len(q.out)/2 {
		n := copy(q.out, q.out[q.outHead:])
		q.out, q.outHead = q.out[:n], 0
	}
	for _, j := range jobs {
		q.out = append(q.out, pend{seq: j.Seq, receivedAt: j.Event.ReceivedAt})
	}
}

// oldest returns when the oldest job of the queue was received: the head
// of its pending jobs (loaded in Seq order, so the oldest pending job of the
// queue), a loaded retry job, or retryOldest for those still on disk. Zero
// when the queue holds none.
func (q *queue) oldest() time.Time {
	var t time.Time
	if q.outHead < len(q.out) {
		t = q.out[q.outHead].receivedAt
	}
	if q.retryNext.IsZero() && len(q.loadedRetries) == 0 {
		q.retryOldest = time.Time{} // the retry set is empty
	}
	if r := q.retryOldest; !r.IsZero() && (t.IsZero() || r.Before(t)) {
		t = r
	}
	for i := range q.buf {
		if r := q.buf[i].Event.ReceivedAt; !q.buf[i].DueAt.IsZero() && (t.IsZero() || r.Before(t)) {
			t = r
		}
	}
	return t
}

// settle marks a pending job ended (or moved to the retry set) and returns
// the bound below which the queue's whole prefix in the store is now settled,
// or 0 when the prefix did not move.
func (q *queue) settle(seq uint64) uint64 {
	live := q.out[q.outHead:]
	i := sort.Search(len(live), func(i int) bool { return live[i].seq >= seq })
	if i == len(live) || live[i].seq != seq {
		return 0
	}
	live[i].done = true
	if i != 0 {
		return 0
	}
	for q.outHead < len(q.out) && q.out[q.outHead].done {
		q.outHead++
	}
	if q.outHead < len(q.out) {
		return q.out[q.outHead].seq
	}
	// Everything loaded has settled; release the slice once it is large.
	if cap(q.out) > 1024 {
		q.out, q.outHead = nil, 0
	}
	return q.cursor + 1
}
