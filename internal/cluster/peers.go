package cluster

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// peer is a live node as the peers' watch reads it.
type peer struct {
	name, pipeline, machine string
}

// watchesPeers reports whether the node reads the live nodes' rows
// (watchPeers): to compare its pipeline with theirs (Options.Pipeline) or
// count those on its machine (Options.Colocated). Only on the first
// server: every node registers there, and a node of a Group does it once.
func (n *Node) watchesPeers() bool {
	return n.opts.Server == 0 && (n.opts.Pipeline != "" || n.opts.Colocated != nil)
}

// watchPeers reads the live nodes at once, then every Heartbeat, until
// ctx ends, and compares their pipelines and counts those on this node's
// machine. In a loop of its own rather than in the heartbeat's round, so
// that a slow read never delays a renewal. A read that fails changes
// nothing: the heartbeat reports the database's trouble.
func (n *Node) watchPeers(ctx context.Context) {
	defer n.done.Done()
	t := n.opts.Clock.NewTimer()
	defer t.Stop()
	colocated := 0
	for {
		if live, err := n.readPeers(ctx); err != nil {
			n.log.Debug("read the live nodes", "err", err)
		} else {
			n.comparePipelines(live)
			if k := n.colocated(live); k != colocated && n.opts.Colocated != nil {
				colocated = k
				n.opts.Colocated(k)
			}
		}
		t.Set(n.opts.Clock.Now().Add(n.opts.Heartbeat))
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// readPeers reads the live nodes, this one included.
func (n *Node) readPeers(parent context.Context) ([]peer, error) {
	ctx, cancel := context.WithTimeout(parent, n.opts.Lease)
	defer cancel()
	rows, err := n.pool.Query(ctx, `
		SELECT name, pipeline_digest, machine FROM cluster_nodes
		WHERE heartbeat_at > now() - $1::interval`, n.opts.Lease)
	if err != nil {
		return nil, err
	}
	var live []peer
	var p peer
	_, err = pgx.ForEachRow(rows, []any{&p.name, &p.pipeline, &p.machine}, func() error {
		live = append(live, p)
		return nil
	})
	return live, err
}

// colocated counts the live nodes on this node's machine, itself
// included: 1 when its Options.Machine is "" (unknown).
func (n *Node) colocated(live []peer) int {
	if n.opts.Machine == "" {
		return 1
	}
	k := 0
	for _, p := range live {
		if p.machine == n.opts.Machine {
			k++
		}
	}
	return max(k, 1)
}
