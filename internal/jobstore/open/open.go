// Package open opens the job store the configuration asks for: the embedded
// Pebble store in the data directory, or the PostgreSQL store when a DSN is
// given. It is the one place that chooses; above it, everything sees a
// jobstore.Store. (It is not in package jobstore because both stores import
// that package.)
package open

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/jobstore/postgres"
)

// Options says which store to open and how. Both stores take the same
// options, so that the choice changes nothing else.
type Options struct {
	// DataDir is the data directory; the embedded store lives in its jobs/
	// subdirectory. Unused when Postgres is set.
	DataDir string
	// Postgres is a PostgreSQL DSN (a URL or key=value pairs, as libpq takes
	// them). When set, jobs are stored in that database instead of DataDir.
	Postgres string
	// DedupeWindow, Now, Logger and Applied are passed to the store; see
	// pebble.Options and postgres.Options. Zero values take the stores'
	// defaults.
	DedupeWindow time.Duration
	Now          func() time.Time
	Logger       *slog.Logger
	Applied      jobstore.AppliedFunc
	// Cluster is the node's membership of the cluster sharing the
	// PostgreSQL database (see postgres.Options.Cluster). Unused by the
	// embedded store.
	Cluster postgres.Cluster
	// FS is the filesystem the embedded store writes through (see
	// pebble.Options.FS). Unused when Postgres is set.
	FS vfs.FS
}

// Store opens the store that opts selects. Its errors name the
// configuration key at fault (data_dir or storage.postgres) and the cause,
// and never contain the DSN's password.
func Store(ctx context.Context, opts Options) (jobstore.Store, error) {
	if opts.Postgres != "" {
		s, err := postgres.Open(ctx, opts.Postgres, postgres.Options{
			DedupeWindow: opts.DedupeWindow,
			Now:          opts.Now,
			Logger:       opts.Logger,
			Applied:      opts.Applied,
			Cluster:      opts.Cluster,
		})
		if err != nil {
			return nil, fmt.Errorf("storage.postgres: %w", err)
		}
		return s, nil
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
