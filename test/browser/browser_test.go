// Package browser_test sends events from Segment's analytics.js in a real
// browser to fanout: it starts the fanout binary with a webhook receiver,
// serves a page from another origin, and runs run.mjs, which loads
// @segment/analytics-next (pinned in package-lock.json) in Debian's
// chromium through playwright-core and makes every call three ways. It
// then checks that the receiver got each call exactly once, as the page
// sent it.
//
// It needs node, the packages of test/browser (`npm ci --prefix
// test/browser`, which `make test` runs) and chromium at /usr/bin/chromium
// or $CHROMIUM. When one is missing the test fails and says which.
package browser_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/test/fanouttest"
)

// bin is the fanout binary TestMain builds.
var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

const writeKey = "wk_browser_web"

// servePage serves page.html and analytics.js's UMD build (and the chunks
// it may load, from /analytics-next/bundles/, as its CDN would) on a
// loopback port of its own: another origin than fanout's. It returns the
// page's origin, named localhost so that it differs from fanout's
// 127.0.0.1 by host as well as by port.
func servePage(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "page.html")
	})
	umd := http.FileServer(http.Dir(filepath.Join("node_modules", "@segment", "analytics-next", "dist", "umd")))
	mux.Handle("GET /analytics-next/bundles/", http.StripPrefix("/analytics-next/bundles/", umd))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprintf("http://localhost:%d", ln.Addr().(*net.TCPAddr).Port)
}

// pageResult is what run.mjs reports of one mode.
type pageResult struct {
	IDs         map[string]string `json:"ids"` // messageId by call
	AnonymousID string            `json:"anonymousId"`
	UserAgent   string            `json:"userAgent"`
	URL         string            `json:"url"`
	// Sent are the events the page posted to fanout.
	Sent []struct {
		Path  string         `json:"path"`
		Event map[string]any `json:"event"`
	} `json:"sent"`
}

func TestAnalyticsJS(t *testing.T) {
	browser := fanouttest.NewBrowser(t, "browser", "playwright-core", "@segment/analytics-next")
	origin := servePage(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{KeepBodies: true})
	// The page's origin is the only one allowed, so CORS is checked for
	// real: a listed origin reflected, preflights answered.
	srv := fanouttest.Start(t, bin, fanouttest.Config{YAML: fmt.Sprintf(`sources:
  - name: web
    write_key: %s
    allowed_origins: [%q]
destinations:
  - name: hook
    type: webhook
    sources: [web]
    settings:
      url: %q
`, writeKey, origin, recv.URL)})

	start := time.Now()
	out, err := browser.Run(t, "run.mjs",
		"PAGE_URL="+origin+"/",
		"FANOUT_URL="+srv.TrackingURL,
		"WRITE_KEY="+writeKey,
	)
	if err != nil {
		t.Fatalf("the page failed (%v); see the output above", err)
	}
	var res struct {
		Modes map[string]pageResult
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatalf("RESULT line: %v", err)
			}
		}
	}
	var ids []string
	for _, m := range res.Modes {
		for _, id := range m.IDs {
			ids = append(ids, id)
		}
	}
	if len(ids) != 15 {
		t.Fatalf("run.mjs reported %d calls, want 5 in each of 3 modes: %+v", len(ids), res.Modes)
	}
	if !fanouttest.Eventually(context.Background(), 30*time.Second, func() bool { return len(recv.Missing(ids)) == 0 }) {
		t.Fatalf("not delivered within 30s: %v", recv.Missing(ids))
	}
	end := time.Now()

	deliveries := map[string]map[string]any{}
	for _, d := range recv.Deliveries() {
		var ev map[string]any
		if err := json.Unmarshal(d.Body, &ev); err != nil {
			t.Fatalf("delivered body is not JSON: %s", d.Body)
		}
		deliveries[d.MessageID] = ev
	}
	for mode, m := range res.Modes {
		user := "user-" + mode
		for call, id := range m.IDs {
			t.Run(mode+"/"+call, func(t *testing.T) {
				if n := recv.Count(id); n != 1 {
					t.Errorf("delivered %d times, want exactly once", n)
				}
				ev := deliveries[id]
				get := func(path string) any {
					var v any = ev
					for _, k := range strings.Split(path, ".") {
						m, _ := v.(map[string]any)
						v = m[k]
					}
					return v
				}
				want := map[string]any{
					"type":                 call,
					"anonymousId":          m.AnonymousID,
					"context.userAgent":    m.UserAgent,
					"context.library.name": "analytics.js",
					"context.page.url":     m.URL,
					"context.page.path":    "/",
					"context.page.title":   "fanout browser test",
				}
				switch call {
				case "identify":
					want["userId"] = user
					want["traits.email"] = user + "@example.com"
					want["traits.plan"] = "pro"
				case "track":
					want["userId"] = user
					want["event"] = "Order Completed"
					want["properties.order_id"] = "o-" + mode
					want["properties.revenue"] = 42.5
				case "page":
					want["userId"] = user
					want["name"] = "Pricing"
					want["category"] = "Docs"
					want["properties.plan"] = "pro"
				case "group":
					want["userId"] = user
					want["groupId"] = "group-" + mode
					want["traits.name"] = "Acme"
					want["traits.employees"] = 12.0
				case "alias":
					// analytics.js sends the current user as userId.
					want["previousId"] = user
				}
				for path, w := range want {
					if got := get(path); got != w {
						t.Errorf("%s = %#v, want %#v", path, got, w)
					}
				}
				// Every field the page sent arrives as it was sent, but for
				// those fanout sets (the timestamp is checked below).
				var sent map[string]any
				for _, s := range m.Sent {
					if s.Event["messageId"] == id {
						sent = s.Event
					}
				}
				if sent == nil {
					t.Fatalf("run.mjs saw no request with messageId %s", id)
				}
				for _, k := range []string{"type", "userId", "anonymousId", "traits", "properties", "event", "name", "category",
					"groupId", "previousId", "context", "integrations"} {
					if !reflect.DeepEqual(ev[k], sent[k]) {
						t.Errorf("%s delivered as %v, sent as %v", k, ev[k], sent[k])
					}
				}
				if v, _ := get("context.library.version").(string); !strings.Contains(v, "1.84.3") {
					t.Errorf("context.library.version = %q, want analytics-next 1.84.3's", v)
				}
				// The page's clock ran an hour behind: the timestamp fanout
				// delivers is corrected to the server's clock.
				ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(get("timestamp")))
				if err != nil || ts.Before(start.Add(-time.Second)) || ts.After(end.Add(time.Second)) {
					t.Errorf("timestamp %v (%v), want the skew-corrected time, between %s and %s",
						get("timestamp"), err, start.Format(time.RFC3339), end.Format(time.RFC3339))
				}
			})
		}
	}
	if t.Failed() {
		t.Logf("deliveries: %d, bad: %v", recv.Total(), recv.Bad())
	}
	// The admin API stays same-origin: no CORS for the page's origin there.
	for _, method := range []string{"GET", "OPTIONS"} {
		req, _ := http.NewRequest(method, srv.AdminURL+"/api/v1/sources", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		if res, err := http.DefaultClient.Do(req); err != nil {
			t.Error(err)
		} else {
			res.Body.Close()
			if v := res.Header.Get("Access-Control-Allow-Origin"); v != "" {
				t.Errorf("admin API %s answered Access-Control-Allow-Origin %q", method, v)
			}
		}
	}
	// What fanout counted of the page's requests.
	for _, line := range srv.Metrics(t, "fanout_ingest_") {
		t.Log(line)
	}
}
