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
//
// # A server dies with its owner
//
// pg_ctl detaches the postmaster (a session of its own): nothing stops it
// when the process that started it, its owner, is killed (SIGKILL, a test
// timeout, Ctrl-C) before Stop. Two things see to it that it does not
// outlive its owner for long:
//
//   - A watchdog: StartServer first starts a small shell, in a session of
//     its own (so that Ctrl-C and a kill of the owner's process group do
//     not reach it), whose stdin is a pipe only the owner holds the write
//     end of. The kernel closes that end however the owner ends; the shell
//     then reads end-of-file, stops the server (pg_ctl stop -m immediate)
//     and removes its directory. Stop closes the pipe too, after stopping
//     the server itself, so the watchdog finds nothing left to do. This
//     needs no signal handling in the owner, no polling and no help from
//     PostgreSQL, and works the same in a test binary and in `fanout bench`.
//   - A reaper, for the case the watchdog was killed with its owner (a
//     kill of every process, the OOM killer): each directory holds an
//     owner file with the owner's PID and start time (the start time tells
//     a reused PID from the owner), and every StartServer first stops the
//     servers of the pgtest directories whose owner is gone and removes
//     those directories.
//
// The watchdog alone would leave a server running forever once it is
// killed; the reaper alone would leave it running until the next start,
// which may be the next day.
package pgtest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	// watchdog stops the server and removes dir once its stdin, a pipe
	// whose write end is in watchdogs, reaches end-of-file.
	watchdog *exec.Cmd
}

// ownerFile is the file in a server's directory naming its owner: the PID
// and start time of the process that started it.
const ownerFile = "owner"

// watchdogScript waits for end-of-file on stdin, then runs its arguments
// after the first (pg_ctl stop) if the server in directory $1 is running,
// and removes the directory.
const watchdogScript = `dir=$1; shift
cat >/dev/null
if [ -f "$dir/data/postmaster.pid" ]; then "$@" >/dev/null 2>&1; fi
rm -rf "$dir"`

// watchdogs holds the write end of each running server's watchdog pipe,
// by directory, until Stop closes it. Kept here rather than in the Server,
// so that a Server dropped without Stop does not have its pipe closed by
// the garbage collector while something still uses the server by its DSN.
var watchdogs struct {
	mu sync.Mutex
	w  map[string]*os.File
}

// StartServer creates a cluster in a new temporary directory and starts it.
// Stop stops it and removes the directory. It first stops the servers
// whose owner is gone (see the package doc).
func StartServer(opts Options) (*Server, error) {
	bin, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	var asUser string
	if os.Geteuid() == 0 {
		asUser = "postgres"
	}
	reap(bin, asUser)
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{dir: dir, binDir: bin, asUser: asUser}
	if err := s.start(opts); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// dirPrefix starts the name of every server's directory in os.TempDir.
const dirPrefix = "pgtest-"

func (s *Server) start(opts Options) error {
	if err := s.own(); err != nil {
		return err
	}
	if s.asUser != "" {
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

// own writes the owner file and starts the watchdog, before there is a
// server to leave behind.
func (s *Server) own() error {
	if id, ok := procID(os.Getpid()); ok {
		if err := os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(id), 0o644); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgtest: watchdog: %w", err)
	}
	defer r.Close()
	stop := s.command("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop")
	cmd := exec.Command("/bin/sh", append([]string{"-c", watchdogScript, "pgtest-watchdog", s.dir}, stop...)...)
	cmd.Stdin = r
	// In /, so as to hold no directory of the owner's busy, and to be
	// one the postgres user can enter.
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("pgtest: start the watchdog: %w", err)
	}
	s.watchdog = cmd
	watchdogs.mu.Lock()
	if watchdogs.w == nil {
		watchdogs.w = map[string]*os.File{}
	}
	watchdogs.w[s.dir] = w
	watchdogs.mu.Unlock()
	return nil
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
	argv := s.command(name, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// command is the command line that runs one of the PostgreSQL binaries, as
// s.asUser if set.
func (s *Server) command(name string, args ...string) []string {
	path := filepath.Join(s.binDir, name)
	if s.asUser != "" {
		return append([]string{"runuser", "-u", s.asUser, "--", path}, args...)
	}
	return append([]string{path}, args...)
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
// and removes its directory. Calling it again does nothing.
func (s *Server) Stop() error {
	var err error
	if s.running() {
		if out, stopErr := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop"); stopErr != nil {
			err = fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", stopErr, out)
		}
	}
	if s.watchdog != nil {
		watchdogs.mu.Lock()
		w := watchdogs.w[s.dir]
		delete(watchdogs.w, s.dir)
		watchdogs.mu.Unlock()
		w.Close()
		s.watchdog.Wait()
		s.watchdog = nil
	}
	if rmErr := os.RemoveAll(s.dir); err == nil && rmErr != nil {
		err = fmt.Errorf("pgtest: %w", rmErr)
	}
	return err
}

// running reports whether the server's postmaster runs: its PID file names
// a live process whose command line names the data directory. The check on
// the command line keeps a stale PID file (its server killed, the PID
// since reused) from having pg_ctl signal another process.
func (s *Server) running() bool {
	pid, err := s.PID()
	if err != nil {
		return false
	}
	if _, ok := procID(pid); !ok {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	// Without /proc, trust the PID file as pg_ctl does.
	return err != nil || strings.Contains(string(cmdline), filepath.Join(s.dir, "data"))
}

// reap stops the servers of the pgtest directories in os.TempDir whose
// owner is gone, and removes the directories. A directory without a
// readable owner file is left alone: it is being created, or its owner
// cannot be told (another user's, or a system without /proc).
func reap(binDir, asUser string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		var pid int
		var start string
		if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
			continue
		}
		if id, ok := procID(pid); ok && id == string(b) {
			continue
		}
		old := &Server{dir: dir, binDir: binDir, asUser: asUser}
		if err := old.Stop(); err != nil {
			slog.Warn("pgtest: stopping the server of a process that is gone", "dir", dir, "owner_pid", pid, "err", err)
			continue
		}
		slog.Info("pgtest: stopped the server of a process that is gone", "dir", dir, "owner_pid", pid)
	}
}

// procID identifies process pid: its PID and start time (in clock ticks
// since boot, from /proc/<pid>/stat), which together no other process has.
// ok is false when the process does not exist, is a zombie, or /proc cannot
// tell.
func procID(pid int) (id string, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	// pid (comm) state ppid ... starttime is field 22; comm may hold
	// spaces and parentheses, so count from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", false
	}
	return fmt.Sprintf("%d %s\n", pid, f[19]), true
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

// PID returns the process id of the server's postmaster, from its PID
// file: every other process of the server is its child (the bench counts
// the server's CPU with it).
func (s *Server) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

// Dir returns the server's temporary directory, which holds its data, its
// socket and its log.
func (s *Server) Dir() string { return s.dir }
