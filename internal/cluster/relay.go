package cluster

import (
	"context"
	"sync"
)

// relay hands values to a channel in order without blocking the sender:
// the heartbeat loop must never wait for the engine to read a change.
// Values wait in a slice; they are few (one per partition gained or lost).
//
// out is buffered (newRelay's buffer) so that the values pushed together
// reach it together: the engine reads what is ready without waiting and
// lists the store's queues once per batch of gains. Over an unbuffered
// channel each value waits for the reader, the reader finds nothing more
// ready, and a round's 21 gains become 21 listings one after another, each
// as slow as the jobs table is large (seconds under load), which held a
// dead node's last partitions back far past the lease.
type relay[T any] struct {
	out chan T

	mu      sync.Mutex
	queue   []T
	signal  chan struct{} // capacity 1: something was pushed
	closing bool          // finish was called: close out once drained
	stop    chan struct{} // abort: close out now
	stopped sync.Once
}

func newRelay[T any](buffer int) *relay[T] {
	r := &relay[T]{
		out:    make(chan T, buffer),
		signal: make(chan struct{}, 1),
		stop:   make(chan struct{}),
	}
	go r.run()
	return r
}

func (r *relay[T]) push(v T) {
	r.mu.Lock()
	r.queue = append(r.queue, v)
	r.mu.Unlock()
	r.poke()
}

func (r *relay[T]) poke() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// finish closes out after every value pushed so far was read.
func (r *relay[T]) finish() {
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	r.poke()
}

// abort closes out now, dropping what was not handed to it (a reader
// still gets what is in its buffer).
func (r *relay[T]) abort() { r.stopped.Do(func() { close(r.stop) }) }

// run is owned by the relay: it ends when finish's values are read or at
// abort.
func (r *relay[T]) run() {
	defer close(r.out)
	for {
		r.mu.Lock()
		batch := r.queue
		r.queue = nil
		closing := r.closing
		r.mu.Unlock()
		if len(batch) == 0 && closing {
			return
		}
		for _, v := range batch {
			select {
			case r.out <- v:
			case <-r.stop:
				return
			}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-r.signal:
		case <-r.stop:
			return
		}
	}
}

// wakeSet gathers the partitions named by notifications and hands each to
// out once, however many notifications named it while it waited: memory is
// bounded by the number of partitions and no wake-up is dropped.
type wakeSet struct {
	out chan int

	mu      sync.Mutex
	pending map[int]bool
	order   []int
	signal  chan struct{}
}

func newWakeSet(ctx context.Context, wg *sync.WaitGroup) *wakeSet {
	w := &wakeSet{
		out:     make(chan int),
		pending: make(map[int]bool),
		signal:  make(chan struct{}, 1),
	}
	wg.Add(1)
	go w.run(ctx, wg)
	return w
}

func (w *wakeSet) add(ps ...int) {
	if len(ps) == 0 {
		return
	}
	w.mu.Lock()
	for _, p := range ps {
		if !w.pending[p] {
			w.pending[p] = true
			w.order = append(w.order, p)
		}
	}
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

func (w *wakeSet) run(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		w.mu.Lock()
		var p int
		ok := len(w.order) > 0
		if ok {
			p = w.order[0]
			w.order = w.order[1:]
			// Cleared before the send, so that a notification arriving
			// while the engine scans p wakes it again.
			delete(w.pending, p)
		}
		w.mu.Unlock()
		if !ok {
			select {
			case <-w.signal:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case w.out <- p:
		case <-ctx.Done():
			return
		}
	}
}
