package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/router"
)

const (
	shopKey    = "wk_shop"
	limitedKey = "wk_limited"
	shop       = "https://shop.example.com"
)

// publicBundle is a handler for the browser and mobile tests: source "web"
// takes any origin; "shop" only https://shop.example.com; "limited" any
// origin at 10 events/s with a burst of 20. Its clock is set by the test.
type publicBundle struct {
	h     *ingest.Handler
	store *pebble.Store
	reg   *prometheus.Registry

	mu  sync.Mutex
	now time.Time
}

func publicSetup(t testing.TB) *publicBundle {
	t.Helper()
	store := openStore(t, nil)
	cfg := &config.Config{
		Sources: []config.Source{
			{Name: "web", WriteKey: webKey},
			{Name: "shop", WriteKey: shopKey, AllowedOrigins: []string{shop}},
			{Name: "limited", WriteKey: limitedKey, RateLimit: 10, RateBurst: 20},
		},
		Destinations: []config.Destination{{Name: "hooks", Type: "webhook", Sources: []string{"web", "shop", "limited"}}},
	}
	b := &publicBundle{store: store, now: now, reg: prometheus.NewRegistry()}
	b.h = ingest.New(ingest.Options{
		Sources:   cfg.Sources,
		Router:    router.New(cfg, destinations.Registry{"webhook": {Type: "webhook"}}),
		Store:     store,
		Now:       func() time.Time { b.mu.Lock(); defer b.mu.Unlock(); return b.now },
		Logger:    slog.New(slog.DiscardHandler),
		PublicURL: "https://t.example.com/",
	})
	b.reg.MustRegister(b.h.Collectors()...)
	return b
}

func (b *publicBundle) advance(d time.Duration) {
	b.mu.Lock()
	b.now = b.now.Add(d)
	b.mu.Unlock()
}

func (b *publicBundle) serve(r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	b.h.ServeHTTP(w, r)
	return w
}

// counter reads a counter from the registry; values are its labels'
// values, in the order of the labels' names (reason before source).
func (b *publicBundle) counter(t testing.TB, name string, values ...string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i, l := range m.GetLabel() {
				if i >= len(values) || l.GetValue() != values[i] {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s%v", name, values)
	return 0
}

func (b *publicBundle) stored(t testing.TB, source string) []map[string]any {
	t.Helper()
	jobs, err := b.store.Pending(context.Background(), jobstore.Queue{Source: source, Destination: "hooks"}, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]map[string]any, len(jobs))
	for i, j := range jobs {
		if out[i], err = j.Event.Fields(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestShortPaths sends what analytics.js sends: each call to /v1/<first
// letter of its type> as text/plain, the write key in the body (and in
// Basic auth), and batches to /v1/b.
func TestShortPaths(t *testing.T) {
	b := publicSetup(t)
	calls := []struct{ path, typ, body string }{
		{"/v1/t", "track", `{"event":"Clicked","properties":{"x":1}}`},
		{"/v1/i", "identify", `{"traits":{"email":"a@example.com"}}`},
		{"/v1/p", "page", `{"name":"Home","properties":{"path":"/"}}`},
		{"/v1/s", "screen", `{"name":"Cart"}`},
		{"/v1/g", "group", `{"groupId":"g1"}`},
		{"/v1/a", "alias", `{"previousId":"anon-1"}`},
	}
	for i, c := range calls {
		body := `{"writeKey":"` + webKey + `","userId":"u1","anonymousId":"anon-1","messageId":"ajs-` + c.typ + `",` +
			`"timestamp":"2024-05-01T11:59:00.000Z","sentAt":"2024-05-01T11:59:00.000Z",` + c.body[1:]
		r := httptest.NewRequest("POST", c.path, strings.NewReader(body))
		r.Header.Set("Content-Type", "text/plain")
		if i%2 == 0 { // with and without Basic auth, as analytics.js versions differ
			r.SetBasicAuth(webKey, "")
		}
		if w := b.serve(r); w.Code != 200 || w.Body.String() != `{"success":true}` {
			t.Fatalf("%s: %d %s", c.path, w.Code, w.Body)
		}
	}
	// A batch, gzip and chunked, as analytics-kotlin sends it.
	batch := `{"batch":[{"type":"track","event":"Opened","userId":"u1","messageId":"m-b1","timestamp":"2024-05-01T11:59:00.000Z"}],` +
		`"sentAt":"2024-05-01T11:59:00.000Z","writeKey":"` + webKey + `"}`
	r := httptest.NewRequest("POST", "/v1/b", io.MultiReader(bytes.NewReader(gzipped(t, []byte(batch)))))
	r.ContentLength = -1
	r.Header.Set("Content-Type", "text/plain")
	r.Header.Set("Content-Encoding", "gzip")
	if w := b.serve(r); w.Code != 200 {
		t.Fatalf("/v1/b: %d %s", w.Code, w.Body)
	}

	got := b.stored(t, "web")
	if len(got) != len(calls)+1 {
		t.Fatalf("stored %d events, want %d", len(got), len(calls)+1)
	}
	for i, c := range calls {
		if got[i]["type"] != c.typ || got[i]["messageId"] != "ajs-"+c.typ {
			t.Errorf("%s stored as %v %v, want type %s", c.path, got[i]["type"], got[i]["messageId"], c.typ)
		}
		// The server's clock is 12:00:00.123: sentAt == timestamp means
		// the event happened as it was sent.
		if got[i]["timestamp"] != nowJSON {
			t.Errorf("%s: timestamp %v, want the skew-corrected %s", c.path, got[i]["timestamp"], nowJSON)
		}
	}
	if got[len(calls)]["event"] != "Opened" {
		t.Errorf("batch event stored as %v", got[len(calls)])
	}

	// The short paths have the semantics of the long forms, errors included.
	for path, want := range map[string]int{"/v1/t": 400, "/v1/g": 400, "/v1/a": 400, "/v1/b": 400, "/v1/x": 404} {
		r := httptest.NewRequest("POST", path, strings.NewReader(`{"writeKey":"`+webKey+`","userId":"u"}`))
		if w := b.serve(r); w.Code != want {
			t.Errorf("%s with an incomplete event: %d %s, want %d", path, w.Code, w.Body, want)
		}
	}
}

// TestClientMetrics: analytics.js's /v1/m is answered and counted, not stored.
func TestClientMetrics(t *testing.T) {
	b := publicSetup(t)
	body := `{"series":[{"type":"Counter","metric":"analytics_js.invoke.track","value":1,"tags":["library:analytics.js"]},` +
		`{"type":"Counter","metric":"analytics_js.invoke.page","value":1,"tags":["x"]}]}`
	r := httptest.NewRequest("POST", "/v1/m", strings.NewReader(body))
	r.Header.Set("Content-Type", "text/plain")
	r.Header.Set("Origin", "https://anywhere.example.com")
	w := b.serve(r)
	if w.Code != 200 || w.Header().Get("Access-Control-Allow-Origin") != "https://anywhere.example.com" {
		t.Fatalf("/v1/m: %d %s %v", w.Code, w.Body, w.Header())
	}
	b.serve(httptest.NewRequest("POST", "/v1/m", strings.NewReader("not json")))
	if got := b.counter(t, "fanout_ingest_client_metrics_total"); got != 2 {
		t.Errorf("fanout_ingest_client_metrics_total = %v, want 2", got)
	}
	if n := len(b.stored(t, "web")); n != 0 {
		t.Errorf("stored %d events for metrics", n)
	}
}

func TestCORS(t *testing.T) {
	b := publicSetup(t)
	ev := func(key string) string {
		return `{"writeKey":"` + key + `","userId":"u1","event":"e"}`
	}
	tests := []struct {
		name, method, path, origin, body string
		status                           int
		allow                            string // Access-Control-Allow-Origin
	}{
		{"default: any origin", "POST", "/v1/t", "https://a.example.org", ev(webKey), 200, "https://a.example.org"},
		{"listed origin reflected", "POST", "/v1/t", shop, ev(shopKey), 200, shop},
		{"listed origin, other case", "POST", "/v1/t", "https://SHOP.example.com", ev(shopKey), 200, "https://SHOP.example.com"},
		{"origin not on the source's list", "POST", "/v1/t", "https://evil.example", ev(shopKey), 403, ""},
		{"no Origin: not a page", "POST", "/v1/track", "", ev(shopKey), 200, ""},
		{"error answers carry it too", "POST", "/v1/t", shop, `{"writeKey":"nope"}`, 401, shop},
		{"settings, listed origin", "GET", "/v1/projects/" + shopKey + "/settings", shop, "", 200, shop},
		{"settings, other origin", "GET", "/v1/projects/" + shopKey + "/settings", "https://evil.example", "", 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			r.Header.Set("Content-Type", "text/plain")
			if tt.origin != "" {
				r.Header.Set("Origin", tt.origin)
			}
			w := b.serve(r)
			if w.Code != tt.status {
				t.Fatalf("%d %s, want %d", w.Code, w.Body, tt.status)
			}
			if got := w.Header().Get("Access-Control-Allow-Origin"); got != tt.allow {
				t.Errorf("Access-Control-Allow-Origin %q, want %q", got, tt.allow)
			}
			if tt.origin != "" && !strings.Contains(strings.Join(w.Header().Values("Vary"), ","), "Origin") {
				t.Errorf("Vary %q lacks Origin", w.Header().Values("Vary"))
			}
			if tt.status == 403 {
				var res struct{ Message string }
				if json.Unmarshal(w.Body.Bytes(), &res) != nil || !strings.Contains(res.Message, "allowed_origins") {
					t.Errorf("403 body %s", w.Body)
				}
			}
		})
	}
	if got := b.counter(t, "fanout_ingest_refused_total", "origin", "shop"); got != 2 {
		t.Errorf("refused{shop,origin} = %v, want 2", got)
	}

	// Preflights.
	for _, path := range []string{"/v1/t", "/v1/b", "/v1/batch", "/v1/m"} {
		r := httptest.NewRequest("OPTIONS", path, nil)
		r.Header.Set("Origin", shop)
		r.Header.Set("Access-Control-Request-Method", "POST")
		r.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
		w := b.serve(r)
		h := w.Header()
		if w.Code != 204 || h.Get("Access-Control-Allow-Origin") != shop || h.Get("Access-Control-Max-Age") == "" ||
			!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") ||
			!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Authorization") ||
			!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Content-Type") {
			t.Errorf("preflight %s: %d %v", path, w.Code, h)
		}
	}
}

// TestCORSListOnly: when every source lists its origins, an origin on no
// list is refused before anything else, preflight included.
func TestCORSListOnly(t *testing.T) {
	store := openStore(t, nil)
	cfg := &config.Config{Sources: []config.Source{{Name: "shop", WriteKey: shopKey, AllowedOrigins: []string{shop}}}}
	h := ingest.New(ingest.Options{Sources: cfg.Sources, Router: router.New(cfg, nil), Store: store})
	for _, method := range []string{"OPTIONS", "POST"} {
		r := httptest.NewRequest(method, "/v1/t", strings.NewReader(`{}`))
		r.Header.Set("Origin", "https://evil.example")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 403 || w.Header().Get("Access-Control-Allow-Origin") != "" || !strings.Contains(w.Body.String(), "allowed_origins") {
			t.Errorf("%s from another origin: %d %v %s", method, w.Code, w.Header(), w.Body)
		}
	}
}

func TestSettings(t *testing.T) {
	b := publicSetup(t)
	r := httptest.NewRequest("GET", "/v1/projects/"+webKey+"/settings", nil)
	w := b.serve(r)
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v %s", w.Code, w.Header(), w.Body)
	}
	if cc := w.Header().Get("Cache-Control"); !strings.Contains(cc, "public") || !strings.Contains(cc, "max-age=") {
		t.Errorf("Cache-Control %q", cc)
	}
	if v := w.Header().Get("Vary"); v != "Origin" {
		t.Errorf("Vary %q, want Origin: a CDN must not serve this answer to a page", v)
	}
	var doc struct {
		Integrations map[string]struct {
			APIKey   string `json:"apiKey"`
			APIHost  string `json:"apiHost"`
			Protocol string `json:"protocol"`
		}
		Plan    map[string]any
		Metrics struct {
			Host       string
			SampleRate float64
		}
		RemotePlugins []any
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	seg := doc.Integrations["Segment.io"]
	if len(doc.Integrations) != 1 || seg.APIKey != webKey || seg.APIHost != "t.example.com/v1" || seg.Protocol != "https" {
		t.Errorf("integrations %+v", doc.Integrations)
	}
	if doc.Metrics.Host != "t.example.com/v1" || doc.Plan == nil || doc.RemotePlugins == nil {
		t.Errorf("document %s", w.Body)
	}

	// A CDN revalidates with the ETag.
	r = httptest.NewRequest("GET", "/v1/projects/"+webKey+"/settings", nil)
	r.Header.Set("If-None-Match", w.Header().Get("ETag"))
	if w := b.serve(r); w.Code != 304 {
		t.Errorf("revalidation: %d", w.Code)
	}

	w = b.serve(httptest.NewRequest("GET", "/v1/projects/nope/settings", nil))
	if w.Code != 404 || !strings.Contains(w.Body.String(), "unknown write key") || w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("unknown key: %d %v %s", w.Code, w.Header(), w.Body)
	}
}

// TestRateLimit: source "limited" takes 10 events/s with a burst of 20.
func TestRateLimit(t *testing.T) {
	b := publicSetup(t)
	send := func(key string, n int, id string) *httptest.ResponseRecorder {
		var evs []string
		for i := range n {
			evs = append(evs, `{"type":"track","userId":"u","event":"e","messageId":"`+id+`-`+string(rune('a'+i%26))+string(rune('a'+i/26))+`"}`)
		}
		r := httptest.NewRequest("POST", "/v1/b", strings.NewReader(`{"batch":[`+strings.Join(evs, ",")+`]}`))
		r.SetBasicAuth(key, "")
		return b.serve(r)
	}
	// Below the limit: the burst, then a second's worth each second.
	if w := send(limitedKey, 20, "burst"); w.Code != 200 {
		t.Fatalf("the burst: %d %s", w.Code, w.Body)
	}
	for i := range 5 {
		b.advance(time.Second)
		if w := send(limitedKey, 10, "s"+string(rune('0'+i))); w.Code != 200 {
			t.Fatalf("second %d: %d %s", i, w.Code, w.Body)
		}
	}
	// Beyond it: 429 with Retry-After, nothing stored.
	w := send(limitedKey, 5, "over")
	if w.Code != 429 || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("over the limit: %d Retry-After %q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	// Other sources are not limited.
	if w := send(webKey, 100, "web"); w.Code != 200 {
		t.Fatalf("another source: %d %s", w.Code, w.Body)
	}
	// After the wait it says, the refused events go through.
	b.advance(time.Second)
	if w := send(limitedKey, 5, "over"); w.Code != 200 {
		t.Fatalf("after Retry-After: %d %s", w.Code, w.Body)
	}
	// A request larger than the burst can never pass: a 400, not a 429.
	if w := send(limitedKey, 21, "big"); w.Code != 400 || !strings.Contains(w.Body.String(), "rate_burst") {
		t.Errorf("a batch over the burst: %d %s", w.Code, w.Body)
	}
	if n := len(b.stored(t, "limited")); n != 20+50+5 {
		t.Errorf("stored %d events of limited, want %d: every accepted one, no refused one", n, 75)
	}
	if got := b.counter(t, "fanout_ingest_refused_total", "rate_limit", "limited"); got != 2 {
		t.Errorf("refused{limited,rate_limit} = %v, want 2", got)
	}
	if got := b.counter(t, "fanout_ingest_refused_total", "rate_limit", "web"); got != 0 {
		t.Errorf("refused{web,rate_limit} = %v, want 0", got)
	}
}
