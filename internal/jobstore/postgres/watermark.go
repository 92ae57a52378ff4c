package postgres

import (
	"slices"
	"sync"
)

// A queue's watermark (queues.drop_below) says every job of the queue below
// it has ended; a finished row says one job above it has. The delivery
// engine ends most jobs in Seq order, and moves the watermark itself only
// now and then (every few thousand jobs, by Drop), so written naively most
// jobs would end with a finished row: a row, an index entry and its WAL
// per delivered job, and rows that every later read from the watermark
// (a queue forgotten while idle and read again from 0, a restart) must
// step over, one index probe each. Instead the store moves the watermark
// itself whenever an update ends a queue's first pending jobs, and writes
// finished rows only for jobs that end out of order.
//
// To know that the jobs an update ends are the queue's first pending ones,
// the store remembers what its own reads showed: Pending returns a queue's
// pending jobs in Seq order, so after reading from the watermark it knows
// every pending job up to the last one read (and, when the page was not
// full, up to the committed Seq counter: no job up to it was left out).
// reads keeps, per queue, that range and the Seqs in it that have not
// ended. It is a cache of what the database says, and only ever errs on
// the side of a job still pending (then a finished row is written, as
// before): jobs never come back once ended, so a Seq the store saw end,
// or saw absent, stays so, whatever another node or call does meanwhile.

// maxOpen bounds the Seqs remembered per queue. A queue whose reads run
// further ahead of its ends than that (a caller that reads without ending)
// is remembered no further, and its later ends get finished rows.
const maxOpen = 1 << 16

// queueReads is what the store's reads showed of one queue: every job of
// the queue with a Seq in [wm, upto] that has not ended is in open.
type queueReads struct {
	wm   int64   // every job below it has ended (the watermark, as last known)
	upto int64   // the last Seq known about
	open []int64 // the Seqs in [wm, upto] not known to have ended, ascending
	gen  uint64  // the reads' generation when this queue last changed
}

// reads is the per-queue memory of Pending's results; see above.
type reads struct {
	mu  sync.Mutex
	gen uint64
	qs  map[int32]*queueReads
}

func newReads() *reads { return &reads{qs: make(map[int32]*queueReads)} }

// generation returns the generation of queue id: a Pending call takes it
// before its query, and remembers its result only if no update changed the
// queue meanwhile (which its snapshot may not have seen).
func (r *reads) generation(id int32) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q := r.qs[id]; q != nil {
		return q.gen
	}
	return 0
}

// read remembers what a Pending call of queue id found in one snapshot:
// the watermark wm, the committed Seq counter last, and the pending Seqs
// above max(after, wm-1), ascending; full says the page was full, so that
// nothing is known past its last Seq. gen is the queue's generation taken
// before the call.
func (r *reads) read(id int32, gen uint64, wm, last, after int64, seqs []int64, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.qs[id]
	if q == nil {
		if gen != 0 {
			return
		}
		// Seqs start at 1: a watermark of 0 is one of 1.
		wm = max(wm, 1)
		q = &queueReads{wm: wm, upto: wm - 1}
		r.qs[id] = q
	} else if q.gen != gen {
		return
	}
	q.advance(wm)
	if max(after, wm-1) > q.upto {
		return // a gap between what was known and what was read
	}
	upto := last
	if full {
		upto = seqs[len(seqs)-1]
	}
	for _, s := range seqs {
		if s <= q.upto {
			continue
		}
		if len(q.open) == maxOpen {
			upto = q.open[len(q.open)-1]
			break
		}
		q.open = append(q.open, s)
	}
	q.upto = max(q.upto, upto)
}

// advance moves q's watermark up to wm, forgetting what is below it.
func (q *queueReads) advance(wm int64) {
	if wm <= q.wm {
		return
	}
	q.wm = wm
	q.upto = max(q.upto, wm-1)
	i, _ := slices.BinarySearch(q.open, wm)
	q.open = q.open[i:]
}

// plan splits ended, the Seqs of queue id's pending jobs that an update
// ends (ascending), into the new watermark they allow (0 when it does not
// move) and those that still need a finished row: the ones at or above it.
// Seqs already below the known watermark need nothing.
func (r *reads) plan(id int32, ended []int64) (wm int64, rows []int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.qs[id]
	if q == nil {
		return 0, ended
	}
	// The first open Seq that the update does not end.
	next := q.upto + 1
	i := 0
	for _, s := range q.open {
		for i < len(ended) && ended[i] < s {
			i++
		}
		if i == len(ended) || ended[i] != s {
			next = s
			break
		}
	}
	if next > q.wm {
		wm = next
	}
	first, _ := slices.BinarySearch(ended, max(next, q.wm))
	return wm, ended[first:]
}

// applied records a committed update of queue id: ended are the Seqs it
// ended (ascending), wm the watermark it wrote (0 for none).
func (r *reads) applied(id int32, ended []int64, wm int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.qs[id]
	if q == nil {
		return
	}
	r.gen++
	q.gen = r.gen
	q.advance(wm)
	if len(ended) > 0 {
		q.open = slices.DeleteFunc(q.open, func(s int64) bool {
			_, found := slices.BinarySearch(ended, s)
			return found
		})
	}
}
