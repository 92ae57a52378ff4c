// Package pgtest starts throwaway PostgreSQL clusters for tests and
// benchmarks.
//
// A [Server] is one cluster in a temporary directory, listening only on a
// Unix socket in that directory: initdb, then pg_ctl start, and pg_ctl stop
// plus removal of the directory when it is stopped. It works outside
// package testing too, so that `fanout bench --storage postgres` can start
// one. Tests use the thin wrapper: [Main] in TestMain starts nothing and
// stops the cluster at the end, [Start] starts the cluster of the test
// binary on first use and returns the DSN of a fresh database. [Server.Down]
// and [Server.Up] take a running cluster away and bring it back, for tests
// of what fanout does while its database is gone.
//
// initdb and postgres refuse to run as root. When the process runs as root
// (as the tests do in CI containers), the binaries run as the `postgres`
// user through runuser, on a directory chowned to that user.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Options configures a Server. The zero value is ready to use.
type Options struct {
	// Settings are extra server settings, "name=value" each, passed to
	// postgres as -c options (for example "fsync=off" for tests that do
	// not measure durability). Default none: fsync and synchronous_commit
	// stay on.
	Settings []string
	// BinDir is the directory holding initdb, pg_ctl and postgres. Default:
	// the environment variable PGTEST_BIN, else the directory of initdb on
	// PATH, else /usr/local/bin, else /usr/lib/postgresql/*/bin (where
	// Debian's postgresql package puts them).
	BinDir string
}

// Server is a running throwaway PostgreSQL cluster.
type Server struct {
	dir    string // temporary directory: data/, the socket, the log
	binDir string
	port   int
	asUser string   // run the binaries as this user; "" for the current one
	opts   []string // the postgres options it was started with, for Up
	dbs    atomic.Int64
}

// StartServer creates a cluster in a new temporary directory and starts it.
// Stop stops it and removes the directory.
func StartServer(opts Options) (*Server, error) {
	bin, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{dir: dir, binDir: bin}
	if err := s.start(opts); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) start(opts Options) error {
	if os.Geteuid() == 0 {
		s.asUser = "postgres"
		u, err := user.Lookup(s.asUser)
		if err != nil {
			return fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to: need a %q user to run it as: %w", s.asUser, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(s.dir, uid, gid); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.port = port
	data := filepath.Join(s.dir, "data")
	if out, err := s.run("initdb", "-D", data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	// Only a Unix socket in the private directory: nothing listens on the
	// network.
	o := []string{"-c listen_addresses=''", "-k " + s.dir, "-p " + strconv.Itoa(port),
		"-c max_connections=200", "-c shared_buffers=64MB"}
	for _, kv := range opts.Settings {
		o = append(o, "-c "+kv)
	}
	s.opts = o
	return s.Up()
}

// Up starts the server's postmaster on its existing data and waits until
// it accepts connections: after StartServer has created it, or after Down.
func (s *Server) Up() error {
	data := filepath.Join(s.dir, "data")
	if out, err := s.run("pg_ctl", "-D", data, "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60",
		"-o", strings.Join(s.opts, " "), "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, log)
	}
	return nil
}

// Down stops the server as an operator would for maintenance (pg_ctl stop
// -m fast: sessions are disconnected, transactions in progress roll back,
// committed ones stay) and keeps its data, so that Up starts it again. Tests
// use it to take the database away under load.
func (s *Server) Down() error {
	if out, err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", err, out)
	}
	return nil
}

// run runs one of the PostgreSQL binaries, as s.asUser if set.
func (s *Server) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(s.binDir, name)
	var cmd *exec.Cmd
	if s.asUser != "" {
		cmd = exec.Command("runuser", append([]string{"-u", s.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// DSN returns the connection string of database db on the server.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", s.dir, s.port, db)
}

// CreateDatabase creates a new empty database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("db%d", s.dbs.Add(1))
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return s.DSN(name), nil
}

// Stop stops the server at once (no checkpoint: its data is thrown away)
// and removes its directory.
func (s *Server) Stop() error {
	var err error
	if _, statErr := os.Stat(filepath.Join(s.dir, "data", "postmaster.pid")); statErr == nil {
		if out, stopErr := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop"); stopErr != nil {
			err = fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", stopErr, out)
		}
	}
	if rmErr := os.RemoveAll(s.dir); err == nil && rmErr != nil {
		err = fmt.Errorf("pgtest: %w", rmErr)
	}
	return err
}

// findBinDir finds the directory holding the PostgreSQL server binaries.
func findBinDir(dir string) (string, error) {
	var tried []string
	candidates := []string{dir, os.Getenv("PGTEST_BIN")}
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	candidates = append(candidates, "/usr/local/bin")
	globbed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	candidates = append(candidates, globbed...)
	for _, d := range candidates {
		if d == "" {
			continue
		}
		tried = append(tried, d)
		ok := true
		for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
			if _, err := os.Stat(filepath.Join(d, b)); err != nil {
				ok = false
			}
		}
		if ok {
			return d, nil
		}
	}
	return "", fmt.Errorf("pgtest: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (looked in $PGTEST_BIN, PATH, /usr/local/bin and /usr/lib/postgresql/*/bin; tried %q): install PostgreSQL, e.g. apt-get install postgresql, or set PGTEST_BIN", tried)
}

// freePort returns a TCP port that is free now. The server listens on a
// Unix socket only, but the port number names the socket file.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// The cluster shared by the tests of one test binary.
var shared struct {
	mu      sync.Mutex
	main    bool
	started bool
	srv     *Server
	err     error
}

// TestSettings are the settings of the cluster that Start starts: durability
// is not what the tests measure, so fsync is off.
var TestSettings = []string{"fsync=off", "full_page_writes=off"}

// Main runs the tests of m, stops the cluster that Start started, if any,
// and exits. Call it from TestMain: Start refuses to run without it (or
// Run), so that no test binary leaves a server behind.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain that has more to do after the tests: it
// returns the exit code instead of exiting.
func Run(m *testing.M) int {
	shared.mu.Lock()
	shared.main = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	shared.mu.Unlock()
	return code
}

// Start returns the DSN of a new empty database on the test binary's
// cluster, starting the cluster on first use. It fails t when the cluster
// cannot be started (for example when the PostgreSQL binaries are missing).
func Start(t testing.TB) string {
	t.Helper()
	srv := server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := srv.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// Pool opens a connection pool on dsn and closes it when t ends. The pool
// is not tied to t.Context, which ends before t's cleanups run.
func Pool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Shared returns the test binary's cluster, starting it on first use.
func Shared(t testing.TB) *Server {
	t.Helper()
	return server(t)
}

func server(t testing.TB) *Server {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.main {
		t.Fatal("pgtest: call pgtest.Main(m) from TestMain, so that the cluster is stopped after the tests")
	}
	if !shared.started {
		shared.started = true
		shared.srv, shared.err = StartServer(Options{Settings: TestSettings})
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

// Dir returns the server's temporary directory, which holds its data, its
// socket and its log.
func (s *Server) Dir() string { return s.dir }
