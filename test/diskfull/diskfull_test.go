// Package diskfull_test checks that a full disk is a 503, never a crash:
// fanout runs on a small tmpfs that the test fills under load. Ingest must
// answer 503 with Retry-After while the disk is short of space, the process
// must live through the disk filling up completely, every event that got a
// 200 must be delivered, and ingest must resume by itself, without a
// restart, once space is freed.
//
// It mounts the tmpfs itself, so it runs as root (as CI does) and is
// skipped otherwise.
package diskfull_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/test/fanouttest"
)

var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

const (
	writeKey = "wk_diskfull"
	mb       = 1 << 20
	// minFree is storage.min_free; the ballast is a quarter of it.
	minFree = 8 * mb
	// resumeTimeout bounds how long ingest may take to resume once space
	// is freed.
	resumeTimeout = 30 * time.Second
	senders       = 4
	batchSize     = 50
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it in cleanup, after the server (started later) has stopped.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root; run as root (CI does) to fill a real filesystem")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill grows the filler file until at most leave bytes are free (0: until
// the filesystem refuses another page), as another process sharing the
// disk would.
func fill(t *testing.T, f *os.File, dir string, leave int64) {
	t.Helper()
	buf := make([]byte, mb)
	for _, chunk := range []int{mb, 4 << 10} {
		for {
			free := freeBytes(t, dir)
			if leave > 0 && free <= leave {
				return
			}
			n := chunk
			if leave > 0 {
				n = int(min(int64(chunk), free-leave))
			}
			if _, err := f.Write(buf[:n]); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					break
				}
				t.Fatal(err)
			}
		}
	}
}

// load posts batches from several senders until stopped, and keeps what
// fanout answered.
type load struct {
	url    string
	client *http.Client
	next   atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup

	ok, unavailable atomic.Int64
	lastOK          atomic.Int64 // UnixNano of the last 200

	mu    sync.Mutex
	acked []string
	errs  []string
}

func startLoad(url string) *load {
	l := &load{url: url + "/v1/batch", stop: make(chan struct{}),
		client: &http.Client{Timeout: 60 * time.Second}}
	for range senders {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if l.post() {
					continue
				}
				time.Sleep(20 * time.Millisecond) // as an SDK backs off, briefly
			}
		}()
	}
	return l
}

func (l *load) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

// post sends one batch and reports whether it got a 200.
func (l *load) post() bool {
	first := l.next.Add(batchSize) - batchSize
	ids := make([]string, batchSize)
	evs := make([]fanouttest.Track, batchSize)
	for i := range evs {
		ids[i] = fmt.Sprintf("e%07d", first+int64(i))
		evs[i] = fanouttest.Track{Type: "track", MessageID: ids[i], UserID: fmt.Sprintf("u%d", i), Event: "Disk Filled",
			Properties: map[string]any{"padding": strings.Repeat("p", 200)}}
	}
	body, _ := json.Marshal(map[string]any{"batch": evs})
	req, _ := fanouttest.NewRequest(l.url, writeKey, body)
	res, err := l.client.Do(req)
	if err != nil {
		l.fail("request failed (did fanout die?): %v", err)
		return false
	}
	defer res.Body.Close()
	got, _ := io.ReadAll(res.Body)
	var r struct {
		Success bool   `json:"success"`
		Message string `json:"message"`
	}
	jsonErr := json.Unmarshal(got, &r)
	switch {
	case res.StatusCode == http.StatusOK && jsonErr == nil && r.Success:
		l.mu.Lock()
		l.acked = append(l.acked, ids...)
		l.mu.Unlock()
		l.ok.Add(1)
		l.lastOK.Store(time.Now().UnixNano())
		return true
	case res.StatusCode == http.StatusServiceUnavailable:
		l.unavailable.Add(1)
		if res.Header.Get("Retry-After") == "" {
			l.fail("503 without Retry-After")
		}
		if jsonErr != nil || r.Success || r.Message == "" || res.Header.Get("Content-Type") != "application/json" {
			l.fail("503 without a JSON error body: %s", got)
		}
	default:
		l.fail("status %d: %s", res.StatusCode, got)
	}
	return false
}

func (l *load) halt() {
	close(l.stop)
	l.wg.Wait()
}

// storage reads the admin API's disk space state.
func storage(t *testing.T, s *fanouttest.Server) (state struct {
	Accepting    bool  `json:"accepting"`
	Degraded     bool  `json:"degraded"`
	BallastBytes int64 `json:"ballast_bytes"`
	DiskFull     int64 `json:"disk_full"`
}) {
	t.Helper()
	res, err := http.Get(s.AdminURL + "/api/v1/storage")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(&state); err != nil {
		t.Fatalf("/api/v1/storage: %v", err)
	}
	return state
}

// metric reads one unlabelled sample from the admin /metrics.
func metric(t *testing.T, s *fanouttest.Server, name string) string {
	t.Helper()
	if lines := s.Metrics(t, name+" "); len(lines) > 0 {
		return strings.TrimPrefix(lines[0], name+" ")
	}
	return "missing"
}

func TestFullDiskIs503NeverACrash(t *testing.T) {
	fs := mountTmpfs(t, 64*mb)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{})
	srv := fanouttest.Start(t, bin, fanouttest.Config{
		DataDir: filepath.Join(fs, "data"),
		YAML: fmt.Sprintf(`storage:
  min_free: %dMB
sources:
  - name: web
    write_key: %s
destinations:
  - name: hook
    type: webhook
    sources: [web]
    settings:
      url: %q
`, minFree/mb, writeKey, recv.URL),
	})
	if st := storage(t, srv); !st.Accepting || st.BallastBytes != minFree/4 {
		t.Fatalf("at start: %+v, want accepting with a %d-byte ballast (free %d)", st, minFree/4, freeBytes(t, fs))
	}
	filler, err := os.Create(filepath.Join(fs, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()

	l := startLoad(srv.TrackingURL)
	stopped := false
	defer func() {
		if !stopped {
			l.halt()
		}
	}()
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.ok.Load() >= 20 }) {
		t.Fatalf("no load accepted: %d ok, errors %v", l.ok.Load(), l.errs)
	}

	// 1. Another process takes the disk down to the reserve: ingest stops
	// with 503s while the process and delivery go on.
	fill(t, filler, fs, minFree-mb)
	if !fanouttest.Eventually(t.Context(), 10*time.Second, func() bool { return l.unavailable.Load() > 0 }) {
		t.Fatalf("no 503 with %d bytes free and min_free %d", freeBytes(t, fs), minFree)
	}
	t.Logf("below the reserve (%d bytes free): %d requests accepted, first 503s", freeBytes(t, fs), l.ok.Load())

	// 2. Then it fills the disk completely. Whatever still writes (delivery,
	// the stats) may meet ENOSPC: the ballast absorbs it, and the process
	// must live.
	fill(t, filler, fs, 0)
	full := time.Now()
	time.Sleep(5 * time.Second)
	if srv.Exited() {
		t.Fatalf("fanout exited on a full disk:\n%s", srv.LogTail(30))
	}
	st := storage(t, srv)
	t.Logf("disk full for 5 s: %d bytes free, storage state %+v, %d 503s so far", freeBytes(t, fs), st, l.unavailable.Load())
	if st.Accepting {
		t.Errorf("accepting events on a full disk: %+v", st)
	}
	if v := metric(t, srv, "fanout_storage_accepting"); v != "0" {
		t.Errorf("fanout_storage_accepting = %s on a full disk, want 0", v)
	}
	t.Logf("metrics on a full disk: fanout_storage_degraded %s, fanout_storage_disk_full_total %s, fanout_storage_ballast_bytes %s",
		metric(t, srv, "fanout_storage_degraded"), metric(t, srv, "fanout_storage_disk_full_total"), metric(t, srv, "fanout_storage_ballast_bytes"))

	// 3. Space is freed: ingest resumes by itself.
	if err := filler.Truncate(0); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	okBefore := l.ok.Load()
	if !fanouttest.Eventually(t.Context(), resumeTimeout, func() bool { return l.ok.Load() > okBefore+10 }) {
		t.Fatalf("ingest did not resume within %s of freeing space (%d bytes free, state %+v)",
			resumeTimeout, freeBytes(t, fs), storage(t, srv))
	}
	resumed := time.Since(freed)
	l.halt()
	stopped = true
	if st := storage(t, srv); !st.Accepting || st.Degraded || st.BallastBytes != minFree/4 {
		t.Errorf("after space came back: %+v, want accepting, not degraded, ballast back", st)
	}
	if a, d := metric(t, srv, "fanout_storage_accepting"), metric(t, srv, "fanout_storage_degraded"); a != "1" || d != "0" {
		t.Errorf("after space came back: fanout_storage_accepting %s, fanout_storage_degraded %s; want 1, 0", a, d)
	}

	// 4. Every event that got a 200 is delivered.
	l.mu.Lock()
	acked, errs := l.acked, l.errs
	l.mu.Unlock()
	for _, e := range errs {
		t.Errorf("load: %s", e)
	}
	var missing []string
	fanouttest.Eventually(t.Context(), 60*time.Second, func() bool {
		missing = recv.Missing(acked)
		return len(missing) == 0
	})
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged events not delivered, such as %v", len(missing), len(acked), missing[:min(5, len(missing))])
	}
	if srv.Exited() {
		t.Fatalf("fanout exited:\n%s", srv.LogTail(30))
	}
	if log, err := os.ReadFile(srv.LogPath); err == nil && bytes.Contains(log, []byte("panic")) {
		t.Errorf("fanout logged a panic; see %s", srv.LogPath)
	}
	t.Logf("figures: %d requests answered 200 (%d events), %d answered 503; disk full for %s; ingest resumed %s after space was freed; %d of %d acknowledged events delivered (%d deliveries, duplicates included)",
		l.ok.Load(), len(acked), l.unavailable.Load(), freed.Sub(full).Round(time.Millisecond),
		resumed.Round(time.Millisecond), len(acked)-len(missing), len(acked), recv.Total())
}
