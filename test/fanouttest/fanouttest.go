// Package fanouttest runs the real fanout binary for end-to-end tests: it
// builds the binary once per test package, writes a configuration file into
// a temporary directory, starts `fanout serve` on free loopback ports, waits
// until its admin /healthz answers, and stops (or SIGKILLs) it again. A
// Receiver stands in for the webhook destination and records what arrives.
//
// The tests that use it live beside it under test/: they talk to fanout
// only through its public contracts (the command line, the configuration
// file, the tracking API and the webhook requests), as a user would.
package fanouttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/pgtest"
)

// Package is the import path of the fanout command.
const Package = "github.com/fanout/fanout/cmd/fanout"

// Build compiles the fanout command into dir and returns the binary's path.
// It runs the go command found on PATH (go test puts its own first), from
// the current directory, which must be inside the fanout module. Under
// go test -race, the binary is built with -race too.
//
// go test caches a package's result by the package's own dependencies and
// the files the test reads. The binary is built by a subprocess, so its
// sources are neither: Build lists them (and go.mod, go.sum), and Start
// stats each from the running test, which makes a change to fanout's code
// rerun the tests that use the binary instead of reporting a cached pass.
// (Build runs in TestMain, before go test records what a test reads.)
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "fanout")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, Package)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", Package, err, out)
	}
	if sources, err = listSources(); err != nil {
		return "", err
	}
	return bin, nil
}

// sources are the files of the main module that the binary is built from.
var sources []string

// listSources lists the files of the main module that the fanout command is
// built from.
func listSources() ([]string, error) {
	const format = `{{if .Module}}{{if .Module.Main}}` +
		`{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}` +
		`{{range .EmbedFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}` +
		`{{$.Module.GoMod}}{{"\n"}}` +
		`{{end}}{{end}}`
	out, err := exec.Command("go", "list", "-deps", "-f", format, Package).Output()
	if err != nil {
		return nil, fmt.Errorf("go list -deps %s: %w", Package, err)
	}
	files := strings.Fields(string(out))
	if len(files) == 0 {
		return nil, fmt.Errorf("go list -deps %s: no source files of the main module", Package)
	}
	// go.sum beside go.mod pins the dependencies' contents.
	return append(files, filepath.Join(filepath.Dir(files[len(files)-1]), "go.sum")), nil
}

// Config is what a test chooses about the server it runs. One source, "web",
// is connected to one webhook destination, "hook".
type Config struct {
	// WriteKey is the write key of source "web".
	WriteKey string
	// WebhookURL is where the webhook destination delivers.
	WebhookURL string
	// Concurrency is the webhook's delivery.concurrency; 0 keeps the default.
	Concurrency int
	// DataDir is the server's data_dir. Default: a new t.TempDir(). Set it to
	// restart a server on the data of a previous one.
	DataDir string
	// Postgres is storage.postgres: a DSN (from pgtest.Start) stores the
	// jobs in PostgreSQL; empty keeps the embedded store in DataDir.
	Postgres string
	// YAML, when not empty, replaces source "web" and webhook "hook": it is
	// the rest of the configuration file after listen, admin_listen,
	// data_dir and network (sources, destinations, admin_token), for a
	// test that needs several of them. WriteKey, WebhookURL and
	// Concurrency are then unused.
	YAML string
}

// Server is one running `fanout serve` subprocess.
type Server struct {
	// TrackingURL is the tracking API's base URL, such as http://127.0.0.1:41234.
	TrackingURL string
	// AdminURL is the admin API's base URL.
	AdminURL string
	// DataDir is the data_dir the server runs on.
	DataDir string
	// LogPath is the file that receives the server's stdout and stderr.
	LogPath string

	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// ReadyTimeout bounds how long Start waits for /healthz to answer.
const ReadyTimeout = 30 * time.Second

// Start writes a configuration file for cfg into a temporary directory,
// starts `bin serve` with it on free loopback ports, and returns once the
// admin /healthz answers 200. The process is stopped in t.Cleanup: SIGTERM,
// then SIGKILL if it has not exited within 20 seconds. If the test failed,
// the tail of the server's log is logged.
func Start(t testing.TB, bin string, cfg Config) *Server {
	t.Helper()
	for _, f := range sources {
		os.Stat(f) // recorded by go test as an input of the test; see Build
	}
	dir := t.TempDir()
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(dir, "data")
	}
	// A port found free can be taken by another process before fanout
	// binds it; then fanout exits at once, and another pair is tried.
	const attempts = 3
	for i := 1; ; i++ {
		s, err := start(t, bin, cfg, dir)
		if err == nil {
			return s
		}
		if i == attempts || !strings.Contains(s.LogTail(5), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("fanout serve could not bind its ports, trying others: %v", err)
	}
}

func start(t testing.TB, bin string, cfg Config, dir string) (*Server, error) {
	t.Helper()
	listen, admin := FreeAddr(t), FreeAddr(t)
	configPath := filepath.Join(dir, "fanout.yaml")
	if err := os.WriteFile(configPath, configYAML(cfg, listen, admin), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{
		TrackingURL: "http://" + listen,
		AdminURL:    "http://" + admin,
		DataDir:     cfg.DataDir,
		LogPath:     filepath.Join(dir, "fanout.log"),
		t:           t,
		done:        make(chan struct{}),
	}
	logFile, err := os.Create(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, "serve", "--config", configPath)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s serve: %v", bin, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		logFile.Close()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.Stop()
		// A killed server never reports its races by its exit status.
		if b, err := os.ReadFile(s.LogPath); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("fanout serve reported a data race; see %s", s.LogPath)
		}
		if t.Failed() {
			t.Logf("fanout serve log (%s), last lines:\n%s", s.LogPath, s.LogTail(40))
		}
	})
	return s, s.waitReady()
}

// configYAML is the configuration file of the DESIGN.md format for cfg.
func configYAML(cfg Config, listen, admin string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "listen: %s\n", listen)
	fmt.Fprintf(&b, "admin_listen: %s\n", admin)
	fmt.Fprintf(&b, "data_dir: %s\n", strconv.Quote(cfg.DataDir))
	b.WriteString("network:\n  allow_private: true   # the receiver is an httptest server on loopback\n")
	if cfg.Postgres != "" {
		fmt.Fprintf(&b, "storage:\n  postgres: %s\n", strconv.Quote(cfg.Postgres))
	}
	if cfg.YAML != "" {
		b.WriteString(cfg.YAML)
		return b.Bytes()
	}
	b.WriteString("sources:\n")
	fmt.Fprintf(&b, "  - name: web\n    write_key: %s\n", strconv.Quote(cfg.WriteKey))
	b.WriteString("destinations:\n")
	b.WriteString("  - name: hook\n    type: webhook\n    sources: [web]\n")
	fmt.Fprintf(&b, "    settings:\n      url: %s\n", strconv.Quote(cfg.WebhookURL))
	b.WriteString("    delivery:\n      timeout: 10s\n")
	if cfg.Concurrency > 0 {
		fmt.Fprintf(&b, "      concurrency: %d\n", cfg.Concurrency)
	}
	return b.Bytes()
}

// waitReady polls the admin /healthz until it answers 200, the process
// exits, or ReadyTimeout passes.
func (s *Server) waitReady() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(ReadyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		res, err := client.Get(s.AdminURL + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fanout serve not ready after %v (last: %v); log:\n%s", ReadyTimeout, err, s.LogTail(40))
		}
		select {
		case <-s.done:
			return fmt.Errorf("fanout serve exited before it was ready: %v; log:\n%s", s.err, s.LogTail(40))
		case <-tick.C:
		}
	}
}

// Kill sends SIGKILL, as a crash of the process would, and waits until the
// process is gone.
func (s *Server) Kill() {
	s.t.Helper()
	select {
	case <-s.done:
		s.t.Fatalf("fanout serve had already exited: %v; log:\n%s", s.err, s.LogTail(40))
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.t.Fatalf("kill fanout serve: %v", err)
	}
	<-s.done
}

// Stop asks the server to shut down with SIGTERM and waits for it; after 20
// seconds it kills it. It returns the process's exit error (nil for a
// clean exit). Calling it on a stopped server returns how it ended.
func (s *Server) Stop() error {
	select {
	case <-s.done:
		return s.err
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.t.Errorf("fanout serve did not exit within 20s of SIGTERM; killing it")
		s.cmd.Process.Kill()
		<-s.done
	}
	return s.err
}

// Exited reports whether the process has exited.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// LogTail returns the last n lines the server wrote to stdout and stderr.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago: the port of a listener opened on port 0 and closed again.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Eventually polls cond every 20 ms until it returns true or timeout passes,
// and reports whether it did.
func Eventually(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-tick.C:
		}
	}
}

// Main is the TestMain of a package that runs the fanout binary: it builds
// the binary into a temporary directory, sets *bin to its path, runs the
// tests (through pgtest.Run, so that they may start a throwaway PostgreSQL
// with pgtest.Start) and removes the directory.
func Main(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "fanout-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin, err = Build(dir)
	if err != nil {
		os.RemoveAll(dir)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// ClusterView is the body of the admin API's GET /api/v1/cluster.
type ClusterView struct {
	Self  int64 `json:"self"`
	Nodes []struct {
		ID         int64  `json:"id"`
		Name       string `json:"name"`
		Live       bool   `json:"live"`
		Partitions []int  `json:"partitions"`
	} `json:"nodes"`
}
