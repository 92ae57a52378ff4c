package postgres

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/pgtest"
)

// TestAppendRate logs how fast durable appends go: 100,000 events (or
// FANOUT_PG_RATE_EVENTS) in
// batches of 100 from 8 goroutines, on a cluster of its own with fsync on.
// It asserts nothing about the rate and runs only when FANOUT_PG_RATE=1;
// benchmarks proper belong in fanout bench. With FANOUT_PG_STATS=1 it also
// logs the statements that took the server's time (pg_stat_statements).
func TestAppendRate(t *testing.T) {
	if os.Getenv("FANOUT_PG_RATE") == "" {
		t.Skip("set FANOUT_PG_RATE=1 to measure the append rate")
	}
	var opts pgtest.Options
	stats := os.Getenv("FANOUT_PG_STATS") != ""
	if stats {
		opts.Settings = append(opts.Settings, "shared_preload_libraries=pg_stat_statements")
	}
	srv, err := pgtest.StartServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dsn, err := srv.CreateDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), dsn, Options{CleanupInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if stats {
		if _, err := s.pool.Exec(t.Context(), "CREATE EXTENSION pg_stat_statements"); err != nil {
			t.Fatal(err)
		}
		defer logStatements(t, s)
	}
	const (
		batch      = 100
		goroutines = 8
	)
	events := 100_000
	if n, err := strconv.Atoi(os.Getenv("FANOUT_PG_RATE_EVENTS")); err == nil && n > 0 {
		events = n
	}
	payload := make([]byte, 400)
	for i := range payload {
		payload[i] = 'x'
	}
	pgCPU := serverCPU(t, srv)
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for b := 0; b < events/goroutines/batch; b++ {
				es := entries("web", []string{"hook"}, fmt.Sprintf("g%d-b%d", g, b), batch)
				for i := range es {
					es[i].Event.Payload = payload
				}
				if _, err := s.Append(t.Context(), es); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	pgCPU = serverCPU(t, srv) - pgCPU
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	goCPU := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	t.Logf("%d events (%d per Append, %d goroutines, 400-byte payloads, one destination) in %s: %.0f events/s durable",
		events, batch, goroutines, took.Round(time.Millisecond), float64(events)/took.Seconds())
	t.Logf("CPU: PostgreSQL %s (%.1f µs/event), this process %s (%.1f µs/event)",
		pgCPU.Round(time.Millisecond), float64(pgCPU.Microseconds())/float64(events),
		goCPU.Round(time.Millisecond), float64(goCPU.Microseconds())/float64(events))
}

// logStatements logs the statements that took most of the server's time.
func logStatements(t *testing.T, s *Store) {
	rows, err := s.pool.Query(t.Context(), `SELECT calls, round(total_exec_time)::bigint, rows,
		shared_blks_hit + shared_blks_read, wal_bytes::bigint, left(regexp_replace(query, '\s+', ' ', 'g'), 100)
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	t.Logf("%8s %8s %9s %10s %12s  %s", "calls", "ms", "rows", "blocks", "WAL bytes", "query")
	for rows.Next() {
		var calls, ms, n, blks, wal int64
		var q string
		if err := rows.Scan(&calls, &ms, &n, &blks, &wal, &q); err != nil {
			t.Fatal(err)
		}
		t.Logf("%8d %8d %9d %10d %12d  %s", calls, ms, n, blks, wal, q)
	}
}

// serverCPU sums the user and system CPU time of the server's processes:
// the postmaster (the one process whose command line names the server's
// directory) and its children, read from /proc. Linux only.
func serverCPU(t *testing.T, srv *pgtest.Server) time.Duration {
	t.Helper()
	const userHZ = 100
	dirs, _ := os.ReadDir("/proc")
	var postmaster string
	parent := map[string]string{}
	ticks := map[string]int64{}
	for _, d := range dirs {
		stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime stime: fields 14 and 15.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		parent[d.Name()], ticks[d.Name()] = f[1], utime+stime
		if cmd, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline"); strings.Contains(string(cmd), srv.Dir()) {
			postmaster = d.Name()
		}
	}
	var total int64
	for pid, ppid := range parent {
		if pid == postmaster || ppid == postmaster {
			total += ticks[pid]
		}
	}
	return time.Duration(total) * time.Second / userHZ
}
