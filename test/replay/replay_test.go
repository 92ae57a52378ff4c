// Package replay_test checks the archive round trip end to end: an event
// whose destination stays down past the retry window is archived, and
// `fanout replay` delivers it once the destination is back.
package replay_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/test/fanouttest"
)

var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

func TestArchiveThenReplay(t *testing.T) {
	var up atomic.Bool
	var mu sync.Mutex
	delivered := map[string]int{}
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		delivered[r.Header.Get("webhook-id")]++
		mu.Unlock()
	}))
	t.Cleanup(dest.Close)
	srv := fanouttest.Start(t, bin, fanouttest.Config{YAML: `sources:
  - name: web
    write_key: wk_replay
destinations:
  - name: hook
    type: webhook
    sources: [web]
    settings:
      url: ` + dest.URL + `/hook
    delivery:
      retry_window: 1s
`})

	body := `{"type":"track","messageId":"replay-1","userId":"u1","event":"Order Completed"}`
	fanouttest.Post(t, srv.TrackingURL, "wk_replay", "/v1/track", body)

	// The first attempt fails, the retry comes after the 1 s window: archived.
	ctx := context.Background()
	archive := filepath.Join(srv.DataDir, "archive", "web", "hook", "*.jsonl.gz")
	if !fanouttest.Eventually(ctx, 30*time.Second, func() bool {
		files, _ := filepath.Glob(archive)
		return len(files) > 0
	}) {
		t.Fatalf("no archive file matches %s", archive)
	}

	up.Store(true)
	out, err := exec.Command(bin, "replay", "--source", "web", "--destination", "hook", "--range", "1h",
		"--admin", srv.AdminURL).CombinedOutput()
	if err != nil {
		t.Fatalf("fanout replay: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "replayed 1 archived events of web to hook"; got != want {
		t.Fatalf("fanout replay printed %q, want %q", got, want)
	}
	if !fanouttest.Eventually(ctx, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return delivered["replay-1"] > 0
	}) {
		t.Fatal("the replayed event was not delivered")
	}

	// A replay of a pair that is not connected is refused with a reason.
	out, err = exec.Command(bin, "replay", "--source", "web", "--destination", "nope", "--admin", srv.AdminURL).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no destination \"nope\" connected to source \"web\"`) {
		t.Fatalf("replay to an unknown destination: %v, %s", err, out)
	}
}
