// Package ui_test drives fanout's web UI in a real browser: it starts the
// fanout binary and a faulty destination, sends known traffic, then runs
// run.mjs, which opens the UI in Debian's chromium through playwright-core
// and checks the pages against the admin API.
//
// It needs node, the packages of test/ui (`npm ci --prefix test/ui`, which
// `make test` runs) and chromium at /usr/bin/chromium or $CHROMIUM
// (`apt-get install chromium`, which .ci/run does). When one is missing
// the test fails and says which: a browser test that silently skips is a
// browser test that never runs.
package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/test/fanouttest"
)

// bin is the fanout binary TestMain builds.
var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

const (
	webKey = "wk_ui_web"
	iosKey = "wk_ui_ios"
	// secret is the flaky destination's API key: in its settings, in the
	// X-Api-Key header it sends, and echoed by its 400 answers. No page may
	// show it.
	secret = "sk_live_ui_do_not_show_4242"
	token  = "adm_ui_token_1234"
)

// sink is the faulty destination: three webhook endpoints.
//
//	/ok        200 after a few milliseconds
//	/flaky     400 echoing the API key for events with properties.fail
//	           "reject"; 503 on the first attempt of those with "once";
//	           otherwise 200
//	/limited   429 with Retry-After of an hour, every time
type sink struct {
	URL string

	mu   sync.Mutex
	seen map[string]int // flaky attempts by messageId
}

func newSink(t *testing.T) *sink {
	s := &sink{seen: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ok", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		// Simulated destination latency, so the latency chart has a shape.
		time.Sleep(time.Duration(2+rand.IntN(30)) * time.Millisecond)
		w.Write([]byte(`{"ok":true}`))
	})
	mux.HandleFunc("POST /flaky", func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			MessageID  string `json:"messageId"`
			Properties struct {
				Fail string `json:"fail"`
			} `json:"properties"`
		}
		json.NewDecoder(r.Body).Decode(&ev)
		s.mu.Lock()
		s.seen[ev.MessageID]++
		n := s.seen[ev.MessageID]
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case ev.Properties.Fail == "reject":
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"userId is required; key %s has no default user"}`, r.Header.Get("X-Api-Key"))
		case ev.Properties.Fail == "once" && n == 1:
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":"maintenance, try again"}`))
		default:
			w.Write([]byte(`{"ok":true}`))
		}
	})
	mux.HandleFunc("POST /limited", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"error":"rate limit exceeded"}`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// config connects source web to ok, flaky and limited, and source ios to
// ok; adminToken is empty or the admin_token; minFree is storage.min_free.
func config(s *sink, adminToken, minFree string) string {
	var b strings.Builder
	if adminToken != "" {
		fmt.Fprintf(&b, "admin_token: %s\n", adminToken)
	}
	fmt.Fprintf(&b, "storage:\n  min_free: %s\n", minFree)
	fmt.Fprintf(&b, `sources:
  - name: web
    write_key: %s
  - name: ios
    write_key: %s
destinations:
  - name: ok
    type: webhook
    sources: [web, ios]
    settings:
      url: %s/ok
  - name: flaky
    type: webhook
    sources: [web]
    settings:
      url: %s/flaky
      secret: whsec_dWktdGVzdC1zaWduaW5nLWtleQ==
      headers:
        X-Api-Key: %s
    delivery:
      retry_window: 1h
  - name: limited
    type: webhook
    sources: [web]
    settings:
      url: %s/limited
    delivery:
      concurrency: 4
`, webKey, iosKey, s.URL, s.URL, secret, s.URL)
	return b.String()
}

// traffic is the known traffic: on web, 20 orders, 3 the flaky
// destination rejects, 2 it delivers on retry, 2 identifies and a page;
// on ios, 5 screens.
func traffic(t *testing.T, trackingURL string) {
	t.Helper()
	var web []map[string]any
	for i := range 20 {
		web = append(web, map[string]any{"type": "track", "event": "Order Completed", "userId": fmt.Sprintf("u%d", i%4),
			"properties": map[string]any{"order_id": fmt.Sprintf("o-%d", i), "revenue": 10 + i, "currency": "EUR"}})
	}
	for i := range 3 {
		web = append(web, map[string]any{"type": "track", "event": "Coupon Applied", "anonymousId": fmt.Sprintf("anon-%d", i),
			"properties": map[string]any{"coupon": "SPRING", "fail": "reject"}})
	}
	for i := range 2 {
		web = append(web, map[string]any{"type": "track", "event": "Checkout Started", "userId": fmt.Sprintf("u%d", i),
			"properties": map[string]any{"fail": "once"}})
	}
	web = append(web,
		map[string]any{"type": "identify", "userId": "u1", "traits": map[string]any{"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro"}},
		map[string]any{"type": "identify", "userId": "u2", "traits": map[string]any{"email": "grace@example.com", "name": "Grace Hopper"}},
		map[string]any{"type": "page", "userId": "u1", "name": "Pricing", "properties": map[string]any{"path": "/pricing"}},
	)
	var ios []map[string]any
	for i := range 5 {
		ios = append(ios, map[string]any{"type": "screen", "userId": fmt.Sprintf("u%d", i), "name": "Cart"})
	}
	batch(t, trackingURL, webKey, web)
	batch(t, trackingURL, iosKey, ios)
}

func batch(t *testing.T, trackingURL, key string, events []map[string]any) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"batch": events})
	if err != nil {
		t.Fatal(err)
	}
	fanouttest.Post(t, trackingURL, key, "/v1/batch", string(body))
}

// admin GETs an admin API path with the token, when not empty, and decodes
// the JSON answer into v. It returns the status code.
func admin(t *testing.T, base, path, tok string, v any) int {
	t.Helper()
	req, _ := http.NewRequest("GET", base+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if v != nil && res.StatusCode == 200 {
		if err := json.NewDecoder(res.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	return res.StatusCode
}

type pair struct {
	Source, Destination  string
	DeliveredFirst       int `json:"delivered_first_attempt"`
	DeliveredRetry       int `json:"delivered_after_retries"`
	Failed, PendingRetry int
	Received             int
}

// settle waits until the known traffic has met its fate: everything
// delivered to ok, flaky's rejections failed and its retries delivered,
// and limited's queue paused by the 429.
func settle(t *testing.T, srv *fanouttest.Server, tok string) {
	t.Helper()
	want := map[string]func(p pair) bool{
		"web/ok":    func(p pair) bool { return p.DeliveredFirst == 28 },
		"ios/ok":    func(p pair) bool { return p.DeliveredFirst == 5 },
		"web/flaky": func(p pair) bool { return p.DeliveredFirst == 23 && p.DeliveredRetry == 2 && p.Failed == 3 },
	}
	var last []pair
	ok := fanouttest.Eventually(context.Background(), 60*time.Second, func() bool {
		var o struct{ Pairs []pair }
		admin(t, srv.AdminURL, "/api/v1/overview?range=1h", tok, &o)
		last = o.Pairs
		done := 0
		for _, p := range o.Pairs {
			if f := want[p.Source+"/"+p.Destination]; f != nil && f(p) {
				done++
			}
		}
		if done < len(want) {
			return false
		}
		var ds []struct {
			Name  string
			State *struct {
				Queues []struct {
					Source      string
					PausedUntil *time.Time `json:"paused_until"`
				}
			}
		}
		admin(t, srv.AdminURL, "/api/v1/destinations", tok, &ds)
		for _, d := range ds {
			if d.Name == "limited" && d.State != nil {
				for _, q := range d.State.Queues {
					if q.Source == "web" && q.PausedUntil != nil {
						return true
					}
				}
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("the known traffic did not settle within 60s; last overview pairs: %+v", last)
	}
}

// TestUI starts three fanouts on the same faulty destination: one without
// a token, on which run.mjs checks every page; one with admin_token set,
// on which it checks the login form; and one whose storage.min_free no
// disk has, whose ingest refuses events, on which it checks the storage
// banner. Beside them, two nodes of a cluster on a throwaway PostgreSQL,
// on which it checks the Cluster page (the first fanout, on the embedded
// store, shows it as no cluster). The API of the second must refuse requests without the token
// and serve the page's files without. The first two keep a 1 MB reserve,
// so that no banner shows on a nearly full test machine.
func TestUI(t *testing.T) {
	browser := fanouttest.NewBrowser(t, "ui", "playwright-core")
	s := newSink(t)
	open := fanouttest.Start(t, bin, fanouttest.Config{YAML: config(s, "", "1MB")})
	locked := fanouttest.Start(t, bin, fanouttest.Config{YAML: config(s, token, "1MB")})
	full := fanouttest.Start(t, bin, fanouttest.Config{YAML: config(s, "", "1000TB")})

	for path, want := range map[string]int{"/api/v1/sources": 401, "/api/v1/overview": 401, "/metrics": 401, "/": 200, "/healthz": 200} {
		if got := admin(t, locked.AdminURL, path, "", nil); got != want {
			t.Errorf("GET %s without the token: %d, want %d", path, got, want)
		}
	}
	if got := admin(t, locked.AdminURL, "/api/v1/sources", token, nil); got != 200 {
		t.Errorf("GET /api/v1/sources with the token: %d, want 200", got)
	}
	if got := admin(t, open.AdminURL, "/api/v1/sources", "", nil); got != 200 {
		t.Errorf("GET /api/v1/sources on loopback without a token: %d, want 200", got)
	}

	clustered := startCluster(t, s)

	traffic(t, open.TrackingURL)
	traffic(t, locked.TrackingURL)
	settle(t, open, "")
	settle(t, locked, token)

	_, err := browser.Run(t, "run.mjs",
		"FANOUT_ADMIN_URL="+open.AdminURL,
		"FANOUT_TRACKING_URL="+open.TrackingURL,
		"FANOUT_WRITE_KEY="+webKey,
		"FANOUT_LOCKED_ADMIN_URL="+locked.AdminURL,
		"FANOUT_FULL_ADMIN_URL="+full.AdminURL,
		"FANOUT_CLUSTER_ADMIN_URL="+clustered.AdminURL,
		"FANOUT_ADMIN_TOKEN="+token,
		"FANOUT_SECRET="+secret,
		"SCREENSHOTS="+filepath.Join(mustGetwd(t), "screenshots"),
	)
	if err != nil {
		t.Fatalf("the browser checks failed (%v); see the output above and the screenshots in test/ui/screenshots", err)
	}
}

// startCluster starts two nodes on one throwaway PostgreSQL database,
// delivering to the ok destination, the second with a destination more
// (so that their pipelines differ and the Cluster page warns), and
// returns the first once the two share the partitions.
func startCluster(t *testing.T, s *sink) *fanouttest.Server {
	t.Helper()
	dsn := pgtest.Start(t)
	yaml := fmt.Sprintf(`sources:
  - name: web
    write_key: %s
destinations:
  - name: ok
    type: webhook
    sources: [web]
    settings:
      url: %s/ok
`, webKey, s.URL)
	nodes := []*fanouttest.Server{
		fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml}),
		fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml + fmt.Sprintf(`  - name: extra
    type: webhook
    sources: [web]
    settings:
      url: %s/ok
`, s.URL)}),
	}
	shared := fanouttest.Eventually(context.Background(), 30*time.Second, func() bool {
		var v fanouttest.ClusterView
		if admin(t, nodes[0].AdminURL, "/api/v1/cluster", "", &v) != 200 || len(v.Nodes) != 2 {
			return false
		}
		for _, n := range v.Nodes {
			if !n.Live || len(n.Partitions) != 32 {
				return false
			}
		}
		return true
	})
	if !shared {
		t.Fatal("the two cluster nodes did not share the partitions within 30s")
	}
	return nodes[0]
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
