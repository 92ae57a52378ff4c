package admin

// # One view from any node
//
// Nodes whose storage.postgres names the same database form a cluster
// (internal/cluster), and each of them serves the admin API and the UI.
// Whichever node serves it, the overview, the series, the delivery
// issues, the destinations' and queues' state and the debugger show the
// whole cluster. /metrics stays per node: Prometheus scrapes every node
// and sums.
//
// What a view needs lives in one of two places, and is read where it
// lives:
//
//   - In the database: the stats minutes, issue groups and gauges (every
//     node writes rows of its own, every query sums every node's rows,
//     see stats.Postgres) and the archive. Any node reads them directly.
//     What the database does not have yet is the last FlushInterval (2 s)
//     each node counted in memory; read as is, two nodes would answer with
//     figures seconds apart. So a cluster-wide stats view first asks every
//     live node to flush (POST /api/v1/stats/flush), this one included,
//     and reads after: all nodes then answer from the same rows. The
//     other way, fetching each node's figures and adding them up, cannot
//     merge latency quantiles (the sketches are in the rows, not in the
//     answers) and would read the database N times instead of once.
//     The views share their flush rounds (flushRounds): the UI asks for
//     the overview, series and issues at once, every few seconds, from
//     every open tab, and a round serves all the views asked within
//     minFlushGap (1 s) of its start, so that a view shows what every node counted up to
//     1 s before it was asked. A node with nothing counted since its last
//     flush answers without writing (stats.Flush).
//   - In a node's memory: the scheduler's live state (buffered, in
//     flight, paused, rate, circuit) of the destinations whose partitions
//     the node owns, and the debugger's sample of the events it took in
//     and the outcomes of those it delivered. The serving node asks every
//     live node for its part (the same route with local=1) and merges:
//     mergeStates, and debugger.Merge for events, whose outcomes are often
//     reported by another node than the one that took the event in.
//
// The node list is the cluster's (cluster.Node.Nodes, through
// Options.Peers): each node advertises its admin URL when it joins. The
// calls to other nodes carry the admin token (the nodes of a cluster share
// admin_token), are bounded (peerTimeout each, peerConcurrency at a time,
// peerMaxBody), and never loop: a request with local=1 is answered from
// the node alone. A node that is down, or does not answer in time, is
// listed unreachable with the reason, and the view is served without its
// part: "nodes" in the JSON answers, the Fanout-Nodes header on the routes
// that answer a JSON array (destinations, queues), a "nodes" event on the
// merged debugger stream.
//
// Queue depth and pending retries are the exception among the live
// figures: they are running differences counted by whichever node took
// an event in (+1) and whichever ended it (-1), so they are summed over
// every node's rows, the dead ones included (stats.ClusterGauges), not
// asked of the live nodes.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/debugger"
	"github.com/fanout/fanout/internal/stats"
)

// nodeHeader carries the id of the node that answered (Options.NodeID).
const nodeHeader = "Fanout-Node"

// checkNode fails when res is not p's: an admin URL that reaches another
// node, as http://127.0.0.1:8081 does from every host but p's when p's
// admin_listen is on loopback. Without the check that node's part would
// be counted twice, and p's not at all.
func checkNode(p Peer, res *http.Response) error {
	if got := res.Header.Get(nodeHeader); got != strconv.FormatInt(p.ID, 10) {
		return fmt.Errorf("%s answered as node %q, not as node %d: the admin URL it advertises reaches another node (is its admin_listen on loopback?)", p.AdminURL, got, p.ID)
	}
	return nil
}

// nodesHeader carries the nodes' statuses (JSON) on the routes that answer
// a JSON array.
const nodesHeader = "Fanout-Nodes"

// nodesValue is nodes as JSON fit for a header: ASCII, on one line.
func nodesValue(nodes []NodeStatus) string {
	b, _ := json.Marshal(nodes)
	var sb strings.Builder
	for _, r := range string(b) {
		if r < 0x80 {
			sb.WriteRune(r)
		} else if r <= 0xffff {
			fmt.Fprintf(&sb, `\u%04x`, r)
		} else {
			sb.WriteRune('?')
		}
	}
	return sb.String()
}

// NodeState is one node's part of a destination's state in a cluster-wide
// view: the node delivering it, or one whose scheduler still holds queues
// of it.
type NodeState struct {
	Node string `json:"node"`
	// Owner says the node owns the destination's partition.
	Owner       bool `json:"owner"`
	InFlight    int  `json:"in_flight"`
	Concurrency int  `json:"concurrency"`
	CircuitOpen bool `json:"circuit_open"`
	Queues      int  `json:"queues"`
}

// states is the state of every destination: this node's, or in a cluster
// every node's merged, with the nodes' statuses (nil for this node's
// alone).
func (h *handler) states(r *http.Request) (map[string]*State, []NodeStatus) {
	if !h.clusterWide(r) {
		return h.localState(r.Context()), nil
	}
	ctx := r.Context()
	var flushed []NodeStatus
	var wg sync.WaitGroup
	wg.Go(func() { flushed = h.flushed(ctx) })
	parts, nodes := gather(ctx, h, http.MethodGet, "/api/v1/queues", nil, func() ([]*State, error) {
		out := []*State{}
		for _, s := range h.localState(ctx) {
			out = append(out, s)
		}
		return out, nil
	})
	wg.Wait()
	nodes = joinStatus(nodes, flushed)
	gauges, err := h.Stats.ClusterGauges()
	if err != nil {
		h.Logger.Warn("read the cluster's queue depths", "err", err)
	}
	return mergeStates(parts, gauges), nodes
}

// joinStatus marks unreachable in a the nodes unreachable in b.
func joinStatus(a, b []NodeStatus) []NodeStatus {
	for i := range a {
		for _, o := range b {
			if o.ID == a[i].ID && o.Name == a[i].Name && !o.Reachable && a[i].Reachable {
				a[i].Reachable, a[i].Error = false, o.Error
			}
		}
	}
	return a
}

// mergeStates merges the nodes' states of each destination. In a steady
// cluster one node holds a destination's queues (its partition's owner);
// during a hand-over two may. Counts add up; a queue is paused until the
// latest pause and retries next at the earliest retry; a circuit is open
// when any node has it open; the concurrency is the owner's (the others
// keep the configured one).
// The depth and pending retries come from gauges, the sums over every
// node's stats (nil: as the nodes gave them).
func mergeStates(parts []namedPart[[]*State], gauges map[stats.Pair]stats.Gauges) map[string]*State {
	out := map[string]*State{}
	queues := map[stats.Pair]*QueueState{}
	for _, part := range parts {
		for _, s := range part.v {
			m := out[s.Name]
			if m == nil {
				m = &State{Name: s.Name, Concurrency: s.Concurrency, Queues: []QueueState{}}
				out[s.Name] = m
			}
			if s.Owned || len(s.Queues) > 0 || s.InFlight > 0 || s.CircuitOpen {
				if len(m.Nodes) == 0 || s.Owned {
					m.Concurrency = s.Concurrency
				}
				m.Nodes = append(m.Nodes, NodeState{Node: part.node, Owner: s.Owned, InFlight: s.InFlight,
					Concurrency: s.Concurrency, CircuitOpen: s.CircuitOpen, Queues: len(s.Queues)})
			}
			m.InFlight += s.InFlight
			m.StoreWaitSince = earliest(m.StoreWaitSince, s.StoreWaitSince)
			if s.Stale {
				m.Stale, m.TakenAt = true, earliest(m.TakenAt, s.TakenAt)
			}
			if s.CircuitOpen {
				m.CircuitOpen = true
				m.ProbeAt = earliest(m.ProbeAt, s.ProbeAt)
			}
			for _, q := range s.Queues {
				p := stats.Pair{Source: q.Source, Destination: s.Name}
				mq := queues[p]
				if mq == nil {
					mq = &QueueState{Source: q.Source}
					queues[p] = mq
				}
				mergeQueue(mq, q)
				if q.Buffered+q.InFlight+q.Held > 0 || q.Backlog || q.PausedUntil != nil {
					mq.Nodes = append(mq.Nodes, part.node)
				}
			}
		}
	}
	if gauges != nil {
		for p, mq := range queues {
			g := gauges[p]
			mq.PendingRetry = g.PendingRetry
			mq.Depth = max(g.Depth, int64(mq.Buffered+mq.InFlight))
		}
		// A queue no node holds may still have jobs on disk.
		for p, g := range gauges {
			if queues[p] == nil && out[p.Destination] != nil && (g.Depth > 0 || g.PendingRetry > 0) {
				queues[p] = &QueueState{Source: p.Source, PendingRetry: g.PendingRetry, Depth: max(g.Depth, g.PendingRetry)}
			}
		}
	}
	for p, mq := range queues {
		out[p.Destination].Queues = append(out[p.Destination].Queues, *mq)
	}
	for _, m := range out {
		sort.Slice(m.Queues, func(i, j int) bool { return m.Queues[i].Source < m.Queues[j].Source })
	}
	return out
}

// mergeQueue adds one node's state of a queue to m.
func mergeQueue(m *QueueState, q QueueState) {
	m.Buffered += q.Buffered
	m.Backlog = m.Backlog || q.Backlog
	m.InFlight += q.InFlight
	m.Limit = max(m.Limit, q.Limit)
	m.Depth += q.Depth
	m.OldestAgeSeconds = max(m.OldestAgeSeconds, q.OldestAgeSeconds)
	m.PendingRetry += q.PendingRetry
	if q.PausedUntil != nil && (m.PausedUntil == nil || q.PausedUntil.After(*m.PausedUntil)) {
		m.PausedUntil, m.PauseReason = q.PausedUntil, q.PauseReason
	}
	m.RetryNext = earliest(m.RetryNext, q.RetryNext)
	m.Throttled += q.Throttled
	m.Held += q.Held
	m.Holds += q.Holds
}

func earliest(a, b *time.Time) *time.Time {
	if a == nil || b != nil && b.Before(*a) {
		return b
	}
	return a
}

// statsNodes flushes the cluster's stats before a cluster-wide stats view
// and returns the nodes' statuses; nil for this node's view alone.
func (h *handler) statsNodes(r *http.Request) []NodeStatus {
	if !h.clusterWide(r) {
		return nil
	}
	return h.flushed(r.Context())
}

// flushed returns the nodes' statuses of a flush round (flushRounds) fit
// for a cluster-wide view asked now.
func (h *handler) flushed(ctx context.Context) []NodeStatus {
	return h.flushes.do(ctx, h.Clock.Steady, h.flushCluster)
}

// minFlushGap is how recent a flush round must be for a cluster-wide
// view to share it rather than ask for a new one: the age, from its
// start, of the rounds a view may use. It bounds both the load the views
// put on the other nodes, a flush request to each at most once per
// minFlushGap from each node serving views, however many tabs poll it,
// and how stale a view may be: it shows what every reachable node
// counted up to minFlushGap before it was asked. 1 s is half the nodes'
// own flush interval (stats.DefaultFlushInterval), under the UI's
// shortest polling period (2 s, the destinations page), and far more than
// the milliseconds between the requests of one poll, which so share a
// round.
const minFlushGap = time.Second

// flushRounds lets the cluster-wide views of a node share their flush
// rounds (handler.flushCluster). A view shares the latest round if it
// started less than minFlushGap before the view asked, running or ended;
// else it asks for a new round. One round runs at a time: a view that
// asks for a new one while an older one runs waits for that to end, and
// every view that waited shares the round that runs next. Views asked
// together by N browser tabs make one round (two when they find an older
// one running), not N, and rounds start at least minFlushGap apart.
//
// What a view shows is therefore what each node had counted when the
// round reached it, and the round started at most minFlushGap before the
// view asked: a view may miss what was counted in the last minFlushGap
// before it was asked, never anything older. An overview asked once
// delivery has stopped shows every delivery if it is asked minFlushGap
// later, or asked again (TestFlushRoundsReused; TestClusterView in
// test/durability polls). Sharing a round of any age, as singleflight
// would, could miss what was counted for as long as the round ran
// (peerTimeout and more).
//
// The zero value is ready to use.
type flushRounds struct {
	mu sync.Mutex
	// last is the latest round started; nil before the first.
	last *flushRound
	// next is the round not started yet that the views waiting now will
	// share; nil when none waits.
	next *flushRound
	// running is closed when the running round ends; nil when none runs.
	running chan struct{}
}

// flushRound is one flush of every node, shared by views.
type flushRound struct {
	started time.Time     // on the Steady clock
	done    chan struct{} // closed when nodes is set
	nodes   []NodeStatus
	views   int // how many views asked for it; read under flushRounds.mu
}

// do returns the nodes' statuses of a round of flush that started less
// than minFlushGap before do was called, on the steady clock, or after:
// the latest round if it is that recent, else a new one, which do runs if
// no round runs, else waits for the running one to end and the next to
// run. The view whose call runs the round runs it to the end even if its
// ctx ends (the others share it); a view whose ctx ends while waiting
// gets nil.
func (f *flushRounds) do(ctx context.Context, steady func() time.Time, flush func(context.Context) []NodeStatus) []NodeStatus {
	f.mu.Lock()
	var r *flushRound
	if f.last != nil && steady().Sub(f.last.started) < minFlushGap {
		r = f.last
	} else {
		if f.next == nil {
			f.next = &flushRound{done: make(chan struct{})}
		}
		r = f.next
	}
	r.views++
	for {
		if f.next == r && f.running == nil {
			running := make(chan struct{})
			r.started = steady()
			f.next, f.last, f.running = nil, r, running
			f.mu.Unlock()
			r.nodes = flush(context.WithoutCancel(ctx))
			close(r.done)
			f.mu.Lock()
			f.running = nil
			f.mu.Unlock()
			close(running)
			return r.nodes
		}
		// r runs, or waits for another round to end: wait for r's end,
		// or for the other round's to start r.
		running := f.running
		f.mu.Unlock()
		select {
		case <-r.done:
			return r.nodes
		case <-running:
		case <-ctx.Done():
			return nil
		}
		f.mu.Lock()
	}
}

// nodeEvents is GET /api/v1/sources/{name}/events?local=1: the node's
// part of the debugger, the outcomes of other nodes' events included.
func (h *handler) nodeEvents(name string) debugger.NodeEvents {
	return debugger.NodeEvents{Events: h.Debugger.Events(name), Outcomes: h.Debugger.Outcomes(name)}
}

// clusterEvents merges every node's kept events of source name.
func (h *handler) clusterEvents(ctx context.Context, name string) ([]debugger.Event, []NodeStatus) {
	parts, nodes := gather(ctx, h, http.MethodGet, "/api/v1/sources/"+url.PathEscape(name)+"/events", nil,
		func() (debugger.NodeEvents, error) { return h.nodeEvents(name), nil })
	lists := make([]debugger.NodeEvents, len(parts))
	for i, p := range parts {
		lists[i] = p.v
		lists[i].Node = p.node
	}
	return debugger.MergeEvents(lists), nodes
}

// nodeUpdate is one item of a node's feed in a merged stream, or (status
// set) a change of the node's reachability.
type nodeUpdate struct {
	node   string
	u      debugger.Update
	status *NodeStatus
}

// clusterStream serves the merged event stream of source name: this
// node's feed and every other live node's (its stream with local=1,
// subscribed before it answers, so a node reported reachable misses
// nothing after),
// through a debugger.Merge. A node lost is retried every peerRefresh, and
// nodes that join are followed from then on. Each change in the nodes
// reachable is sent as a "nodes" event.
func (h *handler) clusterStream(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, name string, feed <-chan debugger.Update) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	updates := make(chan nodeUpdate, 256)
	following := map[int64]context.CancelFunc{}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	statuses := map[int64]NodeStatus{}
	list := func() []NodeStatus {
		l := make([]NodeStatus, 0, len(statuses))
		for _, s := range statuses {
			l = append(l, s)
		}
		sort.Slice(l, func(i, j int) bool { return l[i].ID < l[j].ID })
		return l
	}
	self := "this node"
	// refresh follows the nodes that joined and drops those that left; it
	// reports whether the statuses changed.
	refresh := func() bool {
		before := list()
		ps := h.peers(ctx)
		seen := map[int64]bool{}
		for _, p := range ps {
			seen[p.ID] = true
			if p.Self {
				self = p.Name
				statuses[p.ID] = NodeStatus{ID: p.ID, Name: p.Name, Self: true, Reachable: true}
				continue
			}
			if _, ok := following[p.ID]; ok {
				continue
			}
			if why := p.unreachable(); why != "" {
				statuses[p.ID] = NodeStatus{ID: p.ID, Name: p.Name, Error: why}
				continue
			}
			fctx, fcancel := context.WithCancel(ctx)
			following[p.ID] = fcancel
			wg.Go(func() { h.follow(fctx, p, name, updates) })
		}
		for id, fcancel := range following {
			if !seen[id] {
				fcancel()
				delete(following, id)
			}
		}
		for id := range statuses {
			if !seen[id] {
				delete(statuses, id)
			}
		}
		return !slices.Equal(before, list())
	}
	refresh()
	send := func(kind string, id int, v any) bool {
		data, err := json.Marshal(v)
		if err != nil {
			return true
		}
		if _, err := fmt.Fprintf(w, "event: %s\nid: %d\ndata: %s\n\n", kind, id, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	sendNodes := func() bool { return send("nodes", 0, list()) }
	if !sendNodes() {
		return
	}
	merge := debugger.NewMerge(debugger.Size)
	seq := 0
	beat := time.NewTicker(h.Heartbeat)
	defer beat.Stop()
	tick := time.NewTicker(peerRefresh)
	defer tick.Stop()
	for {
		var nu nodeUpdate
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
			continue
		case <-tick.C:
			if refresh() && !sendNodes() {
				return
			}
			continue
		case u := <-feed:
			nu = nodeUpdate{node: self, u: u}
		case nu = <-updates:
		}
		if nu.status != nil {
			if old, ok := statuses[nu.status.ID]; ok && old == *nu.status {
				continue
			}
			statuses[nu.status.ID] = *nu.status
			if !nu.status.Reachable {
				// Followed again at the next refresh.
				if fcancel := following[nu.status.ID]; fcancel != nil {
					fcancel()
					delete(following, nu.status.ID)
				}
			}
			if !sendNodes() {
				return
			}
			continue
		}
		out, ok := merge.Add(nu.node, nu.u)
		if !ok {
			continue
		}
		seq++
		if !send(out.Kind, seq, out.Event) {
			return
		}
	}
}

// follow reads p's own event stream of source name into updates, with a
// status when it connects and when it is lost, until ctx ends or the
// stream ends.
func (h *handler) follow(ctx context.Context, p Peer, name string, updates chan<- nodeUpdate) {
	status := func(err error) {
		s := NodeStatus{ID: p.ID, Name: p.Name, Reachable: err == nil}
		if err != nil {
			s.Error = err.Error()
		}
		select {
		case updates <- nodeUpdate{status: &s}:
		case <-ctx.Done():
		}
	}
	req, err := h.peerRequest(ctx, p, http.MethodGet, "/api/v1/sources/"+url.PathEscape(name)+"/events/stream", nil)
	if err != nil {
		status(err)
		return
	}
	req.Header.Set("Accept", "text/event-stream")
	res, err := h.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			status(fmt.Errorf("unreachable: %w", err))
		}
		return
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		status(fmt.Errorf("answered %s", res.Status))
		return
	}
	if err := checkNode(p, res); err != nil {
		status(err)
		return
	}
	status(nil)
	// A node that stops sending (hung, or cut off) is noticed by its
	// missing heartbeats.
	idle := &idleReader{r: res.Body, d: 3 * h.Heartbeat, t: time.AfterFunc(3*h.Heartbeat, func() { res.Body.Close() })}
	defer idle.t.Stop()
	err = readSSE(idle, func(kind string, data []byte) error {
		if kind != "event" && kind != "outcome" {
			return nil
		}
		var ev debugger.Event
		if err := json.Unmarshal(data, &ev); err != nil {
			return fmt.Errorf("unreadable %s: %w", kind, err)
		}
		select {
		case updates <- nodeUpdate{node: p.Name, u: debugger.Update{Kind: kind, Event: ev}}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		err = fmt.Errorf("the stream ended")
	}
	status(fmt.Errorf("lost: %w", err))
}

// idleReader closes a stream (through t) when nothing came for d.
type idleReader struct {
	r io.Reader
	d time.Duration
	t *time.Timer
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.t.Reset(ir.d)
	}
	return n, err
}
