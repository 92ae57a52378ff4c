package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/internal/server"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// password is the DSNs' password in these tests. The throwaway cluster
// trusts every local connection, so it is accepted and never checked, but
// fanout still holds it and must show it nowhere.
const password = "pw-s3cret-9f2c"

// pgConfig loads the test configuration with storage.postgres set to
// dsns: one server, or several.
func pgConfig(t *testing.T, dsns ...string) *config.Config {
	t.Helper()
	cfg, err := config.Load(writeConfig(t, t.TempDir(), "", "http://127.0.0.1:1/hook", "http://127.0.0.1:1", "http://127.0.0.1:1"), testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Storage.Postgres = dsns
	return cfg
}

// A DSN that cannot be used stops start-up with an error that names
// storage.postgres and the cause, and shows the password nowhere.
func TestPostgresStartupErrors(t *testing.T) {
	// A role that may log in but not create the tables.
	admin := pgtest.Start(t)
	conn, err := pgx.Connect(t.Context(), admin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "CREATE ROLE limited LOGIN"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	limited := strings.Replace(admin, "user=postgres", "user=limited", 1) + " password=" + password

	tests := []struct {
		name, dsn, cause string
	}{
		{"unparseable URL", "postgres://fanout:" + password + "@db.example.com:notaport/fanout", "cannot parse"},
		{"nothing listens", "host=127.0.0.1 port=1 user=fanout password=" + password + " dbname=fanout connect_timeout=2", "connect"},
		{"missing permissions", limited, "permission denied"},
	}
	// Each DSN alone, then as the second of two servers, the first of
	// which works: the error names the entry at fault.
	good := pgtest.Start(t) + " password=" + password
	for _, tt := range tests {
		for _, place := range []struct {
			dsns []string
			key  string
		}{
			{[]string{tt.dsn}, "storage.postgres: "},
			{[]string{good, tt.dsn}, "storage.postgres[1]: "},
		} {
			t.Run(tt.name+" "+strings.TrimSuffix(place.key, ": "), func(t *testing.T) {
				var logs logtest.Buffer
				_, err := server.New(server.Options{Config: pgConfig(t, place.dsns...), Registry: testRegistry(),
					Logger: logs.Logger(slog.LevelDebug)})
				if err == nil {
					t.Fatal("New succeeded")
				}
				msg := err.Error()
				t.Logf("New = %s", msg)
				if !strings.HasPrefix(msg, place.key) || !strings.Contains(msg, tt.cause) {
					t.Errorf("New = %q, want an error naming %sand %q", msg, place.key, tt.cause)
				}
				if strings.Contains(msg, password) || strings.Contains(logs.String(), password) {
					t.Errorf("the password shows in the error %q or the log:\n%s", msg, logs.String())
				}
			})
		}
	}
}

// On PostgreSQL, events are stored and delivered as on the embedded store,
// and the DSN's password appears in no log line and no admin response.
func TestPostgresPasswordShownNowhere(t *testing.T) {
	for _, servers := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d servers", servers), func(t *testing.T) {
			var dsns []string
			for range servers {
				dsns = append(dsns, pgtest.Start(t)+" password="+password)
			}
			testPasswordShownNowhere(t, dsns)
		})
	}
}

func testPasswordShownNowhere(t *testing.T, dsns []string) {
	var logs logtest.Buffer
	reg := testRegistry()
	cfg := pgConfig(t, dsns...)
	r := runWith(t, server.Options{Config: cfg, Registry: reg, Logger: logs.Logger(slog.LevelDebug)})

	if code := r.send(t, writeKey, batch(track("pg-1", "ok", ""), track("pg-2", "ok", ""))); code != 200 {
		t.Fatalf("POST /v1/batch on PostgreSQL: %d", code)
	}
	for _, path := range []string{"/", "/healthz", "/api/v1/sources", "/api/v1/destinations", "/api/v1/destination-types",
		"/api/v1/overview", "/api/v1/queues", "/api/v1/issues", "/api/v1/cluster", "/metrics", "/debug/pprof/cmdline"} {
		resp := r.fetch(t, path)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
		if bytes.Contains(b, []byte(password)) {
			t.Errorf("GET %s shows the DSN's password", path)
		}
	}
	r.stop()
	if r.err != nil {
		t.Errorf("Run: %v", r.err)
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log shows the DSN's password:\n%s", logs.String())
	}
}
