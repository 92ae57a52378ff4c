// Package pgmigrate brings fanout's PostgreSQL schemas up to date: each
// component that keeps tables in the database (the job store, the stats,
// the archive) has a list of versioned SQL scripts and a version table of
// its own, and Run applies the scripts it is missing.
//
// A few lines and a version table are all this needs: a migration tool
// would bring a dependency and files to ship for the same three steps.
// Every component goes through this one runner, under one advisory lock,
// so nodes starting together take turns and the second finds nothing left
// to do.
package pgmigrate

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Lock is the key of the session advisory lock held while migrating. Its
// value is the job store's from before this package existed ("fanout" 1),
// so that nodes of either version take turns.
const Lock = 0x66616e6f75740001

// Run applies the migrations that the version table table has no row for,
// in order: migration i brings the schema to version i+1. Each migration
// commits together with its version row. Callers append to their list and
// never edit an entry that has shipped. Run fails when the table records a
// version newer than len(migrations): a newer fanout has used the database.
//
// table is a trusted identifier chosen by the caller, never user input.
func Run(ctx context.Context, pool *pgxpool.Pool, table string, migrations []string) (err error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(Lock)); err != nil {
		return err
	}
	defer func() {
		// The lock is the session's: release it before the connection
		// goes back to the pool. Should this fail, drop the connection.
		if _, uerr := conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", int64(Lock)); uerr != nil {
			conn.Conn().Close(context.Background())
			if err == nil {
				err = uerr
			}
		}
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	var version int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+table).Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("%s: schema version %d is newer than this fanout knows (%d): a newer fanout has used the database", table, version, len(migrations))
	}
	for v := version + 1; v <= len(migrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+table+" (version) VALUES ($1)", v)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: migration %d: %w", table, v, err)
		}
	}
	return nil
}
