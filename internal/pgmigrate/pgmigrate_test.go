package pgmigrate

import (
	"strings"
	"sync"
	"testing"

	"github.com/fanout/fanout/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestRun: nodes starting together apply each migration once; components
// keep their versions apart; a database newer than the code is refused.
func TestRun(t *testing.T) {
	pool := pgtest.Pool(t, pgtest.Start(t))
	steps := []string{
		`CREATE TABLE a (n integer)`,
		`INSERT INTO a VALUES (1)`, // applied twice would make two rows
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = Run(t.Context(), pool, "a_migrations", steps) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM a").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows, %v; want each migration applied once", n, err)
	}
	// Another component's versions start from its own 1.
	if err := Run(t.Context(), pool, "b_migrations", []string{`CREATE TABLE b (n integer)`}); err != nil {
		t.Fatal(err)
	}
	// An older fanout meets a database a newer one migrated.
	err := Run(t.Context(), pool, "a_migrations", steps[:1])
	if err == nil || !strings.Contains(err.Error(), "newer than this fanout knows") {
		t.Fatalf("Run with fewer migrations than applied: %v", err)
	}
	// A failing migration leaves its version unapplied.
	err = Run(t.Context(), pool, "a_migrations", append(steps, `CREATE TABLE a (n integer)`))
	if err == nil || !strings.Contains(err.Error(), "a_migrations: migration 3") {
		t.Fatalf("Run with a failing migration: %v", err)
	}
	var v int
	if err := pool.QueryRow(t.Context(), "SELECT max(version) FROM a_migrations").Scan(&v); err != nil || v != 2 {
		t.Fatalf("version %d, %v; want 2", v, err)
	}
}
