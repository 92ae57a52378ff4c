package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// ServerOf returns the index, among servers, of the PostgreSQL server that
// holds destination's jobs, lease and fencing token when storage.postgres
// lists several: partition p lives on server p mod servers (see the
// package documentation, "Several servers").
func ServerOf(destination string, partitions, servers int) int {
	return PartitionOf(destination, partitions) % servers
}

// placeServer checks and defaults Server and Servers.
func (o *Options) placeServer() error {
	if o.Servers == 0 {
		o.Servers = 1
	}
	if o.Servers < 0 || o.Server < 0 || o.Server >= o.Servers {
		return fmt.Errorf("Server must be in [0, Servers), found %d of %d", o.Server, o.Servers)
	}
	if o.Servers > o.Partitions {
		return fmt.Errorf("Servers (%d) cannot be more than Partitions (%d): a server would hold no partition", o.Servers, o.Partitions)
	}
	return nil
}

// partitionsHere returns the partitions that live on this membership's
// server, in order.
func (o *Options) partitionsHere() []int {
	servers := max(o.Servers, 1)
	var ps []int
	for p := o.Server; p < o.Partitions; p += servers {
		ps = append(ps, p)
	}
	return ps
}

// checkPartitions compares the partitions a database holds (have, in
// order) with those that should live on it.
func (o *Options) checkPartitions(have []int) error {
	want := o.partitionsHere()
	if slices.Equal(have, want) {
		return nil
	}
	if o.Servers <= 1 && have[0] == 0 && have[len(have)-1] == len(have)-1 {
		// 0 to n-1: a cluster of one server with another count.
		return fmt.Errorf("the database's cluster has %d partitions, this node is configured with %d: every node must use the same count, and changing it needs every node stopped and the cluster_partitions table dropped", len(have), o.Partitions)
	}
	// The partitions of this database were laid out for another list of
	// servers. Taking the new layout would leave the jobs stored under the
	// old one with no owner: refuse.
	return fmt.Errorf("the database's cluster holds partitions %s, but as server %d of %d (of %d partitions) it should hold %s: every node must list the same servers in storage.postgres, in the same order; changing the list needs every node stopped, the jobs delivered and the cluster_partitions table dropped", spans(have), o.Server, o.Servers, o.Partitions, spans(want))
}

// spans abbreviates a list of partitions for an error message.
func spans(ps []int) string {
	if len(ps) <= 6 {
		return fmt.Sprint(ps)
	}
	return fmt.Sprintf("[%d %d %d ... %d] (%d)", ps[0], ps[1], ps[2], ps[len(ps)-1], len(ps))
}

// Group is a node's memberships of the clusters on several servers, one
// Node per entry of storage.postgres, Node i on server i leasing the
// partitions that live there. It is what the delivery engine follows
// (Owns, Changes, Wakeups) and what the admin API's cluster view reads.
// A server that is down stops only its own Node: its leases run out, the
// engine stops delivering its partitions, and the other Nodes carry on.
type Group struct {
	nodes      []*Node
	partitions int

	changes chan Change
	wakes   chan int
	cancel  context.CancelFunc
	fwd     sync.WaitGroup // forwarders of Changes
	wk      sync.WaitGroup // forwarders of Wakeups
	once    sync.Once
}

// NewGroup gathers nodes, Node i joined with Server i of len(nodes)
// Servers and the same partition count, and starts forwarding their
// changes and wake-ups. The Group owns the nodes from then on: Leave
// leaves them all.
func NewGroup(nodes []*Node) (*Group, error) {
	if len(nodes) == 0 {
		return nil, errors.New("cluster: a group needs at least one node")
	}
	for i, n := range nodes {
		if n.opts.Server != i || n.opts.Servers != len(nodes) || n.opts.Partitions != nodes[0].opts.Partitions {
			return nil, fmt.Errorf("cluster: node %d joined as server %d of %d with %d partitions, want server %d of %d with %d",
				i, n.opts.Server, n.opts.Servers, n.opts.Partitions, i, len(nodes), nodes[0].opts.Partitions)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Group{
		nodes:      nodes,
		partitions: nodes[0].opts.Partitions,
		changes:    make(chan Change),
		wakes:      make(chan int),
		cancel:     cancel,
	}
	for _, n := range nodes {
		g.fwd.Add(1)
		go func() {
			defer g.fwd.Done()
			// Unblocked by the consumer, who must keep reading; a Node's
			// relay never makes its heartbeat wait for that.
			for c := range n.Changes() {
				g.changes <- c
			}
		}()
		g.wk.Add(1)
		go func() {
			defer g.wk.Done()
			for {
				select {
				case p := <-n.Wakeups():
					select {
					case g.wakes <- p:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		g.fwd.Wait()
		close(g.changes)
	}()
	return g, nil
}

// Node returns the membership on server i.
func (g *Group) Node(i int) *Node { return g.nodes[i] }

// Partitions returns the cluster's partition count.
func (g *Group) Partitions() int { return g.partitions }

// ID returns the node's id on the first server, the one the cluster view
// calls self.
func (g *Group) ID() int64 { return g.nodes[0].ID() }

// Name returns the node's name, the same on every server.
func (g *Group) Name() string { return g.nodes[0].Name() }

// PartitionOf returns the partition of q in the cluster.
func (g *Group) PartitionOf(q jobstore.Queue) int {
	return PartitionOf(q.Destination, g.partitions)
}

// Owns reports whether the node owns partition p now, asking the
// membership of the server p lives on.
func (g *Group) Owns(p int) (int64, bool) {
	return g.nodes[p%len(g.nodes)].Owns(p)
}

// Drained tells the membership of the server p lives on that partition p,
// handed over under token, is drained (see Node.Drained).
func (g *Group) Drained(p int, token int64) {
	g.nodes[p%len(g.nodes)].Drained(p, token)
}

// Holds reports whether the node owns at least one partition of server i.
// The sharded job store lists the queues of a server that does not answer
// as none when the node holds none of its partitions (see
// shard.Options.Holds).
func (g *Group) Holds(i int) bool { return len(g.nodes[i].Owned()) > 0 }

// Owned returns the partitions the node owns now, on every server, in
// order.
func (g *Group) Owned() []int {
	var ps []int
	for _, n := range g.nodes {
		ps = append(ps, n.Owned()...)
	}
	slices.Sort(ps)
	return ps
}

// LeaseAge returns the oldest of the memberships' lease ages: the age of
// the last successful heartbeat on the server heard from least recently.
func (g *Group) LeaseAge() time.Duration {
	var age time.Duration
	for _, n := range g.nodes {
		age = max(age, n.LeaseAge())
	}
	return age
}

// Changes returns the partitions gained and lost on every server, each
// server's in the order they happened (partitions of different servers are
// independent). It is closed after Leave; the consumer must keep reading.
func (g *Group) Changes() <-chan Change { return g.changes }

// Wakeups returns the owned partitions with new jobs, from every server.
func (g *Group) Wakeups() <-chan int { return g.wakes }

// Leave leaves the cluster on every server at once (see Node.Leave).
func (g *Group) Leave(ctx context.Context) error {
	var err error
	g.once.Do(func() {
		g.cancel()
		g.wk.Wait()
		errs := make([]error, len(g.nodes))
		var wg sync.WaitGroup
		for i, n := range g.nodes {
			wg.Go(func() { errs[i] = n.Leave(ctx) })
		}
		wg.Wait()
		err = errors.Join(errs...)
	})
	return err
}

// Nodes returns the cluster view across the servers: the nodes as the
// first server lists them, each with the partitions it holds on every
// server that answers. A node is matched across servers by its name and
// liveness (a node uses one name everywhere; a dead incarnation under the
// same name holds no lease). A node seen on another server only (it could
// not register on the first) is listed with that server's id. A server
// other than the first that does not answer leaves its partitions out:
// nobody can hold them while it is down.
func (g *Group) Nodes(ctx context.Context) ([]NodeInfo, error) {
	views := make([][]NodeInfo, len(g.nodes))
	errs := make([]error, len(g.nodes))
	var wg sync.WaitGroup
	for i, n := range g.nodes {
		wg.Go(func() { views[i], errs[i] = n.Nodes(ctx) })
	}
	wg.Wait()
	if errs[0] != nil {
		return nil, errs[0]
	}
	out := views[0]
	for i := 1; i < len(views); i++ {
		if errs[i] != nil {
			g.nodes[i].log.Debug("cluster view: server not answering; its partitions left out", "server", i, "err", errs[i])
			continue
		}
		for _, ni := range views[i] {
			j := slices.IndexFunc(out, func(o NodeInfo) bool { return o.Name == ni.Name && o.Live == ni.Live })
			if j < 0 {
				out = append(out, ni)
				continue
			}
			out[j].Partitions = append(out[j].Partitions, ni.Partitions...)
			slices.Sort(out[j].Partitions)
		}
	}
	return out, nil
}
