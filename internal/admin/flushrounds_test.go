package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/debugger"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/internal/router"
	"github.com/fanout/fanout/internal/stats"
)

// Concurrent overviews from one node share their flush rounds, and none
// shares a round that started before it asked. Three nodes on real HTTP
// servers keep their stats in one PostgreSQL database; n2 holds its
// answer to n1's first round until the test lets it go. Meanwhile n3,
// already flushed by that round, takes events in, and 8 overviews are
// asked of n1: all 8 wait for one second round, so n2 and n3 are asked to
// flush twice in all, not 9 times, and every one of the 8 shows n3's
// events, which the first round did not write.
func TestFlushRoundsShared(t *testing.T) {
	const views = 8
	pool := pgtest.Pool(t, pgtest.Start(t))
	cfg := &config.Config{
		Sources:      []config.Source{{Name: "web"}},
		Destinations: []config.Destination{{Name: "hook", Type: "webhook", Sources: []string{"web"}}},
	}
	type flushNode struct {
		peer    Peer
		h       *handler
		st      *stats.Stats
		flushes atomic.Int32 // flushes other nodes asked for, answered
	}
	var nodes []*flushNode
	list := func(self int64) []Peer {
		var out []Peer
		for _, nd := range nodes {
			p := nd.peer
			p.Self = p.ID == self
			out = append(out, p)
		}
		return out
	}
	gate, atGate := make(chan struct{}), make(chan struct{})
	var atGateOnce sync.Once
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		pg, err := stats.NewPostgres(t.Context(), pool, stats.PostgresOptions{Node: name})
		if err != nil {
			t.Fatal(err)
		}
		st, err := stats.Open(stats.Options{Backend: pg})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		id := int64(i + 1)
		nd := &flushNode{st: st}
		nd.h = New(Options{Config: cfg, Registry: destinations.Registry{}, Stats: st, Debugger: debugger.New(nil), Token: testToken, NodeID: id,
			Peers: func(context.Context) ([]Peer, error) { return list(id), nil }}).(*handler)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/api/v1/stats/flush" {
				nd.h.ServeHTTP(w, r)
				return
			}
			if id == 2 {
				atGateOnce.Do(func() { close(atGate) })
				<-gate
			}
			nd.h.ServeHTTP(w, r)
			nd.flushes.Add(1)
		}))
		t.Cleanup(srv.Close)
		nd.peer = Peer{ID: id, Name: name, AdminURL: srv.URL, Live: true}
		nodes = append(nodes, nd)
	}
	// Should the test fail before it lets n2 answer, the servers' Close
	// would wait for ever on the held requests.
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	overview := func() (stats.Overview, []NodeStatus, error) {
		req, _ := http.NewRequest(http.MethodGet, n1.peer.AdminURL+"/api/v1/overview?range=1h", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return stats.Overview{}, nil, err
		}
		defer res.Body.Close()
		var o struct {
			stats.Overview
			Nodes []NodeStatus `json:"nodes"`
		}
		if res.StatusCode != http.StatusOK {
			return o.Overview, nil, fmt.Errorf("%s", res.Status)
		}
		err = json.NewDecoder(res.Body).Decode(&o)
		return o.Overview, o.Nodes, err
	}
	// eventually waits for cond, polled, and fails t after 20 s.
	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s after 20 s", what)
			}
		}
	}

	// The first round: n3 answers, n2 holds its answer.
	var wg sync.WaitGroup
	wg.Go(func() { overview() })
	<-atGate
	eventually("flush of n3 in the first round", func() bool { return n3.flushes.Load() == 1 })

	// n3 takes 3 events in after it flushed; 8 views ask, and wait.
	received := time.Now().Add(-time.Second)
	rep := ingest.Report{Source: "web", Status: 200}
	for i := range 3 {
		rep.Accepted = append(rep.Accepted, jobstore.Entry{Event: event.Event{Source: "web", MessageID: fmt.Sprint("m", i),
			Type: event.Track, ReceivedAt: received, Payload: []byte(`{}`)}})
		rep.Routes = append(rep.Routes, router.Decision{To: []string{"hook"}})
	}
	n3.st.ObserveIngest(rep)
	type answer struct {
		o     stats.Overview
		nodes []NodeStatus
		err   error
	}
	answers := make([]answer, views)
	for i := range views {
		wg.Go(func() {
			a := &answers[i]
			a.o, a.nodes, a.err = overview()
		})
	}
	eventually(fmt.Sprintf("%d views waiting for the next round", views), func() bool {
		n1.h.flushes.mu.Lock()
		defer n1.h.flushes.mu.Unlock()
		return n1.h.flushes.next != nil && n1.h.flushes.next.views == views
	})
	release()
	wg.Wait()

	for i, a := range answers {
		reachable := 0
		for _, s := range a.nodes {
			if s.Reachable {
				reachable++
			}
		}
		if a.err != nil || a.o.Received != 3 || a.o.Ingest.Accepted != 3 || reachable != 3 {
			t.Errorf("view %d: %v, %+v, ingest %+v, nodes %+v; want n3's 3 events, taken in after the first round flushed n3, and 3 nodes reachable",
				i, a.err, a.o.Counts, a.o.Ingest, a.nodes)
		}
	}
	for _, nd := range []*flushNode{n2, n3} {
		if got := nd.flushes.Load(); got != 2 {
			t.Errorf("%s was asked to flush %d times, want 2: the first view's round, and one shared by the %d views after", nd.peer.Name, got, views)
		}
	}
}
