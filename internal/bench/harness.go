// Package bench runs fanout's benchmark scenarios: each starts its own
// fanout and sink processes on loopback with a temp data dir, drives load for
// a bounded time, prints a table and writes the figures as JSON.
//
// Figures from one scenario are compared against a baseline measured in the
// same run (the bare HTTP client, the quiet latency, the single-queue CPU
// cost), because the machines these run on are shared and noisy.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fanout/fanout/internal/sink"
)

// Options are the knobs shared by every scenario.
type Options struct {
	// Exe is the fanout binary to start for servers and sinks.
	Exe string
	// Dir holds the scenario's data dirs, configs and logs. Kept for
	// inspection when Keep is set, removed otherwise.
	Dir  string
	Keep bool
	// Duration bounds each load phase.
	Duration time.Duration
	// Events is the backlog scenario's number of waiting events.
	Events int
	// Kills is how many times the crash scenario kills the server
	// (0: DefaultKills) and the cluster scenario one of its three nodes
	// (0: no kill phase).
	Kills int
	// Interval is how often the soak scenario samples the server. Default
	// 1m.
	Interval time.Duration
	// Out is where the JSON figures go.
	Out string
	// Visibility is "on" (stats, debugger and metrics fed, as in
	// production), "off", or "both" to measure their cost in one run
	// (throughput only).
	Visibility string
	// Log receives progress lines.
	Log io.Writer
	// Storage lists the job stores to run the scenario on (StorePebble,
	// StorePostgres), in order; see ParseStorage. Default the embedded
	// store alone. Only throughput, backlog and crash take StorePostgres.
	Storage []string
}

// env owns the processes of one scenario run.
type env struct {
	opts  Options
	procs []*proc
	n     int
	// storage is the job store of the servers started: StorePebble or
	// StorePostgres; pg is the PostgreSQL of the latter.
	storage string
	pg      *postgres
	// collect keeps the rows of the scenario's table in rows, for a table
	// of several stores side by side.
	collect bool
	rows    [][2]string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.opts.Log, "  "+format+"\n", args...)
}

// start runs the fanout binary with args, its output in a log file.
func (e *env) start(name string, args ...string) (*proc, error) {
	return e.startEnv(name, nil, args...)
}

// startEnv is start with environ added to the bench's own environment.
func (e *env) startEnv(name string, environ []string, args ...string) (*proc, error) {
	e.n++
	logf, err := os.Create(filepath.Join(e.opts.Dir, fmt.Sprintf("%02d-%s.log", e.n, name)))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.opts.Exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = e.opts.Dir
	if environ != nil {
		cmd.Env = append(os.Environ(), environ...)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	return p, nil
}

// stop asks p to exit (SIGTERM) and waits, then kills it if it lingers.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func (e *env) close() {
	for _, p := range e.procs {
		select {
		case <-p.done:
		default:
			p.stop()
		}
	}
	if e.pg != nil {
		if err := e.pg.srv.Stop(); err != nil {
			e.logf("stop PostgreSQL: %v", err)
		}
		e.pg = nil
	}
	if !e.opts.Keep {
		os.RemoveAll(e.opts.Dir)
	}
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startSink starts `fanout sink` with extra flags and waits until it answers.
func (e *env) startSink(name string, flags ...string) (string, *proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	p, err := e.start(name, append([]string{"sink", "--quiet", "--listen", addr}, flags...)...)
	if err != nil {
		return "", nil, err
	}
	return addr, p, waitHTTP("http://"+addr+"/_sink/stats", p)
}

// server is one running `fanout serve`.
type server struct {
	*proc
	track, admin string // base URLs
	dataDir      string
}

// startServer writes a configuration of fresh loopback addresses, dataDir
// (by default one of its own under the work dir) and pipeline (the YAML of
// the sources and destinations), and starts `fanout serve` with it. The
// sinks are on loopback, which webhooks refuse unless allowed.
func (e *env) startServer(name, pipeline, dataDir string, flags ...string) (*server, error) {
	return e.startServerEnv(name, pipeline, dataDir, nil, flags...)
}

// startServerEnv is startServer with environ added to the process's
// environment.
func (e *env) startServerEnv(name, pipeline, dataDir string, environ []string, flags ...string) (*server, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if dataDir == "" {
		dataDir = filepath.Join(e.opts.Dir, name+"-data")
	}
	storage, err := e.storageYAML(dataDir)
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("listen: %s\nadmin_listen: %s\ndata_dir: %s\nnetwork:\n  allow_private: true\n%s%s", listen, admin, dataDir, storage, pipeline)
	path := filepath.Join(e.opts.Dir, name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := e.startEnv(name, environ, append([]string{"serve", "--config", path, "--log-level", "warn"}, flags...)...)
	if err != nil {
		return nil, err
	}
	s := &server{proc: p, track: "http://" + listen, admin: "http://" + admin, dataDir: dataDir}
	return s, waitHTTP(s.admin+"/healthz", p)
}

func waitHTTP(url string, p *proc) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready (see its log)", p.name)
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer %s within 60s", p.name, url)
}

func sinkStats(addr string) (sink.Stats, error) {
	var s sink.Stats
	resp, err := http.Get("http://" + addr + "/_sink/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

func sinkPost(addr, action string) error {
	resp, err := http.Post("http://"+addr+"/_sink/"+action, "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// waitAccepted polls the sink until it has accepted at least n distinct
// events, or the timeout passes. It returns the time the count was reached.
func waitAccepted(addr string, n uint64, timeout time.Duration) (time.Time, sink.Stats, error) {
	return waitSink(addr, timeout, func(s sink.Stats) bool { return s.Unique >= n })
}

// waitSink polls the sink until done says so, or the timeout passes.
func waitSink(addr string, timeout time.Duration, done func(sink.Stats) bool) (time.Time, sink.Stats, error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := sinkStats(addr)
		if err != nil {
			return time.Time{}, s, err
		}
		if done(s) {
			return time.Now(), s, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, s, fmt.Errorf("sink has %d events (%d unique), not what was awaited, after %v", s.Accepted, s.Unique, timeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// peakRSS returns the process's peak resident set size in bytes (VmHWM).
func peakRSS(pid int) (int64, error) { return procStatusKB(pid, "VmHWM:") }

// rss returns the process's resident set size in bytes now (VmRSS).
func rss(pid int) (int64, error) { return procStatusKB(pid, "VmRSS:") }

func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpuTime returns the user+system CPU time the process has used.
func cpuTime(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	return st.self, err
}

// treeCPU returns the user+system CPU time of the process and of its
// children, those still running and those it has waited for: a server's
// whole CPU when its workers are its children, as PostgreSQL's backends
// are the postmaster's. A child that ends between two readings moves from
// the running ones to the waited-for ones, so a difference of two
// readings counts it once.
func treeCPU(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	sum := st.self + st.children
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		child, err := strconv.Atoi(filepath.Base(dir))
		if err != nil || child == pid {
			continue
		}
		if c, err := readStat(child); err == nil && c.ppid == pid {
			sum += c.self
		}
	}
	return sum, nil
}

// procStat is what the bench reads of /proc/PID/stat.
type procStat struct {
	ppid     int
	self     time.Duration // utime+stime
	children time.Duration // cutime+cstime: the children waited for
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name may hold spaces; fields start after its ')', with
	// the state, the ppid (field 4 of proc(5)) and utime at f[11].
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var n [5]int64
	for i, k := range []int{1, 11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		n[i] = v
	}
	const ticks = 100 // USER_HZ on Linux
	return procStat{
		ppid:     int(n[0]),
		self:     time.Duration(n[1]+n[2]) * time.Second / ticks,
		children: time.Duration(n[3]+n[4]) * time.Second / ticks,
	}, nil
}

// writeJSON writes the scenario's figures.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// tracker sends events to a tracking API.
type tracker struct {
	url      string
	writeKey string
	client   *http.Client
}

func newTracker(url, writeKey string) *tracker {
	return &tracker{url: url, writeKey: writeKey, client: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxIdleConns: 256},
	}}
}

// appendEvent appends one track event of about 350 bytes, the size of a
// typical analytics event, to b. It is built by appending, not formatting:
// the generator shares the machine's cores with fanout, and each
// microsecond it spends per event is one fanout does not get. messageID
// and source are ASCII letters, digits and '-', which JSON strings take as
// they are.
func appendEvent(b, messageID []byte, source string) []byte {
	b = append(b, `{"type":"track","messageId":"`...)
	b = append(b, messageID...)
	b = append(b, `","userId":"user-`...)
	b = append(b, messageID[len(messageID)-min(4, len(messageID)):]...)
	b = append(b, `","event":"Order Completed","properties":{"orderId":"`...)
	b = append(b, messageID...)
	b = append(b, `","revenue":42.5,"currency":"USD","products":[{"sku":"SKU-1","price":19.99,"quantity":2}]},`...)
	b = append(b, `"context":{"library":{"name":"fanout-bench","version":"1.0"},"ip":"10.0.0.1","source":"`...)
	b = append(b, source...)
	return append(b, `"}}`...)
}

// appendID appends the messageId prefix-i-j to b.
func appendID(b []byte, prefix string, i int64, j int) []byte {
	b = append(b, prefix...)
	b = append(b, '-')
	b = strconv.AppendInt(b, i, 10)
	b = append(b, '-')
	return strconv.AppendInt(b, int64(j), 10)
}

// send posts body, a /v1/batch request; a nil error means a 200.
func (t *tracker) send(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, "POST", t.url+"/v1/batch", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.SetBasicAuth(t.writeKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

var quietLogger = slog.New(slog.DiscardHandler)
