package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/fanout/internal/admin"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/cores"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/open"
)

// clusterConns bounds the pool the cluster membership uses: one connection
// held for LISTEN, one for each heartbeat round, one for the admin API's
// cluster view.
const clusterConns = 3

// ClusterTuning overrides the cluster's timings and partition count
// (Options.ClusterTuning); zero fields take the cluster package's
// defaults. Tests shorten the failover with it.
type ClusterTuning struct {
	Heartbeat, Lease time.Duration
	Partitions       int
}

// pgCluster is this node's membership of the cluster of nodes sharing
// storage.postgres, on pools of its own: one server's, or one per server
// when it lists several.
type pgCluster struct {
	pools []*pgxpool.Pool
	node  membership

	// peers is the node list the admin API's cluster-wide views last
	// read, at peersAt; peersMu makes concurrent views share one read.
	peersMu sync.Mutex
	peersAt time.Time
	peers   []admin.Peer
}

// peersTTL is how long the admin API reuses the node list: the pools are
// the heartbeat's too (clusterConns), so views, however many, read it at
// most once a second.
const peersTTL = time.Second

// joinCluster connects to every server of cfg.Storage.Postgres and joins
// the cluster there under cluster.node_name (empty: a default one, the
// same on every server), advertising adminURL as its admin API and the
// digest of cfg's pipeline as what it runs.
func joinCluster(cfg *config.Config, adminURL string, tune ClusterTuning, log *slog.Logger) (_ *pgCluster, err error) {
	dsns, name := cfg.Storage.Postgres, cfg.Cluster.NodeName
	// Once, from the configuration loaded at start: the node runs this
	// pipeline until it stops.
	digest, err := pipelineOf(cfg).Digest()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &pgCluster{}
	var nodes []*cluster.Node
	defer func() {
		if err != nil {
			for _, n := range nodes {
				n.Leave(ctx)
				go func() { // so that the changes Leave announces are read and the channel closes
					for range n.Changes() {
					}
				}()
			}
			c.closePools()
		}
	}()
	for i, dsn := range dsns {
		key := open.PostgresKey(i, len(dsns))
		pool, err := openPool(ctx, key, dsn, clusterConns)
		if err != nil {
			return nil, err
		}
		c.pools = append(c.pools, pool)
		node, err := cluster.Join(ctx, cluster.Options{
			Pool: pool, NodeName: name, AdminURL: adminURL, Pipeline: digest, Logger: log,
			Machine: cores.Machine(), Colocated: func(nodes int) { shareCores(nodes, log) },
			// The wall clock always: the leases are timed by the database, and
			// a fake clock would stop the heartbeats.
			Heartbeat: tune.Heartbeat, Lease: tune.Lease, Partitions: tune.Partitions,
			Server: i, Servers: len(dsns),
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		nodes = append(nodes, node)
		name = node.Name()
	}
	if c.node, err = newMembership(nodes); err != nil {
		return nil, err
	}
	return c, nil
}

// shareCores gives the node its share of the machine's cores when nodes
// of the cluster (itself included) run on it: see package cores.
func shareCores(nodes int, log *slog.Logger) {
	procs, set := cores.Share(nodes)
	switch {
	case !set:
		log.Info("GOMAXPROCS is set in the environment: kept, whatever the nodes on this machine",
			"nodes_on_machine", nodes, "gomaxprocs", procs)
	case nodes > 1:
		log.Info("nodes of the cluster share this machine: GOMAXPROCS set to this node's share of its cores",
			"nodes_on_machine", nodes, "cores", runtime.NumCPU(), "gomaxprocs", procs)
	default:
		log.Info("no other node of the cluster on this machine: GOMAXPROCS is the Go runtime's default",
			"gomaxprocs", procs)
	}
}

// pipelineOf is the pipeline cfg configures, for the comparison of the
// nodes' pipelines (cluster.Pipeline): every destination's delivery
// options with their defaults, as the engine runs them; the settings are
// normalized by config.Load already.
func pipelineOf(cfg *config.Config) cluster.Pipeline {
	var p cluster.Pipeline
	for _, s := range cfg.Sources {
		p.Sources = append(p.Sources, cluster.PipelineSource{Name: s.Name, WriteKey: s.WriteKey})
	}
	for _, d := range cfg.Destinations {
		p.Destinations = append(p.Destinations, cluster.PipelineDestination{
			Name: d.Name, Type: d.Type, Sources: d.Sources, Settings: d.Settings,
			Delivery: d.Delivery.WithDefaults(),
		})
	}
	return p
}

// Leave leaves the cluster, so that the other nodes take this node's
// partitions at once, and closes the pools. Call it after the engine has
// stopped and written its last outcomes.
func (c *pgCluster) Leave(log *slog.Logger) {
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.node.Leave(ctx); err != nil {
		log.Warn("leave the cluster", "err", err)
	}
	// The engine has stopped reading Changes; the losses Leave announces
	// are read here, so that the channel closes and its goroutine ends.
	go func() {
		for range c.node.Changes() {
		}
	}()
	c.closePools()
}

// Node returns the membership, nil without a cluster.
func (c *pgCluster) Node() membership {
	if c == nil {
		return nil
	}
	return c.node
}

// clusterView is GET /api/v1/cluster: the nodes as the database sees them,
// and which of them answered.
type clusterView struct {
	// Self is the id of the node that answered.
	Self  int64              `json:"self"`
	Name  string             `json:"name"`
	Nodes []cluster.NodeInfo `json:"nodes"`
	// PipelinesDiffer says the live nodes run different pipelines
	// (cluster.PipelinesDiffer): jobs for a destination some node lacks
	// may wait undelivered.
	PipelinesDiffer bool `json:"pipelines_differ"`
}

// View returns the cluster view for the admin API.
func (c *pgCluster) View(ctx context.Context) (any, error) {
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	if nodes == nil {
		nodes = []cluster.NodeInfo{}
	}
	return clusterView{Self: c.node.ID(), Name: c.node.Name(), Nodes: nodes, PipelinesDiffer: cluster.PipelinesDiffer(nodes)}, nil
}

// Peers lists the nodes for the admin API's cluster-wide views, as read
// less than peersTTL ago. The slice is shared: callers must not change it.
func (c *pgCluster) Peers(ctx context.Context) ([]admin.Peer, error) {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	if c.peers != nil && time.Since(c.peersAt) < peersTTL {
		return c.peers, nil
	}
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]admin.Peer, len(nodes))
	for i, n := range nodes {
		out[i] = admin.Peer{ID: n.ID, Name: n.Name, AdminURL: n.AdminURL, Live: n.Live, Self: n.ID == c.node.ID()}
	}
	c.peers, c.peersAt = out, time.Now()
	return out, nil
}

// Delivers reports whether this node owns destination's partition now.
func (c *pgCluster) Delivers(destination string) bool {
	_, ok := c.node.Owns(c.node.PartitionOf(jobstore.Queue{Destination: destination}))
	return ok
}

// adminURL is the URL other nodes reach the admin API bound to ln at: its
// address, with the host name in place of an unspecified IP (a node
// listening on every interface is reached by its name).
func adminURL(ln net.Listener) string {
	host, port, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if name, err := os.Hostname(); err == nil && name != "" {
			host = name
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Collectors are the node's cluster gauges for /metrics.
func (c *pgCluster) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fanout_cluster_owned_partitions",
			Help: "Partitions whose lease this node holds (valid on its own clock).",
		}, func() float64 { return float64(len(c.node.Owned())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fanout_cluster_lease_age_seconds",
			Help: "Seconds since this node's leases were last renewed (its last successful heartbeat round); past the lease minus its margin it stops delivering.",
		}, func() float64 { return c.node.LeaseAge().Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fanout_cluster_pipeline_mismatch",
			Help: "1 while a live node of the cluster runs other sources or destinations than this node (its pipeline digest differs), else 0.",
		}, func() float64 {
			if len(c.node.PipelineDiffers()) > 0 {
				return 1
			}
			return 0
		}),
	}
}
