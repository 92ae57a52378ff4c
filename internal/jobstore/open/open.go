// Package open opens the job store the configuration asks for: the embedded
// Pebble store in the data directory, the PostgreSQL store when one DSN is
// given, or the store spread over several PostgreSQL servers (jobstore/shard)
// when several are. It is the one place that chooses; above it, everything
// sees a jobstore.Store. (It is not in package jobstore because the stores
// import that package.)
package open

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/jobstore/postgres"
	"github.com/fanout/fanout/internal/jobstore/shard"
)

// Options says which store to open and how. Both stores take the same
// options, so that the choice changes nothing else.
type Options struct {
	// DataDir is the data directory; the embedded store lives in its jobs/
	// subdirectory. Unused when Postgres is set.
	DataDir string
	// Postgres lists the PostgreSQL servers, each a DSN (a URL or
	// key=value pairs, as libpq takes them). When set, jobs are stored
	// there instead of DataDir: on the one server, or spread over several
	// (see package jobstore/shard).
	Postgres []string
	// DedupeWindow, Now, Logger and Applied are passed to the store; see
	// pebble.Options and postgres.Options. Zero values take the stores'
	// defaults.
	DedupeWindow time.Duration
	Now          func() time.Time
	Logger       *slog.Logger
	Applied      jobstore.AppliedFunc
	// Cluster is the node's membership of the cluster sharing the
	// PostgreSQL database (see postgres.Options.Cluster), with one server.
	// Unused by the embedded store.
	Cluster postgres.Cluster
	// Group is the node's memberships of the clusters on several servers:
	// server i's store is fenced and wakes the owners through Group.Node(i),
	// and the jobs are spread by the Group's partition count. Without it
	// (tools that open a store of stopped nodes), the store is spread by
	// cluster.DefaultPartitions and not fenced. Unused with one server.
	Group *cluster.Group
	// FS is the filesystem the embedded store writes through (see
	// pebble.Options.FS). Unused when Postgres is set.
	FS vfs.FS
}

// Store opens the store that opts selects. Its errors name the
// configuration key at fault (data_dir, storage.postgres or, with several
// servers, storage.postgres[i]) and the cause, and never contain a DSN's
// password.
func Store(ctx context.Context, opts Options) (jobstore.Store, error) {
	switch {
	case len(opts.Postgres) == 1:
		s, err := postgres.Open(ctx, opts.Postgres[0], opts.postgres(opts.Applied, opts.Cluster))
		if err != nil {
			return nil, fmt.Errorf("storage.postgres: %w", err)
		}
		return s, nil
	case len(opts.Postgres) > 1:
		return spread(ctx, opts)
	}
	s, err := pebble.Open(filepath.Join(opts.DataDir, "jobs"), pebble.Options{
		DedupeWindow: opts.DedupeWindow,
		Now:          opts.Now,
		Logger:       opts.Logger,
		Applied:      opts.Applied,
		FS:           opts.FS,
	})
	if err != nil {
		return nil, fmt.Errorf("data_dir: open store in %s: %w", opts.DataDir, err)
	}
	return s, nil
}

// PostgresKey names server i of n in errors: storage.postgres for the one
// server, storage.postgres[i] for one of several.
func PostgresKey(i, n int) string {
	if n == 1 {
		return "storage.postgres"
	}
	return fmt.Sprintf("storage.postgres[%d]", i)
}

// postgres returns the options of one server's store.
func (o Options) postgres(applied jobstore.AppliedFunc, c postgres.Cluster) postgres.Options {
	return postgres.Options{
		DedupeWindow: o.DedupeWindow,
		Now:          o.Now,
		Logger:       o.Logger,
		Applied:      applied,
		Cluster:      c,
	}
}

// spread opens one store per server and spreads the jobs over them.
func spread(ctx context.Context, opts Options) (jobstore.Store, error) {
	applied := shard.OneAtATime(opts.Applied)
	so := shard.Options{Logger: opts.Logger}
	if opts.Group != nil {
		so.Partitions = opts.Group.Partitions()
		so.Holds = opts.Group.Holds
	}
	stores := make([]jobstore.Store, 0, len(opts.Postgres))
	closeAll := func() {
		for _, s := range stores {
			s.Close()
		}
	}
	for i, dsn := range opts.Postgres {
		var c postgres.Cluster
		if opts.Group != nil {
			c = opts.Group.Node(i)
		}
		s, err := postgres.Open(ctx, dsn, opts.postgres(applied, c))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: %w", PostgresKey(i, len(opts.Postgres)), err)
		}
		stores = append(stores, s)
	}
	s, err := shard.New(stores, so)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("storage.postgres: %w", err)
	}
	return s, nil
}
