package pgtest

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func TestStart(t *testing.T) {
	dsns := map[string]bool{}
	for range 2 {
		dsn := Start(t)
		if dsns[dsn] {
			t.Fatalf("Start returned %s twice, want a fresh database each time", dsn)
		}
		dsns[dsn] = true
		conn, err := pgx.Connect(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if err := conn.QueryRow(t.Context(), "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v < 150000 {
			t.Errorf("server_version_num = %d, want PostgreSQL 15 or later", v)
		}
		conn.Close(t.Context())
	}
}
