package cluster

import (
	"testing"
	"time"
)

// TestRelayBatch checks that the values of one push run reach a reader that
// takes what is ready together, in order, as the engine reads a round's
// changes: one store listing for the batch, not one per value.
func TestRelayBatch(t *testing.T) {
	const n = 21
	r := newRelay[int](DefaultPartitions)
	defer r.abort()
	for i := range n {
		r.push(i)
	}
	first := <-r.out
	// What the relay had at the push is handed on without a reader waiting;
	// give its goroutine the moment it needs.
	deadline := time.Now().Add(5 * time.Second)
	for len(r.out) < n-1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := []int{first}
	for more := true; more; {
		select {
		case v := <-r.out:
			got = append(got, v)
		default:
			more = false
		}
	}
	if len(got) != n {
		t.Fatalf("a reader taking what is ready got %d of %d values: %v", len(got), n, got)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("values out of order: %v", got)
		}
	}
}
