package admin

import (
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/stats"
)

// setup returns the admin handler over an empty configuration and stats
// database, with token as admin_token.
func setup(t *testing.T, token string) http.Handler {
	t.Helper()
	cfg := &config.Config{}
	st, err := stats.Open(stats.Options{Dir: filepath.Join(t.TempDir(), "stats")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return New(Options{Config: cfg, Registry: destinations.Registry{}, Stats: st, Token: token})
}

func get(h http.Handler, method, path, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestUI checks that the embedded UI is served without the token, and
// that nothing else is.
func TestUI(t *testing.T) {
	h := setup(t, "tok")
	var asset string
	fs.WalkDir(uiFiles, "ui/dist/assets", func(p string, d fs.DirEntry, err error) error {
		if strings.HasSuffix(p, ".js") {
			asset = strings.TrimPrefix(p, "ui/dist")
		}
		return nil
	})
	if asset == "" {
		t.Fatal("no JavaScript under ui/dist/assets: run `make ui`")
	}
	tests := []struct {
		method, path, token string
		status              int
		cache               string
	}{
		{"GET", "/", "", 200, "no-cache"},
		{"HEAD", "/", "", 200, "no-cache"},
		{"GET", asset, "", 200, "immutable"},
		{"GET", "/assets/missing.js", "", 404, ""},
		{"GET", "/healthz", "", 200, ""},
		{"POST", "/", "", 401, ""},
		{"GET", "/index.html", "", 401, ""},
		{"GET", "/api/v1/sources", "", 401, ""},
		{"GET", "/metrics", "", 401, ""},
		{"GET", "/debug/pprof/", "", 401, ""},
		{"GET", "/assets/../api/v1/sources", "", 401, ""},
		{"GET", "/assets/", "", 401, ""},
		{"GET", "/assets/", "tok", 404, ""},
		{"GET", "/api/v1/sources", "tok", 200, ""},
	}
	for _, tt := range tests {
		w := get(h, tt.method, tt.path, tt.token)
		if w.Code != tt.status {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, w.Code, tt.status)
		}
		if tt.cache != "" && !strings.Contains(w.Header().Get("Cache-Control"), tt.cache) {
			t.Errorf("%s %s: Cache-Control %q, want %s", tt.method, tt.path, w.Header().Get("Cache-Control"), tt.cache)
		}
	}
	w := get(h, "GET", "/", "")
	if body := w.Body.String(); !strings.Contains(body, `<div id="app">`) || !strings.Contains(body, asset) {
		t.Errorf("GET / is not the built index.html naming %s:\n%s", asset, body)
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
}

func TestSeries(t *testing.T) {
	h := setup(t, "")
	w := get(h, "GET", "/api/v1/series?range=1h&step=5m", "")
	var sr stats.Series
	if err := json.Unmarshal(w.Body.Bytes(), &sr); w.Code != 200 || err != nil {
		t.Fatalf("GET /api/v1/series: %d %v %s", w.Code, err, w.Body)
	}
	if len(sr.Points) < 12 || len(sr.Points) > 13 || sr.Step != int64(5*time.Minute/time.Second) {
		t.Errorf("1h in 5m steps: %d points of %ds", len(sr.Points), sr.Step)
	}
	for _, q := range []string{"step=30s", "step=x", "range=7d&step=1m&from=2020-01-01T00:00:00Z"} {
		if w := get(h, "GET", "/api/v1/series?"+q, ""); w.Code != 400 || !strings.Contains(w.Body.String(), "step") {
			t.Errorf("series?%s: %d %s, want 400 naming the step", q, w.Code, w.Body)
		}
	}
}
