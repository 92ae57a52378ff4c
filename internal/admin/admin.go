// Package admin serves fanout's admin API on admin_listen: JSON views of
// the configuration, the delivery overview and issues, the queues, the live
// debugger as server-sent events, Prometheus metrics at /metrics and
// profiles at /debug/pprof, and the web UI built on them at /.
//
// Routes (GET unless marked):
//
//	/                                     the web UI (see ui.go), never behind the token
//	/healthz                              "ok", never behind the token
//	/api/v1/sources                       configured sources and their destinations
//	/api/v1/destinations                  destinations: type, sources, settings (secrets redacted), queue state
//	/api/v1/destination-types             each integration's settings schema, secrets marked
//	/api/v1/overview?source=&destination=&from=&to=|range=   delivery counts and latency
//	/api/v1/series?source=&destination=&from=&to=|range=&step=   the overview's counts and latency per step (default 1m)
//	/api/v1/issues?source=&destination=&from=&to=|range=     failures grouped by reason, with samples
//	/api/v1/queues                        every queue's scheduling state
//	/api/v1/storage                       free disk space, the reserve, the ballast, whether events are refused
//	/api/v1/sources/{name}/events         the debugger's last events of a source
//	/api/v1/sources/{name}/events/stream  server-sent events: new events ("event") and outcome changes ("outcome")
//	/api/v1/cluster                       the cluster's nodes, whether their pipelines differ (404 without storage.postgres)
//	POST /api/v1/replay?source=&destination=&from=&to=|range=   re-deliver archived events
//	POST /api/v1/stats/flush              write this node's in-memory stats now
//	/metrics                              Prometheus, this node's alone
//	/debug/pprof/...                      net/http/pprof
//
// In a cluster (Options.Peers) the overview, series, issues, destinations,
// queues and the debugger's routes answer for every node, whichever node
// serves them, and list the nodes' statuses ("nodes", or the Fanout-Nodes
// header on the routes that answer an array); with local=1 they answer for
// the serving node alone. See cluster.go.
//
// When a token is configured every route but /healthz and the UI's files
// requires "Authorization: Bearer <token>". The UI's files hold no data:
// the page asks for the token and sends it with its API requests.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/debugger"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/redact"
	"github.com/fanout/fanout/internal/stats"
)

// Options configures the admin handler. Config, Registry, State, Stats and
// Debugger are required.
type Options struct {
	Config   *config.Config
	Registry destinations.Registry
	// State returns the delivery engine's state (delivery.Engine.State).
	State    func(ctx context.Context) []delivery.DestinationState
	Stats    *stats.Stats
	Debugger *debugger.Debugger
	// Metrics, when set, is served at /metrics.
	Metrics *Metrics
	// Replay re-delivers the archived events of one (source, destination)
	// received in [from, to) and returns how many it queued. When nil,
	// POST /api/v1/replay answers 501.
	Replay func(ctx context.Context, source, destination string, from, to time.Time) (int, error)
	// Storage, when set, returns the disk space state served at
	// GET /api/v1/storage (a diskspace.State).
	Storage func() any
	// Cluster, when set, returns the cluster view served at
	// GET /api/v1/cluster: the nodes sharing the database, their last
	// heartbeat, their partitions and their pipeline digests, and whether
	// those differ. Without it (no storage.postgres) the route answers
	// 404.
	Cluster func(ctx context.Context) (any, error)
	// Peers, when set, lists the nodes of the cluster, this one marked
	// Self: the overview, series, issues, destinations, queues and
	// debugger routes then answer for the whole cluster (see cluster.go).
	// Without it they answer for this node alone.
	Peers func(ctx context.Context) ([]Peer, error)
	// NodeID, in a cluster, is this node's id (cluster.Node.ID): every
	// answer carries it in the Fanout-Node header, so that a node asking
	// another for its part can tell it reached the node it meant.
	NodeID int64
	// Delivers, in a cluster, reports whether this node owns the
	// partition of a destination now: whether it is the one delivering it.
	Delivers func(destination string) bool
	// Token, when not empty, is required as a bearer token.
	Token string
	// Clock is the time ranges end at (Now) and the cluster-wide views'
	// flush rounds are spaced on (Steady). Default clock.Real.
	Clock clock.Clock
	// Heartbeat is how often an idle event stream sends a comment, so that
	// proxies keep it open. Default 15 s.
	Heartbeat time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

type handler struct {
	Options
	mux *http.ServeMux
	// client calls the other nodes' admin APIs (Peers).
	client *http.Client
	// flushes are the cluster-wide views' flush rounds (cluster.go).
	flushes flushRounds
}

// New returns the admin API handler.
func New(o Options) http.Handler {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &handler{Options: o, mux: http.NewServeMux(), client: newPeerClient()}
	m := h.mux
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	m.HandleFunc("GET /api/v1/sources", h.sources)
	m.HandleFunc("GET /api/v1/destinations", h.destinations)
	m.HandleFunc("GET /api/v1/destination-types", h.destinationTypes)
	m.HandleFunc("GET /api/v1/overview", h.overview)
	m.HandleFunc("GET /api/v1/series", h.series)
	m.HandleFunc("GET /api/v1/issues", h.issues)
	m.HandleFunc("GET /api/v1/queues", h.queues)
	m.HandleFunc("POST /api/v1/replay", h.replay)
	m.HandleFunc("POST /api/v1/stats/flush", h.flush)
	if o.Storage != nil {
		m.HandleFunc("GET /api/v1/storage", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, o.Storage()) })
	}
	m.HandleFunc("GET /api/v1/cluster", h.cluster)
	m.HandleFunc("GET /api/v1/sources/{name}/events", h.events)
	m.HandleFunc("GET /api/v1/sources/{name}/events/stream", h.stream)
	if o.Metrics != nil {
		m.Handle("GET /metrics", o.Metrics.Handler())
	}
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m.Handle("GET /{$}", uiHandler)
	m.Handle("GET /assets/", uiHandler)
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.NodeID != 0 {
		w.Header().Set(nodeHeader, strconv.FormatInt(h.NodeID, 10))
	}
	if h.Token != "" && !public(r) && !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fanout admin"`)
		writeError(w, http.StatusUnauthorized, "expected Authorization: Bearer <admin_token>")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// public reports whether r asks for what is served without the token:
// /healthz and the UI's files.
func public(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	p := r.URL.Path
	if p != path.Clean(p) {
		return false // the mux redirects it to its clean form, which is checked again
	}
	return p == "/healthz" || p == "/" || strings.HasPrefix(p, "/assets/")
}

// authorized compares digests of the tokens in constant time, so that
// neither the token's bytes nor its length leak through timing.
func (h *handler) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return false
	}
	got := sha256.Sum256([]byte(auth[len(prefix):]))
	want := sha256.Sum256([]byte(h.Token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Source is one configured source in /api/v1/sources.
type Source struct {
	Name         string   `json:"name"`
	Destinations []string `json:"destinations"`
}

func (h *handler) sources(w http.ResponseWriter, r *http.Request) {
	out := []Source{}
	for _, s := range h.Config.Sources {
		src := Source{Name: s.Name, Destinations: []string{}}
		for _, d := range h.Config.Destinations {
			for _, n := range d.Sources {
				if n == s.Name {
					src.Destinations = append(src.Destinations, d.Name)
					break
				}
			}
		}
		out = append(out, src)
	}
	writeJSON(w, out)
}

// Destination is one configured destination in /api/v1/destinations.
type Destination struct {
	Name     string         `json:"name"`
	Type     string         `json:"type"`
	Sources  []string       `json:"sources"`
	Settings map[string]any `json:"settings"`
	Delivery Delivery       `json:"delivery"`
	State    *State         `json:"state,omitempty"`
}

// Delivery are a destination's delivery settings.
type Delivery struct {
	Concurrency int     `json:"concurrency"`
	RateLimit   float64 `json:"rate_limit"`
	RetryWindow string  `json:"retry_window"`
	Timeout     string  `json:"timeout"`
}

// State is a destination's scheduler state.
type State struct {
	Name        string       `json:"name"`
	InFlight    int          `json:"in_flight"`
	Concurrency int          `json:"concurrency"`
	CircuitOpen bool         `json:"circuit_open"`
	ProbeAt     *time.Time   `json:"probe_at,omitempty"`
	Queues      []QueueState `json:"queues"`
	// StoreWaitSince, when set, is when the destination's scheduler began
	// the job store call it still waits in (an outcome write or a read):
	// it sends nothing more until the store answers. In a cluster-wide
	// view, the earliest of the nodes'.
	StoreWaitSince *time.Time `json:"store_wait_since,omitempty"`
	// Stale says the scheduler did not answer in time: the figures are
	// its last snapshot, taken at TakenAt (absent when none was taken),
	// not its state now (delivery.DestinationState.Stale). In a
	// cluster-wide view, any node's.
	Stale   bool       `json:"stale,omitempty"`
	TakenAt *time.Time `json:"taken_at,omitempty"`
	// Owned, in a node's own answer in a cluster (local=1), says the node
	// owns the destination's partition: it is the node delivering it.
	Owned bool `json:"owned,omitempty"`
	// Nodes, in a cluster-wide view, are the nodes delivering the
	// destination or holding its queues: its partition's owner, and for a
	// moment during a hand-over the previous one.
	Nodes []NodeState `json:"nodes,omitempty"`
}

// QueueState is one (source, destination) queue's state.
type QueueState struct {
	Source string `json:"source"`
	// Buffered jobs are loaded and waiting to be sent.
	Buffered int `json:"buffered"`
	// Backlog says more pending jobs wait on disk.
	Backlog  bool    `json:"backlog"`
	InFlight int     `json:"in_flight"`
	Limit    float64 `json:"limit"`
	// Depth is every job of the queue made and not ended yet: loaded, in
	// flight, waiting on disk or waiting for a retry (from stats).
	Depth int64 `json:"depth"`
	// OldestAgeSeconds is how long ago the oldest job the queue has loaded
	// was received; 0 when it has none loaded.
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// PendingRetry are the jobs in the retry set (from stats).
	PendingRetry int64      `json:"pending_retry"`
	PausedUntil  *time.Time `json:"paused_until,omitempty"`
	// PauseReason says why the queue is paused until PausedUntil:
	// "retry-after", "throttled", "quota" or "holds-full"
	// (delivery.QueueState.PauseReason).
	PauseReason string     `json:"pause_reason,omitempty"`
	RetryNext   *time.Time `json:"retry_next,omitempty"`
	Throttled   int        `json:"throttled"`
	// Held jobs wait behind users the destination throttles alone, Holds
	// of them.
	Held  int `json:"held"`
	Holds int `json:"holds"`
	// Nodes, in a cluster-wide view, are the nodes holding the queue's
	// jobs in their schedulers.
	Nodes []string `json:"nodes,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// localState is this node's state of every destination: its schedulers,
// and the depth and pending retries its stats count.
func (h *handler) localState(ctx context.Context) map[string]*State {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out := map[string]*State{}
	for _, d := range h.State(ctx) {
		pending := h.Stats.PendingRetry(d.Name)
		depth := h.Stats.Depth(d.Name)
		now := h.Clock.Now()
		st := &State{Name: d.Name, InFlight: d.InFlight, Concurrency: d.Concurrency,
			CircuitOpen: d.CircuitOpen, ProbeAt: timePtr(d.ProbeAt), Queues: []QueueState{},
			StoreWaitSince: timePtr(d.StoreWaitSince), Stale: d.Stale}
		if d.Stale {
			st.TakenAt = timePtr(d.At)
		}
		if h.Delivers != nil {
			st.Owned = h.Delivers(d.Name)
		}
		seen := map[string]bool{}
		for _, q := range d.Queues {
			seen[q.Queue.Source] = true
			age := 0.0
			if !q.Oldest.IsZero() {
				age = max(now.Sub(q.Oldest).Seconds(), 0)
			}
			st.Queues = append(st.Queues, QueueState{
				Source: q.Queue.Source, Buffered: q.Buffered, Backlog: q.Backlog, InFlight: q.InFlight,
				Limit: q.Limit, Depth: max(depth[q.Queue.Source], int64(q.Buffered+q.InFlight)),
				OldestAgeSeconds: age, PendingRetry: pending[q.Queue.Source], PausedUntil: timePtr(q.PausedUntil),
				PauseReason: q.PauseReason, RetryNext: timePtr(q.RetryNext), Throttled: q.Throttled,
				Held: q.Held, Holds: q.Holds,
			})
		}
		// A queue idle in the scheduler may still hold retries on disk.
		for src, n := range pending {
			if !seen[src] && n > 0 {
				st.Queues = append(st.Queues, QueueState{Source: src, PendingRetry: n, Depth: max(depth[src], n)})
			}
		}
		sort.Slice(st.Queues, func(i, j int) bool { return st.Queues[i].Source < st.Queues[j].Source })
		out[d.Name] = st
	}
	return out
}

func (h *handler) destinations(w http.ResponseWriter, r *http.Request) {
	states, nodes := h.states(r)
	out := []Destination{}
	for _, d := range h.Config.Destinations {
		var schema destinations.Schema
		if in := h.Registry[d.Type]; in != nil {
			schema = in.Settings
		}
		out = append(out, Destination{
			Name: d.Name, Type: d.Type, Sources: append([]string{}, d.Sources...),
			Settings: redact.Settings(schema, d.Settings),
			Delivery: Delivery{
				Concurrency: d.Delivery.Concurrency, RateLimit: d.Delivery.RateLimit,
				RetryWindow: d.Delivery.RetryWindow.String(), Timeout: d.Delivery.Timeout.String(),
			},
			State: states[d.Name],
		})
	}
	if nodes != nil {
		w.Header().Set(nodesHeader, nodesValue(nodes))
	}
	writeJSON(w, out)
}

func (h *handler) cluster(w http.ResponseWriter, r *http.Request) {
	if h.Cluster == nil {
		writeError(w, http.StatusNotFound, "not in a cluster: storage.postgres is not set")
		return
	}
	v, err := h.Cluster(r.Context())
	if err != nil {
		h.Logger.Error("cluster view", "err", err)
		writeError(w, http.StatusServiceUnavailable, "cluster view unavailable: "+err.Error())
		return
	}
	writeJSON(w, v)
}

func (h *handler) queues(w http.ResponseWriter, r *http.Request) {
	states, nodes := h.states(r)
	out := []*State{}
	for _, s := range states {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if nodes != nil {
		w.Header().Set(nodesHeader, nodesValue(nodes))
	}
	writeJSON(w, out)
}

// DestinationType is one integration in /api/v1/destination-types.
type DestinationType struct {
	Type string `json:"type"`
	// EventTypes it takes; empty means all.
	EventTypes []string            `json:"event_types"`
	Settings   destinations.Schema `json:"settings"`
}

func (h *handler) destinationTypes(w http.ResponseWriter, r *http.Request) {
	out := []DestinationType{}
	for _, in := range h.Registry {
		out = append(out, DestinationType{Type: in.Type, EventTypes: append([]string{}, in.EventTypes...), Settings: in.Settings})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	writeJSON(w, out)
}

// filter reads source, destination and the time range of a query: from
// and to (RFC 3339), or range (10m, 1h, 24h, 7d: any Go duration, or a
// number of days) ending now. The default is the last 24 hours.
func (h *handler) filter(r *http.Request) (stats.Filter, error) {
	q := r.URL.Query()
	f := stats.Filter{Source: q.Get("source"), Destination: q.Get("destination"), To: h.Clock.Now()}
	if v := q.Get("to"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return f, fmt.Errorf("to: expected an RFC 3339 time, found %q", v)
		}
		f.To = t
	}
	span := 24 * time.Hour
	if v := q.Get("range"); v != "" {
		d, err := parseRange(v)
		if err != nil {
			return f, err
		}
		span = d
	}
	f.From = f.To.Add(-span)
	if v := q.Get("from"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return f, fmt.Errorf("from: expected an RFC 3339 time, found %q", v)
		}
		f.From = t
	}
	if !f.From.Before(f.To) {
		return f, fmt.Errorf("expected from before to, found from %s and to %s", f.From.Format(time.RFC3339), f.To.Format(time.RFC3339))
	}
	return f, nil
}

func parseRange(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		if days, err := strconv.Atoi(n); err == nil && days > 0 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("range: expected a duration such as 10m, 1h, 24h or 7d, found %q", v)
	}
	return d, nil
}

// replay re-delivers archived events: POST /api/v1/replay?source=&
// destination=&from=&to= (or range=), answered with {"replayed": n}.
func (h *handler) replay(w http.ResponseWriter, r *http.Request) {
	if h.Replay == nil {
		writeError(w, http.StatusNotImplemented, "replay is not available on this server")
		return
	}
	f, err := h.filter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if f.Source == "" || f.Destination == "" {
		writeError(w, http.StatusBadRequest, "expected source and destination, the queue whose archive to replay")
		return
	}
	if !h.connected(f.Source, f.Destination) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no destination %q connected to source %q in the configuration", f.Destination, f.Source))
		return
	}
	n, err := h.Replay(r.Context(), f.Source, f.Destination, f.From, f.To)
	if err != nil {
		h.Logger.Error("replay", "source", f.Source, "destination", f.Destination, "err", err)
		writeError(w, http.StatusInternalServerError, "replay failed after queueing "+strconv.Itoa(n)+" events: "+err.Error())
		return
	}
	writeJSON(w, map[string]int{"replayed": n})
}

// connected reports whether the configuration connects source to destination.
func (h *handler) connected(source, destination string) bool {
	for _, d := range h.Config.Destinations {
		if d.Name == destination {
			return slices.Contains(d.Sources, source)
		}
	}
	return false
}

func (h *handler) overview(w http.ResponseWriter, r *http.Request) {
	f, err := h.filter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	nodes := h.statsNodes(r)
	o, err := h.Stats.Overview(f)
	if err != nil {
		h.Logger.Error("read stats", "err", err)
		writeError(w, http.StatusInternalServerError, "reading the stats failed; see the server log")
		return
	}
	writeJSON(w, struct {
		stats.Overview
		Nodes []NodeStatus `json:"nodes,omitempty"`
	}{o, nodes})
}

// series answers the overview's counts and latency cut into steps of the
// step parameter (a Go duration of whole minutes; default 1m), for the
// UI's trend charts.
func (h *handler) series(w http.ResponseWriter, r *http.Request) {
	f, err := h.filter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	step := time.Minute
	if v := r.URL.Query().Get("step"); v != "" {
		if step, err = time.ParseDuration(v); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("step: expected a duration such as 1m, 5m or 1h, found %q", v))
			return
		}
	}
	nodes := h.statsNodes(r)
	sr, err := h.Stats.Series(f, step)
	if errors.Is(err, stats.ErrStep) {
		writeError(w, http.StatusBadRequest, "step: "+strings.TrimPrefix(err.Error(), stats.ErrStep.Error()+": "))
		return
	}
	if err != nil {
		h.Logger.Error("read stats", "err", err)
		writeError(w, http.StatusInternalServerError, "reading the stats failed; see the server log")
		return
	}
	writeJSON(w, struct {
		stats.Series
		Nodes []NodeStatus `json:"nodes,omitempty"`
	}{sr, nodes})
}

func (h *handler) issues(w http.ResponseWriter, r *http.Request) {
	f, err := h.filter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	nodes := h.statsNodes(r)
	is, err := h.Stats.Issues(f)
	if err != nil {
		h.Logger.Error("read issues", "err", err)
		writeError(w, http.StatusInternalServerError, "reading the issues failed; see the server log")
		return
	}
	out := map[string]any{"from": f.From, "to": f.To, "issues": is}
	if nodes != nil {
		out["nodes"] = nodes
	}
	writeJSON(w, out)
}

func (h *handler) source(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	for _, s := range h.Config.Sources {
		if s.Name == name {
			return name, true
		}
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no source is named %q", name))
	return "", false
}

func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	name, ok := h.source(w, r)
	if !ok {
		return
	}
	if h.clusterWide(r) {
		evs, nodes := h.clusterEvents(r.Context(), name)
		writeJSON(w, map[string]any{"source": name, "events": evs, "nodes": nodes})
		return
	}
	if h.Peers != nil {
		// Another node asks for this one's part.
		writeJSON(w, h.nodeEvents(name))
		return
	}
	writeJSON(w, map[string]any{"source": name, "events": h.Debugger.Events(name)})
}

// stream sends the source's new events and outcome changes as server-sent
// events: "event: event" or "event: outcome", data a debugger.Event as
// JSON. It lifts the admin server's write timeout for the connection,
// which is meant to stay open.
func (h *handler) stream(w http.ResponseWriter, r *http.Request) {
	name, ok := h.source(w, r)
	if !ok {
		return
	}
	// Subscribed before the answer starts: a client that sees the stream
	// open (another node merging it, say) misses no update after.
	feed, stop := h.Debugger.Subscribe(name)
	defer stop()
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": following source %s\n\n", name)
	if err := rc.Flush(); err != nil {
		return
	}
	if h.clusterWide(r) {
		h.clusterStream(w, r, rc, name, feed)
		return
	}
	// This node's own feed: in a cluster, another node merging it (the
	// outcomes of events this node did not take in included, Seq 0); on
	// its own, a client, to whom those mean nothing.
	alone := h.Peers == nil
	beat := time.NewTicker(h.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil {
				return
			}
		case u := <-feed:
			if alone && u.Event.Seq == 0 {
				continue
			}
			data, err := json.Marshal(u.Event)
			if err != nil {
				continue
			}
			if _, err := fmt.Fprintf(w, "event: %s\nid: %d\ndata: %s\n\n", u.Kind, u.Event.Seq, data); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
