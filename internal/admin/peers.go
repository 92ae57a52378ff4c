package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Peer is a node of the cluster as Options.Peers lists it.
type Peer struct {
	ID   int64
	Name string
	// AdminURL is where the node's admin API answers (http://host:port);
	// "" when it advertised none.
	AdminURL string
	// Live is false for a node whose heartbeats stopped.
	Live bool
	// Self marks the node serving the request.
	Self bool
}

// NodeStatus says whether a node's part is in a cluster-wide answer: the
// "nodes" list of the overview, series, issues, destinations, queues and
// debugger routes in a cluster.
type NodeStatus struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Self      bool   `json:"self,omitempty"`
	Reachable bool   `json:"reachable"`
	// Error says why the node's part is missing.
	Error string `json:"error,omitempty"`
}

// Bounds on the calls a node makes to the others' admin APIs.
const (
	// peerTimeout bounds one call for a node's part, the connection, the
	// request and the whole answer: a node that does not answer in time
	// is shown unreachable and the view is served without it.
	peerTimeout = 3 * time.Second
	// peerConcurrency bounds the calls one request makes at a time.
	peerConcurrency = 8
	// peerMaxBody bounds a node's answer: 500 debugger events of the
	// largest events the tracking API takes fit.
	peerMaxBody = 64 << 20
	// peerMaxSSE bounds one line of a node's event stream: one event.
	peerMaxSSE = 8 << 20
	// peerRefresh is how often a merged event stream looks for nodes that
	// joined or left, and reconnects to a node it lost.
	peerRefresh = 2 * time.Second
)

// localParam marks a request from another node for this node's own part:
// it is answered from this node alone, never asked of the others, so that
// a cluster-wide view cannot loop.
const localParam = "local"

// clusterWide reports whether r asks for the whole cluster: the node is in
// one and r is not another node asking for its own part.
func (h *handler) clusterWide(r *http.Request) bool {
	return h.Peers != nil && r.URL.Query().Get(localParam) != "1"
}

func newPeerClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:           (&net.Dialer{Timeout: peerTimeout, KeepAlive: 30 * time.Second}).DialContext,
		ResponseHeaderTimeout: peerTimeout,
		MaxIdleConnsPerHost:   peerConcurrency,
		MaxConnsPerHost:       2 * peerConcurrency,
		IdleConnTimeout:       time.Minute,
	}}
}

// peers lists the nodes to ask, this one first. When the list cannot be
// read (the database is down), the view is this node's alone, said so by
// a status of its own.
func (h *handler) peers(ctx context.Context) []Peer {
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	ps, err := h.Peers(ctx)
	if err != nil {
		h.Logger.Warn("list the cluster's nodes; serving this node's part alone", "err", err)
		return []Peer{{Self: true, Live: true, Name: "this node"}}
	}
	out := make([]Peer, 1, len(ps)+1)
	// A node whose row is gone (dead for an hour, as the others saw it)
	// still answers for itself.
	out[0] = Peer{Self: true, Live: true, Name: "this node"}
	for _, p := range ps {
		if p.Self {
			out[0] = p
		} else {
			out = append(out, p)
		}
	}
	return out
}

// unreachable says why p cannot be asked, "" when it can.
func (p Peer) unreachable() string {
	switch {
	case !p.Live:
		return "no heartbeat: the node is down"
	case p.AdminURL == "":
		return "the node advertises no admin URL"
	}
	return ""
}

// gather answers a cluster-wide view: local for this node, and for every
// other node its answer to method path with local=1 (the admin token
// sent along), decoded into a T. Nodes are asked at most peerConcurrency
// at a time, each within peerTimeout; one that is down or fails is
// reported unreachable and left out of parts. parts and nodes are in the
// order of the node list, this node first.
func gather[T any](ctx context.Context, h *handler, method, path string, query url.Values, local func() (T, error)) (parts []namedPart[T], nodes []NodeStatus) {
	ps := h.peers(ctx)
	nodes = make([]NodeStatus, len(ps))
	got := make([]*T, len(ps))
	sem := make(chan struct{}, peerConcurrency)
	var wg sync.WaitGroup
	for i, p := range ps {
		nodes[i] = NodeStatus{ID: p.ID, Name: p.Name, Self: p.Self}
		if p.Self {
			// Alongside the others' calls, not before them.
			wg.Go(func() {
				v, err := local()
				if err != nil {
					nodes[i].Error = err.Error()
					return
				}
				got[i], nodes[i].Reachable = &v, true
			})
			continue
		}
		if why := p.unreachable(); why != "" {
			nodes[i].Error = why
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var v T
			if err := h.ask(ctx, p, method, path, query, &v); err != nil {
				nodes[i].Error = err.Error()
				return
			}
			got[i], nodes[i].Reachable = &v, true
		})
	}
	wg.Wait()
	for i, v := range got {
		if v != nil {
			parts = append(parts, namedPart[T]{node: ps[i].Name, v: *v})
		}
	}
	return parts, nodes
}

// namedPart is one node's part of a view.
type namedPart[T any] struct {
	node string
	v    T
}

// peerRequest builds the request for p's own part of path.
func (h *handler) peerRequest(ctx context.Context, p Peer, method, path string, query url.Values) (*http.Request, error) {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set(localParam, "1")
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(p.AdminURL, "/")+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if h.Token != "" {
		// The nodes of a cluster share admin_token.
		req.Header.Set("Authorization", "Bearer "+h.Token)
	}
	return req, nil
}

// ask makes one call for p's part and decodes its JSON answer into v.
func (h *handler) ask(ctx context.Context, p Peer, method, path string, query url.Values, v any) error {
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	req, err := h.peerRequest(ctx, p, method, path, query)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	res, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("unreachable: %w", err)
	}
	defer res.Body.Close()
	body := io.LimitReader(res.Body, peerMaxBody)
	if err := checkNode(p, res); err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.NewDecoder(body).Decode(&e)
		return fmt.Errorf("answered %s: %s", res.Status, e.Error)
	}
	if err := json.NewDecoder(body).Decode(v); err != nil {
		return fmt.Errorf("unreadable answer: %w", err)
	}
	return nil
}

// flushCluster makes every live node write its in-memory stats to the
// database the nodes share, this one included, so that what the database
// holds is what every node counted up to now: the figures read next agree
// from whichever node serves them. A node that cannot be asked loses
// nothing but the freshness of its last few seconds.
func (h *handler) flushCluster(ctx context.Context) []NodeStatus {
	_, nodes := gather(ctx, h, http.MethodPost, "/api/v1/stats/flush", nil, func() (struct{}, error) {
		return struct{}{}, h.Stats.Flush()
	})
	return nodes
}

// flush is POST /api/v1/stats/flush: this node writes its in-memory stats
// now (another node asks before a cluster-wide view).
func (h *handler) flush(w http.ResponseWriter, r *http.Request) {
	if err := h.Stats.Flush(); err != nil {
		h.Logger.Error("flush stats", "err", err)
		writeError(w, http.StatusServiceUnavailable, "writing the stats failed; see the server log")
		return
	}
	writeJSON(w, struct{}{})
}

// readSSE reads a stream of server-sent events from r and calls fn with
// each event's name ("message" when it has none) and data, until r ends,
// a line is longer than peerMaxSSE or fn fails. Comments and fields other
// than event and data are skipped. fn must not keep data.
func readSSE(r io.Reader, fn func(kind string, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), peerMaxSSE)
	kind := "message"
	var data []byte
	has := false
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 {
			if has {
				if err := fn(kind, data); err != nil {
					return err
				}
			}
			kind, data, has = "message", data[:0], false
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, val, _ := bytes.Cut(line, []byte(":"))
		val = bytes.TrimPrefix(val, []byte(" "))
		switch string(field) {
		case "event":
			kind = string(val)
		case "data":
			if has {
				data = append(data, '\n')
			}
			data = append(data, val...)
			has = true
		}
	}
	return sc.Err()
}
