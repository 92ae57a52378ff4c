package cluster

import (
	"sync"
	"testing"
	"time"
)

// A node giving partitions up to a newcomer keeps their leases, renewed and
// valid for writes, until its engine says their requests in flight are over
// (Drained), or until its grace ends when a request never ends; only then
// does the newcomer take them, and the pause stays under one Lease.
func TestHandover(t *testing.T) {
	const grace = 600 * time.Millisecond
	for _, tc := range []struct {
		name string
		// busy is how long the engine stands for requests in flight on a
		// partition handed over before calling Drained; 0: never.
		busy time.Duration
	}{
		{"drained", 250 * time.Millisecond},
		{"grace expires", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			a, err := Join(t.Context(), Options{Pool: b.pool(), NodeName: "a", Partitions: testPartitions,
				Heartbeat: testHeartbeat, Lease: testLease, Grace: grace, Logger: testLogger})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Leave(t.Context()) })
			var mu sync.Mutex
			handed := map[int]time.Time{}  // when the Draining change came
			drained := map[int]time.Time{} // when Drained was called
			go func() {
				for c := range a.Changes() {
					if !c.Draining {
						continue
					}
					mu.Lock()
					handed[c.Partition] = time.Now()
					mu.Unlock()
					if tok, ok := a.Owns(c.Partition); !ok || tok != c.Token {
						t.Errorf("partition %d handed over: Owns = %d, %v, want its token %d for the writes in flight", c.Partition, tok, ok, c.Token)
					}
					if tc.busy > 0 {
						time.AfterFunc(tc.busy, func() {
							mu.Lock()
							drained[c.Partition] = time.Now()
							mu.Unlock()
							a.Drained(c.Partition, c.Token)
						})
					}
				}
			}()
			waitFor(t, 5*time.Second, "a owns every partition", func() bool { return len(a.Owned()) == testPartitions })

			nb := b.join("b", Options{Grace: grace})
			gained := map[int]time.Time{}
			waitFor(t, 5*time.Second, "b takes its share", func() bool {
				for _, p := range nb.Owned() {
					if _, ok := gained[p]; !ok {
						gained[p] = time.Now()
					}
				}
				return len(gained) == testPartitions/2 && balanced(a, nb)
			})
			mu.Lock()
			defer mu.Unlock()
			for p, at := range gained {
				from, ok := handed[p]
				if !ok {
					t.Fatalf("b gained partition %d, which a never handed over", p)
				}
				pause := at.Sub(from)
				if pause >= testLease {
					t.Errorf("partition %d paused %s, want under one Lease (%s)", p, pause, testLease)
				}
				if tc.busy > 0 {
					if done, ok := drained[p]; !ok || at.Before(done) {
						t.Errorf("partition %d taken by b at %s, before a's engine was drained (%v)", p, at.Format(time.StampMicro), done.Format(time.StampMicro))
					}
				} else if pause < grace-50*time.Millisecond { // the poll's slack
					t.Errorf("partition %d taken %s after its handover began, before the grace (%s) ended", p, pause, grace)
				}
			}
		})
	}
}
