package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Outage returns a function that takes the database of dsn, on the test
// binary's cluster, down or back up: down, it refuses new connections and
// its open ones are cut, as when its server is unreachable; up, it takes
// connections again. A pgxpool keeps dead idle connections until it tries
// them: call its Reset after taking the database down, so that the next
// call connects afresh and fails.
func Outage(t testing.TB, dsn string) func(down bool) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.Database
	admin, err := pgx.Connect(context.Background(), server(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	return func(down bool) {
		t.Helper()
		ctx := context.Background()
		allow := "true"
		if down {
			allow = "false"
		}
		if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH ALLOW_CONNECTIONS "+allow); err != nil {
			t.Fatal(err)
		}
		if down {
			if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", db); err != nil {
				t.Fatal(err)
			}
		}
	}
}
