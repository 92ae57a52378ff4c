package delivery

import (
	"container/heap"
	"time"
)

// ring is the FIFO of queues ready to dispatch, served round-robin.
type ring struct {
	items []*queue
	head  int
}

func (r *ring) len() int { return len(r.items) - r.head }

func (r *ring) push(q *queue) { r.items = append(r.items, q) }

func (r *ring) pop() *queue {
	q := r.items[r.head]
	r.items[r.head] = nil
	r.head++
	if r.head > 1024 && r.head*2 > len(r.items) {
		n := copy(r.items, r.items[r.head:])
		clear(r.items[n:])
		r.items, r.head = r.items[:n], 0
	}
	return q
}

// wakeHeap orders waiting queues by when time alone makes them ready.
type wakeHeap []*queue

func (h wakeHeap) Len() int           { return len(h) }
func (h wakeHeap) Less(i, j int) bool { return h[i].wakeAt.Before(h[j].wakeAt) }
func (h wakeHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *wakeHeap) Push(x any) {
	q := x.(*queue)
	q.heapIdx = len(*h)
	*h = append(*h, q)
}
func (h *wakeHeap) Pop() any {
	old := *h
	q := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	q.heapIdx = -1
	return q
}

func (h *wakeHeap) set(q *queue, at time.Time) {
	q.wakeAt = at
	if q.heapIdx >= 0 {
		heap.Fix(h, q.heapIdx)
		return
	}
	heap.Push(h, q)
}

func (h *wakeHeap) remove(q *queue) {
	if q.heapIdx >= 0 {
		heap.Remove(h, q.heapIdx)
	}
}
