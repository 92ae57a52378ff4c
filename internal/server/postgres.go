package server

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/jobstore/open"
	"github.com/fanout/fanout/internal/stats"
)

// visibilityConns bounds the pool the stats and the archive share: one
// flush every two seconds, an archive write now and then, and the admin
// API's queries.
const visibilityConns = 4

// pgVisibility is what a node keeps in PostgreSQL beside the job store
// when storage.postgres is set: its stats and the archive, on a small pool
// of their own, so that the node's disk holds nothing another node needs.
type pgVisibility struct {
	pool    *pgxpool.Pool
	stats   *stats.Postgres
	archive *archive.Postgres
}

// openPGVisibility connects to the first server of dsns and brings the
// stats and archive tables up to date there. node names this node's stats
// rows (see stats.Postgres): the host name and the tracking API's listen
// address, so that nodes on one host differ and a node keeps its name
// across restarts. Errors never include the DSN's password (pgx redacts
// it).
//
// With several servers the stats and the archive live on the first, not
// beside each destination's jobs: the admin API's overview reads one
// database, and both already ride out a database that does not answer
// (the stats keep their minutes in memory and write them later; the
// engine keeps a job whose archive record could not be written and tries
// again), so while the first server is down nothing is lost, only the
// overview cannot be read and archiving waits.
func openPGVisibility(dsns []string, listen string) (*pgVisibility, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := openPool(ctx, open.PostgresKey(0, len(dsns)), dsns[0], visibilityConns)
	if err != nil {
		return nil, err
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	v := &pgVisibility{pool: pool}
	if v.stats, err = stats.NewPostgres(ctx, pool, stats.PostgresOptions{Node: host + " " + listen}); err != nil {
		pool.Close()
		return nil, err
	}
	if v.archive, err = archive.NewPostgres(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return v, nil
}

// Close closes the pool; call it after the stats are closed.
func (v *pgVisibility) Close() {
	if v != nil {
		v.pool.Close()
	}
}

// openPool connects to dsn, the server that key names in the
// configuration, with a pool of at most maxConns connections. Errors name
// key and never include the DSN's password (pgx redacts it).
func openPool(ctx context.Context, key, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return pool, nil
}

// membership is what the server uses of its cluster membership: a
// *cluster.Node with one server, a *cluster.Group over several.
type membership interface {
	delivery.Ownership
	ID() int64
	Name() string
	Owned() []int
	LeaseAge() time.Duration
	Nodes(ctx context.Context) ([]cluster.NodeInfo, error)
	PipelineDiffers() []string
	Leave(ctx context.Context) error
}

var (
	_ membership = (*cluster.Node)(nil)
	_ membership = (*cluster.Group)(nil)
)

// newMembership returns the one server's node as it is, so that one
// server works exactly as before, or the group of several.
func newMembership(nodes []*cluster.Node) (membership, error) {
	if len(nodes) == 1 {
		return nodes[0], nil
	}
	return cluster.NewGroup(nodes)
}

// storeOptions gives the job store the membership that fences its writes
// and through which it wakes the owners of new jobs.
func (c *pgCluster) storeOptions(oo *open.Options) {
	switch m := c.node.(type) {
	case *cluster.Node:
		oo.Cluster = m
	case *cluster.Group:
		oo.Group = m
	}
}

// closePools closes the membership's pools.
func (c *pgCluster) closePools() {
	for _, p := range c.pools {
		p.Close()
	}
}
