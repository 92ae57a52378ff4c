package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/internal/stats"
)

// Concurrent overviews from one node share their flush rounds, and none
// shares a round that started minFlushGap or more before it asked. The
// test cluster's nodes keep their stats in one PostgreSQL database; n2
// holds its answer to n1's first round until the test lets it go.
// Meanwhile n3, already flushed by that round, takes events in, the
// clock moves minFlushGap on, and 8 overviews are asked of n1: all 8 wait
// for one second round, so n2 and n3 are asked to flush twice in all,
// not 9 times, and every one of the 8 shows n3's events, which the first
// round did not write.
func TestFlushRoundsShared(t *testing.T) {
	const views = 8
	pool := pgtest.Pool(t, pgtest.Start(t))
	gate, atGate, n3Flushed := make(chan struct{}), make(chan struct{}), make(chan struct{}, 2*views)
	var atGateOnce sync.Once
	nodes := testCluster(t, 3, clusterOptions{idle: true, stats: postgresStats(pool),
		wrap: func(nd *node, api http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/api/v1/stats/flush" {
					api.ServeHTTP(w, r)
					return
				}
				switch nd.peer.ID {
				case 2:
					atGateOnce.Do(func() { close(atGate) })
					<-gate
				case 3:
					defer func() { n3Flushed <- struct{}{} }()
				}
				api.ServeHTTP(w, r)
			})
		}})
	// Should the test fail before it lets n2 answer, the servers' Close
	// would wait for ever on the held requests.
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	n1, n3 := nodes[0], nodes[2]

	// The first round: n3 answers, n2 holds its answer.
	var wg sync.WaitGroup
	wg.Go(func() { n1.overview() })
	<-atGate
	<-n3Flushed

	// n3 takes 3 events in after it flushed; the first round gets too
	// old to share; 8 views ask, and wait.
	n3.stats.ObserveIngest(tracks(3, n3.clock.Now().Add(-time.Second)))
	n3.clock.Advance(minFlushGap)
	answers := make([]overviewAnswer, views)
	for i := range views {
		wg.Go(func() { answers[i] = n1.overview() })
	}
	waiting := func() bool {
		f := &n1.h.flushes
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.next != nil && f.next.views == views
	}
	for deadline := time.Now().Add(20 * time.Second); !waiting(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the %d views are not all waiting for the next round after 20 s", views)
		}
	}
	release()
	wg.Wait()

	for i, a := range answers {
		checkNodes(t, fmt.Sprintf("view %d", i), a.Nodes)
		if a.err != nil || a.Received != 3 || a.Ingest.Accepted != 3 {
			t.Errorf("view %d: %v, %+v, ingest %+v; want n3's 3 events, taken in after the first round flushed n3",
				i, a.err, a.Counts, a.Ingest)
		}
	}
	for _, nd := range nodes[1:] {
		if got := nd.flushes(); got != 2 {
			t.Errorf("%s was asked to flush %d times, want 2: the first view's round, and one shared by the %d views after", nd.peer.Name, got, views)
		}
	}
}

// Overviews asked one after the other, as a tab polling them does, share
// the flush round that started less than minFlushGap before they were
// asked: such a view may miss what was counted in that gap, never more.
// n1 serves each overview; n3 takes events in between, and the clock
// moves.
func TestFlushRoundsReused(t *testing.T) {
	pool := pgtest.Pool(t, pgtest.Start(t))
	nodes := testCluster(t, 3, clusterOptions{idle: true, stats: postgresStats(pool)})
	n1, n3 := nodes[0], nodes[2]
	steps := []struct {
		name string
		// n3 takes in, then the clock moves, then n1 is asked.
		taken int
		moved time.Duration
		// How many times n2 and n3 were asked to flush in all, and what
		// the overview shows.
		flushes, shown int64
	}{
		{name: "first view", taken: 3, flushes: 1, shown: 3},
		{name: "just before minFlushGap", taken: 2, moved: minFlushGap - time.Millisecond, flushes: 1, shown: 3},
		{name: "minFlushGap after the round", moved: time.Millisecond, flushes: 2, shown: 5},
		{name: "at once again", flushes: 2, shown: 5},
		{name: "a minute after", taken: 1, moved: time.Minute, flushes: 3, shown: 6},
	}
	for _, s := range steps {
		if s.taken > 0 {
			n3.stats.ObserveIngest(tracks(s.taken, n3.clock.Now().Add(-time.Second)))
		}
		n3.clock.Advance(s.moved)
		a := n1.overview()
		checkNodes(t, s.name, a.Nodes)
		if a.err != nil || a.Received != s.shown || a.Ingest.Accepted != s.shown {
			t.Errorf("%s: %v, %+v, ingest %+v; want %d received and accepted", s.name, a.err, a.Counts, a.Ingest, s.shown)
		}
		for _, nd := range nodes[1:] {
			if got := nd.flushes(); got != s.flushes {
				t.Errorf("%s: %s was asked to flush %d times in all, want %d", s.name, nd.peer.Name, got, s.flushes)
			}
		}
	}
}

// overviewAnswer is an overview of the last hour, with the nodes'
// statuses, or the error asking for it.
type overviewAnswer struct {
	stats.Overview
	Nodes []NodeStatus `json:"nodes"`
	err   error
}

// overview asks nd for the cluster's overview of the last hour.
func (nd *node) overview() (a overviewAnswer) {
	req, _ := http.NewRequest(http.MethodGet, nd.srv.URL+"/api/v1/overview?range=1h", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return overviewAnswer{err: err}
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return overviewAnswer{err: fmt.Errorf("%s", res.Status)}
	}
	a.err = json.NewDecoder(res.Body).Decode(&a)
	return a
}

// flushes is how many times the other nodes asked nd to flush its stats.
func (nd *node) flushes() int64 {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	var n int64
	for _, r := range nd.requests {
		if r == "POST /api/v1/stats/flush" {
			n++
		}
	}
	return n
}
