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
// shares a round that started before it asked. The test cluster's nodes
// keep their stats in one PostgreSQL database; n2 holds its answer to
// n1's first round until the test lets it go. Meanwhile n3, already
// flushed by that round, takes events in, and 8 overviews are asked of
// n1: all 8 wait for one second round, so n2 and n3 are asked to flush
// twice in all, not 9 times, and every one of the 8 shows n3's events,
// which the first round did not write.
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
	type answer struct {
		stats.Overview
		Nodes []NodeStatus `json:"nodes"`
		err   error
	}
	overview := func() (a answer) {
		req, _ := http.NewRequest(http.MethodGet, n1.srv.URL+"/api/v1/overview?range=1h", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return answer{err: err}
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return answer{err: fmt.Errorf("%s", res.Status)}
		}
		a.err = json.NewDecoder(res.Body).Decode(&a)
		return a
	}

	// The first round: n3 answers, n2 holds its answer.
	var wg sync.WaitGroup
	wg.Go(func() { overview() })
	<-atGate
	<-n3Flushed

	// n3 takes 3 events in after it flushed; 8 views ask, and wait.
	n3.stats.ObserveIngest(tracks(3, time.Now().Add(-time.Second)))
	answers := make([]answer, views)
	for i := range views {
		wg.Go(func() { answers[i] = overview() })
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
		nd.mu.Lock()
		got := 0
		for _, r := range nd.requests {
			if r == "POST /api/v1/stats/flush" {
				got++
			}
		}
		nd.mu.Unlock()
		if got != 2 {
			t.Errorf("%s was asked to flush %d times, want 2: the first view's round, and one shared by the %d views after", nd.peer.Name, got, views)
		}
	}
}
