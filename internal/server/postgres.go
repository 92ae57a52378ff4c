package server

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/archive"
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

// openPGVisibility connects to dsn and brings the stats and archive tables
// up to date. node names this node's stats rows (see stats.Postgres): the
// host name and the tracking API's listen address, so that nodes on one
// host differ and a node keeps its name across restarts. Errors never
// include the DSN's password (pgx redacts it).
func openPGVisibility(dsn, listen string) (*pgVisibility, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := openPool(ctx, dsn, visibilityConns)
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

// openPool connects to dsn with a pool of at most maxConns connections.
// Errors name storage.postgres and never include the DSN's password (pgx
// redacts it).
func openPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("storage.postgres: %w", err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("storage.postgres: %w", err)
	}
	return pool, nil
}
