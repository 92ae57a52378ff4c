package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/jobstore"
)

// Defaults of Options.
const (
	DefaultPartitions = 64
	DefaultHeartbeat  = time.Second
	DefaultLease      = 5 * time.Second
)

// Options configures a Node. Pool is required; every other field has a
// default.
type Options struct {
	// Pool is the database the nodes share. Required. The node holds one of
	// its connections for LISTEN and uses another for a moment at each
	// heartbeat; it does not close the pool.
	Pool *pgxpool.Pool
	// NodeName names the node in the cluster view (cluster.node_name).
	// Default: the host name and a random suffix. Names are for people:
	// the node is identified by the id it gets at Join, so a node restarted
	// under the same name is a new member.
	NodeName string
	// AdminURL is where the other nodes reach this node's admin API
	// (http://host:port), listed by Nodes: the admin API of any node
	// gathers the live state of every node through it. Default "": the
	// node is listed without one, and the others cannot ask it.
	AdminURL string
	// Pipeline is the digest of the pipeline the node runs
	// (Pipeline.Digest), stored in its row on every server it joins, and
	// compared at every Heartbeat with the live nodes' (PipelineDiffers).
	// Default "": the node's pipeline is unknown to the others, and it
	// compares nothing.
	Pipeline string
	// Machine identifies the cores the node runs on (cores.Machine),
	// stored in its row: nodes with the same Machine share them. Default
	// "": the node is counted alone.
	Machine string
	// Colocated, when set, is called with the number of live nodes on
	// this node's Machine, itself included, at Join and whenever that
	// number changes (read every Heartbeat, on the first server only): the
	// node's share of the machine's cores (cores.Share). Default nil.
	Colocated func(nodes int)
	// Partitions is the fixed number of partitions the queues map to.
	// Default 64. Every node of a cluster must use the same number: Join
	// refuses a number other than the one in the database.
	Partitions int
	// Server and Servers place the membership when storage.postgres lists
	// several servers: it is the membership on the server at index Server
	// of a list of Servers, and leases only the partitions that live there
	// (p mod Servers = Server, see ServerOf). Default 0 of 1: every
	// partition, on the one server.
	Server, Servers int
	// Heartbeat is how often the node renews its leases and rebalances.
	// Default 1s.
	Heartbeat time.Duration
	// Lease is how long a partition stays owned without a renewal, and how
	// long a node stays live without a heartbeat. Default 5s. Must be at
	// least twice Heartbeat. A dead node's partitions are taken over
	// within Lease plus one Heartbeat.
	Lease time.Duration
	// Margin is how long before its lease runs out, measured on the node's
	// own monotonic clock from the moment it sent the last renewal, the
	// node stops delivering a partition it could not renew. Default
	// Lease/5. Must be less than Lease minus Heartbeat.
	Margin time.Duration
	// Grace is how long a planned handover (rebalancing) waits for the
	// engine to finish the requests it has in flight on a partition it
	// gives up, and write their outcomes under the lease, before releasing
	// the lease anyway (Drained ends the wait sooner). Default Lease/2, and
	// must be less than Lease: the partition pauses for at most the grace
	// (then a takeover of a few milliseconds), and a planned move must
	// pause it less than the one Lease asked. Half a Lease is long past
	// what a destination that answers at all takes; a request still in
	// flight then is most likely hung until its client's timeout, and is
	// left to the fencing: its outcome is refused and the new owner sends
	// its jobs again, as after a death.
	Grace time.Duration
	// Clock decides the local expiry of leases and paces the heartbeats.
	// Default the wall clock. The database's clock decides the leases
	// themselves.
	Clock clock.Clock
	// Logger receives membership and ownership changes. Default
	// slog.Default().
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Pool == nil {
		return errors.New("Options.Pool is required")
	}
	if o.NodeName == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "node"
		}
		var b [3]byte
		_, _ = rand.Read(b[:])
		o.NodeName = host + "-" + hex.EncodeToString(b[:])
	}
	if o.Partitions == 0 {
		o.Partitions = DefaultPartitions
	}
	if o.Partitions < 0 {
		return fmt.Errorf("Partitions cannot be negative, found %d", o.Partitions)
	}
	if err := o.placeServer(); err != nil {
		return err
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Lease == 0 {
		o.Lease = DefaultLease
	}
	if o.Heartbeat < 0 || o.Lease < 0 || o.Margin < 0 {
		return errors.New("Heartbeat, Lease and Margin cannot be negative")
	}
	if o.Lease < 2*o.Heartbeat {
		return fmt.Errorf("Lease (%s) must be at least twice Heartbeat (%s), so that one late heartbeat loses no lease", o.Lease, o.Heartbeat)
	}
	if o.Margin == 0 {
		o.Margin = o.Lease / 5
	}
	if o.Margin >= o.Lease-o.Heartbeat {
		return fmt.Errorf("Margin (%s) must be less than Lease minus Heartbeat (%s)", o.Margin, o.Lease-o.Heartbeat)
	}
	if o.Grace == 0 {
		o.Grace = o.Lease / 2
	}
	if o.Grace < 0 || o.Grace >= o.Lease {
		return fmt.Errorf("Grace (%s) must be positive and less than Lease (%s)", o.Grace, o.Lease)
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// PartitionOf returns the partition of destination's queues among n
// partitions. Every queue of one destination is in the same partition (see
// the package documentation for why). The hash is FNV-1a, fixed: changing
// it would move every queue.
func PartitionOf(destination string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(destination))
	return int(h.Sum32() % uint32(n))
}

// Change is a partition gained or lost by this node.
type Change struct {
	Partition int
	// Token is the fencing token of the lease: the one gained, or the one
	// that is no longer valid.
	Token int64
	// Owned is true when the node gained the partition, false when it lost
	// it (released it, could not renew it in time, or found it taken):
	// either way it must start no more requests on it.
	Owned bool
	// Draining is set on a loss that is a planned handover: the node still
	// holds the lease, renewed, and Token stays valid for writes (Owns),
	// until the consumer calls Drained(Partition, Token) once the requests
	// it has in flight on the partition are over and their outcomes
	// written, or until Options.Grace has passed. Only then is the lease
	// released to the next owner. No further Change follows for it.
	Draining bool
}

// lease is a partition this node owns.
type lease struct {
	token int64
	// until is the local deadline: the renewal's send time plus Lease
	// minus Margin, on the node's clock.
	until time.Time
	// graceEnd is set while the lease is being handed over (Change.Draining):
	// when it is released even if the engine has not called Drained, on the
	// node's clock. drained says the engine has.
	graceEnd time.Time
	drained  bool
}

// draining reports whether the lease is being handed over.
func (l lease) draining() bool { return !l.graceEnd.IsZero() }

// Node is this process's membership of the cluster. Join starts it; Leave
// ends it.
type Node struct {
	opts Options
	pool *pgxpool.Pool
	log  *slog.Logger
	id   int64
	name string

	mu    sync.Mutex
	owned map[int]lease
	// renewedAt is when the last successful round's renewal was sent, on
	// the node's clock (LeaseAge).
	renewedAt time.Time
	// differ is what PipelineDiffers returns.
	differ []string

	// viewSent and viewOwners are the owners of the partitions (valid
	// leases only) as the last successful round read them, and when that
	// round was sent: QueueNotify addresses notifications with them.
	viewSent   time.Time
	viewOwners map[int]int64
	// rewakes are the partitions gained, and when to wake them once more
	// (rewake).
	rewakes map[int]time.Time

	changes *relay[Change]
	wakes   *wakeSet
	// strays are partitions named by notifications addressed to this node
	// that it does not own, to forward to every node.
	strays *wakeSet
	// kick asks the heartbeat loop for a round now: another node joined,
	// left or released partitions.
	kick chan struct{}
	// handed asks the heartbeat loop to release the leases whose handover
	// is over (Drained).
	handed chan struct{}

	cancel context.CancelFunc
	done   sync.WaitGroup
	once   sync.Once
}

// Join registers a node in the cluster on opts.Pool's database, creating
// the cluster's tables if needed, and starts its heartbeats, its share of
// the partitions and its listener. The node's first round of heartbeat and
// acquisition is done when Join returns.
func Join(ctx context.Context, opts Options) (*Node, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n := &Node{
		opts:   opts,
		pool:   opts.Pool,
		name:   opts.NodeName,
		owned:  make(map[int]lease),
		kick:   make(chan struct{}, 1),
		handed: make(chan struct{}, 1),
	}
	n.rewakes = make(map[int]time.Time)
	if err := migrate(ctx, n.pool, opts); err != nil {
		return nil, err
	}
	// Listening before registering: every round another node runs because
	// of this one, and every release it makes, is heard.
	conn, err := n.subscribe(ctx)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen: %w", err)
	}
	err = n.pool.QueryRow(ctx,
		`INSERT INTO cluster_nodes (name, admin_url, pipeline_digest, machine) VALUES ($1, $2, $3, $4) RETURNING id`,
		n.name, opts.AdminURL, opts.Pipeline, opts.Machine).Scan(&n.id)
	if err != nil {
		hangUp(conn)
		return nil, fmt.Errorf("cluster: register node %q: %w", n.name, err)
	}
	n.log = opts.Logger.With("component", "cluster", "node", n.name, "node_id", n.id)
	// Before the first round: nobody addresses this node before it owns a
	// partition.
	if _, err := conn.Exec(ctx, "LISTEN "+nodeChannel(n.id)); err != nil {
		hangUp(conn)
		return nil, fmt.Errorf("cluster: listen: %w", err)
	}
	if _, err := n.pool.Exec(ctx, `SELECT pg_notify($1, 'join')`, clusterChannel); err != nil {
		hangUp(conn)
		return nil, fmt.Errorf("cluster: announce node %q: %w", n.name, err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.changes = newRelay[Change](n.opts.Partitions) // a round changes at most every partition
	n.wakes = newWakeSet(rctx, &n.done)
	n.strays = newWakeSet(rctx, &n.done)
	n.round(ctx)
	n.done.Add(3)
	go n.heartbeatLoop(rctx)
	go n.listen(rctx, conn)
	go n.forward(rctx)
	if n.watchesPeers() {
		n.done.Add(1)
		go n.watchPeers(rctx)
	}
	n.log.Info("joined the cluster", "partitions", opts.Partitions, "owned", len(n.Owned()), "pipeline", ShortDigest(opts.Pipeline))
	return n, nil
}

// Name returns the node's name.
func (n *Node) Name() string { return n.name }

// ID returns the node's id in the cluster, unique for every Join.
func (n *Node) ID() int64 { return n.id }

// PartitionOf returns the partition of q in this cluster.
func (n *Node) PartitionOf(q jobstore.Queue) int {
	return PartitionOf(q.Destination, n.opts.Partitions)
}

// Owned returns the partitions this node owns now, in order: those whose
// lease is valid on the node's clock and not being handed over.
func (n *Node) Owned() []int {
	now := n.opts.Clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	var ps []int
	for p, l := range n.owned {
		if now.Before(l.until) && !l.draining() {
			ps = append(ps, p)
		}
	}
	slices.Sort(ps)
	return ps
}

// Owns reports whether this node owns partition p now, and the fencing
// token to present on its writes. The engine asks before each delivery
// round of a queue: it turns false at the local deadline, before the lease
// runs out in the database, even if the Change saying so was not read yet.
// It stays true while the partition is handed over (Change.Draining), so
// that the outcomes of the requests still in flight are written; the engine
// has stopped starting requests on it by then.
func (n *Node) Owns(p int) (token int64, ok bool) {
	now := n.opts.Clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	l, ok := n.owned[p]
	if !ok || !now.Before(l.until) {
		return 0, false
	}
	return l.token, true
}

// LeaseAge returns how long ago the node's leases were last renewed: the
// age of its last successful heartbeat round, whether or not it owns a
// partition. It stays under Heartbeat while the database answers; past
// Lease minus Margin the node has stopped delivering.
func (n *Node) LeaseAge() time.Duration {
	now := n.opts.Clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.renewedAt.IsZero() {
		return 0
	}
	return now.Sub(n.renewedAt)
}

// Changes returns the channel of partitions gained and lost, in the order
// they happened. It is closed after Leave. The consumer must keep reading:
// changes wait in memory until read.
func (n *Node) Changes() <-chan Change { return n.changes.out }

// Wakeups returns the channel of partitions this node owns that have new
// jobs, from Notify calls on any node. A partition waiting to be read is
// not repeated, however many notifications name it. After the listener's
// connection was lost and restored, every owned partition is sent, as
// notifications may have been missed.
func (n *Node) Wakeups() <-chan int { return n.wakes.out }

// Drained tells the node that the engine has no request in flight on
// partition p, handed over under token, and has written every outcome: the
// lease is released now, without waiting for the rest of the grace. A
// partition not being handed over under that token is left alone.
func (n *Node) Drained(p int, token int64) {
	n.mu.Lock()
	l, ok := n.owned[p]
	if !ok || l.token != token || !l.draining() {
		n.mu.Unlock()
		return
	}
	l.drained = true
	n.owned[p] = l
	n.mu.Unlock()
	select {
	case n.handed <- struct{}{}:
	default:
	}
}

// Leave releases the node's partitions at once, so that the other nodes
// take them at their next heartbeat (they are told through NOTIFY), and
// removes the node from the cluster. The Changes channel gets a lost change
// for each partition before the release, and is then closed.
func (n *Node) Leave(ctx context.Context) error {
	var err error
	n.once.Do(func() {
		n.cancel()
		n.done.Wait()
		n.mu.Lock()
		owned := n.owned
		n.owned = map[int]lease{}
		n.mu.Unlock()
		ps := make([]int, 0, len(owned))
		for p, l := range owned {
			ps = append(ps, p)
			if !l.draining() { // the engine heard of those already
				n.changes.push(Change{Partition: p, Token: l.token})
			}
		}
		slices.Sort(ps)
		n.changes.finish()
		batch := &pgx.Batch{}
		batch.Queue(`UPDATE cluster_partitions SET owner = NULL, expires_at = now()
			WHERE owner = $1`, n.id)
		batch.Queue(`DELETE FROM cluster_nodes WHERE id = $1`, n.id)
		batch.Queue(`SELECT pg_notify($1, 'leave')`, clusterChannel)
		if e := n.pool.SendBatch(ctx, batch).Close(); e != nil {
			err = fmt.Errorf("cluster: leave: release partitions %v: %w", ps, e)
			return
		}
		n.log.Info("left the cluster", "released", len(ps))
	})
	return err
}

// stop ends the node's goroutines without telling the database, as if the
// process had been killed: its leases run out and others take them over.
func (n *Node) stop() {
	n.once.Do(func() {
		n.cancel()
		n.done.Wait()
		n.changes.abort()
	})
}

// NodeInfo is one node in the cluster view.
type NodeInfo struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
	// AdminURL is the node's admin API (Options.AdminURL), "" when it
	// gave none.
	AdminURL string `json:"admin_url,omitempty"`
	// Pipeline is the digest of the node's pipeline (Options.Pipeline),
	// "" when it gave none (a version of fanout from before digests).
	Pipeline string `json:"pipeline_digest,omitempty"`
	// Machine identifies the cores the node runs on (Options.Machine):
	// nodes with the same one share them. "" when it gave none.
	Machine   string    `json:"machine,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Heartbeat time.Time `json:"last_heartbeat"`
	// Live is false for a node whose heartbeats stopped more than a Lease
	// ago. Such nodes are listed for an hour, then forgotten.
	Live bool `json:"live"`
	// Partitions are the partitions whose lease the node holds.
	Partitions []int `json:"partitions"`
}

// Nodes returns the cluster as the database sees it, for GET
// /api/v1/cluster: every node, live or recently dead, in the order they
// joined.
func (n *Node) Nodes(ctx context.Context) ([]NodeInfo, error) {
	rows, err := n.pool.Query(ctx, `
		SELECT n.id, n.name, n.admin_url, n.pipeline_digest, n.machine, n.started_at, n.heartbeat_at,
		       n.heartbeat_at > now() - $1::interval,
		       coalesce(array_agg(p.partition ORDER BY p.partition)
		                FILTER (WHERE p.partition IS NOT NULL), '{}')
		FROM cluster_nodes n
		LEFT JOIN cluster_partitions p ON p.owner = n.id AND p.expires_at > now()
		GROUP BY n.id ORDER BY n.id`, n.opts.Lease)
	if err != nil {
		return nil, fmt.Errorf("cluster: list nodes: %w", err)
	}
	var out []NodeInfo
	for rows.Next() {
		var ni NodeInfo
		var ps []int32
		if err := rows.Scan(&ni.ID, &ni.Name, &ni.AdminURL, &ni.Pipeline, &ni.Machine, &ni.StartedAt, &ni.Heartbeat, &ni.Live, &ps); err != nil {
			return nil, fmt.Errorf("cluster: list nodes: %w", err)
		}
		ni.Partitions = make([]int, len(ps))
		for i, p := range ps {
			ni.Partitions[i] = int(p)
		}
		out = append(out, ni)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cluster: list nodes: %w", err)
	}
	return out, nil
}
