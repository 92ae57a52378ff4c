package server_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/registry"
	"github.com/fanout/fanout/destinations/webhook"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/latency"
	"github.com/fanout/fanout/internal/redact"
	"github.com/fanout/fanout/internal/server"
	"github.com/fanout/fanout/internal/stats"
)

// Secrets the test configures; none may appear in any admin answer.
const (
	writeKey     = "wk_web_secret_0001"
	appWriteKey  = "wk_app_secret_0002"
	apiKey       = "supersecretkey42"
	bearer       = "tok_abcdef1234567"
	signing      = "signing-secret-xyz"
	adminTokenOK = "admin-token-for-tests"
)

// scripted is a destination that answers by the event's
// properties.script: "ok" 200; "fail-once" 500 then 200; "reject" 400,
// echoing the API key it was sent; "throttle-once" 429 then 200.
type scripted struct {
	mu    sync.Mutex
	tries map[string]int
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var ev struct {
		MessageID  string `json:"messageId"`
		Properties struct {
			Script string `json:"script"`
		} `json:"properties"`
	}
	json.Unmarshal(body, &ev)
	s.mu.Lock()
	s.tries[ev.MessageID]++
	n := s.tries[ev.MessageID]
	s.mu.Unlock()
	switch {
	case ev.Properties.Script == "fail-once" && n == 1:
		w.WriteHeader(500)
		fmt.Fprintf(w, `{"error":"database timeout after %dms on shard %d"}`, 3000+n, len(ev.MessageID))
	case ev.Properties.Script == "reject":
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":"invalid email for user 1234%d","key":%q}`, n, r.URL.Query().Get("api_key"))
	case ev.Properties.Script == "throttle-once" && n == 1:
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(429)
		io.WriteString(w, `{"error":"slow down"}`)
	default:
		io.WriteString(w, `{"ok":true}`)
	}
}

func writeConfig(t *testing.T, dir, token string, sinkURL, okURL, deadURL string) string {
	t.Helper()
	tok := ""
	if token != "" {
		tok = "admin_token: " + token
	}
	return configFile(t, dir, fmt.Sprintf(`%s
sources:
  - {name: web, write_key: %s}
  - {name: app, write_key: %s}
destinations:
  - name: sink
    type: webhook
    sources: [web]
    settings:
      url: %s?api_key=%s
      secret: %s
      headers: {Authorization: "Bearer %s"}
    delivery: {concurrency: 4, timeout: 5s}
  - name: tracks
    type: trackonly
    sources: [web]
    settings: {url: %s}
  - name: dead
    type: webhook
    sources: [app]
    settings: {url: %s}
    delivery: {retry_window: 1ms}
`, tok, writeKey, appWriteKey, sinkURL, apiKey, signing, bearer, okURL, deadURL))
}

// configFile writes a configuration file into dir and returns its path:
// listen and admin_listen on free loopback ports, data_dir dir/data,
// private networks allowed (the destinations are httptest servers), then
// rest, the sources, destinations and whatever else the test needs.
func configFile(t *testing.T, dir, rest string) string {
	t.Helper()
	cfg := fmt.Sprintf(`
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
data_dir: %s
network: {allow_private: true}
%s`, filepath.Join(dir, "data"), rest)
	p := filepath.Join(dir, "fanout.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testRegistry is every integration plus "trackonly", a webhook that takes
// only track calls, so that identify calls are unsupported.
func testRegistry() destinations.Registry {
	reg := registry.All()
	to := *webhook.Integration
	to.Type = "trackonly"
	to.EventTypes = []string{"track"}
	reg["trackonly"] = &to
	return reg
}

type running struct {
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error
	// err is what Run returned, once stop has returned.
	err error
	// token is the config's admin_token, sent with every admin request.
	token string
}

// start runs the server of cfgPath on the test registry, logging nowhere.
func start(t *testing.T, cfgPath string) *running {
	t.Helper()
	return run(t, cfgPath, testRegistry(), server.Options{Logger: quietLogger()})
}

// run loads cfgPath with reg and runs a server with opts (its Config and
// Registry set from those) until stop, or the end of the test.
func run(t *testing.T, cfgPath string, reg destinations.Registry, opts server.Options) *running {
	t.Helper()
	cfg, err := config.Load(cfgPath, reg)
	if err != nil {
		t.Fatal(err)
	}
	opts.Config, opts.Registry = cfg, reg
	return runWith(t, opts)
}

// runWith runs a server with opts (its Config and Registry set) until stop,
// or the end of the test.
func runWith(t *testing.T, opts server.Options) *running {
	t.Helper()
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, done: make(chan error, 1), token: opts.Config.AdminToken}
	go func() { r.done <- srv.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.err = <-r.done
	r.cancel = nil
}

func (r *running) send(t *testing.T, key, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+r.srv.TrackingAddr()+"/v1/batch", strings.NewReader(body))
	req.SetBasicAuth(key, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// fetch GETs an admin path with the token; the caller closes the body.
func (r *running) fetch(t *testing.T, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+r.srv.AdminAddr()+path, nil)
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func (r *running) get(t *testing.T, path string, v any) int {
	t.Helper()
	resp := r.fetch(t, path)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, secret := range []string{writeKey, appWriteKey, apiKey, bearer, signing} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("GET %s shows the secret %q:\n%s", path, secret, b)
		}
	}
	if v != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, b)
		}
	}
	return resp.StatusCode
}

func track(id, script string, extra string) string {
	return fmt.Sprintf(`{"type":"track","event":"Order Completed","userId":"u1","messageId":%q,"properties":{"script":%q}%s}`, id, script, extra)
}

func batch(events ...string) string { return `{"batch":[` + strings.Join(events, ",") + `]}` }

func setup(t *testing.T, token string) (*running, string) {
	t.Helper()
	sink := httptest.NewServer(&scripted{tries: map[string]int{}})
	t.Cleanup(sink.Close)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(ok.Close)
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
		w.WriteHeader(503)
		io.WriteString(w, "maintenance window 42")
	}))
	t.Cleanup(dead.Close)
	dir := t.TempDir()
	p := writeConfig(t, dir, token, sink.URL+"/hook", ok.URL, dead.URL)
	return start(t, p), p
}

// TestDeliveryOverview drives known traffic through a sink with scripted
// faults and reads back every count, the latency and the issues, then
// restarts the server and reads the same overview.
func TestDeliveryOverview(t *testing.T) {
	r, cfgPath := setup(t, "")
	var evs []string
	for i := range 6 {
		evs = append(evs, track(fmt.Sprintf("ok-%d", i), "ok", ""))
	}
	for i := range 3 {
		evs = append(evs, track(fmt.Sprintf("fail-%d", i), "fail-once", ""))
	}
	for i := range 2 {
		evs = append(evs, track(fmt.Sprintf("reject-%d", i), "reject", ""))
	}
	for i := range 2 {
		evs = append(evs, track(fmt.Sprintf("throttle-%d", i), "throttle-once", ""))
	}
	evs = append(evs, track("filtered-0", "ok", `,"integrations":{"sink":false}`))
	for i := range 2 {
		evs = append(evs, fmt.Sprintf(`{"type":"identify","userId":"u%d","messageId":"identify-%d","properties":{"script":"ok"}}`, i, i))
	}
	evs = append(evs, `{"type":"nonsense","userId":"u1"}`)
	if code := r.send(t, writeKey, batch(evs...)); code != 200 {
		t.Fatalf("batch answered %d", code)
	}
	if code := r.send(t, writeKey, batch(track("ok-0", "ok", ""))); code != 200 { // a duplicate
		t.Fatalf("duplicate answered %d", code)
	}
	if code := r.send(t, "wk_unknown", batch(track("x", "ok", ""))); code != 401 {
		t.Fatalf("unknown key answered %d", code)
	}
	for i := range 3 {
		r.send(t, appWriteKey, batch(track(fmt.Sprintf("dead-%d", i), "ok", "")))
	}

	want := map[stats.Pair]stats.Counts{
		{Source: "web", Destination: "sink"}:   {Received: 16, Filtered: 1, DeliveredFirst: 8, DeliveredRetry: 5, Failed: 2},
		{Source: "web", Destination: "tracks"}: {Received: 16, Unsupported: 2, DeliveredFirst: 14},
		{Source: "app", Destination: "dead"}:   {Received: 3, Archived: 3},
	}
	var ov stats.Overview
	deadline := time.Now().Add(15 * time.Second)
	for {
		r.get(t, "/api/v1/overview?range=1h", &ov)
		if matches(ov, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !matches(ov, want) {
		t.Fatalf("overview:\n%+v\nwant %+v", ov.Pairs, want)
	}
	if ov.Ingest == nil || ov.Ingest.Accepted != 16+3 || ov.Ingest.Deduplicated != 1 {
		t.Errorf("ingest = %+v, want 19 accepted, 1 deduplicated", ov.Ingest)
	}
	var rejected int64
	for _, n := range ov.Ingest.Rejected {
		rejected += n
	}
	if rejected != 2 { // the nonsense type, and the unknown key
		t.Errorf("rejected = %v, want 2 in all", ov.Ingest.Rejected)
	}
	// The sink's retried deliveries waited at least a second (backoff or
	// Retry-After), and the 429s paused the queue in front of others; the
	// other destination has no faults.
	for _, p := range ov.Pairs {
		switch {
		case p.Destination == "sink" && (p.Latency.Count != 13 || p.Latency.P99 < 1000*(1-latency.RelativeError)):
			t.Errorf("sink latency = %+v, want 13 delivered, p99 over 1s", p.Latency)
		case p.Destination == "tracks" && (p.Latency.Count != 14 || p.Latency.P99 > 1000):
			t.Errorf("tracks latency = %+v, want 14 delivered, p99 under 1s", p.Latency)
		}
	}

	var issues struct{ Issues []stats.Issue }
	r.get(t, "/api/v1/issues?source=web&destination=sink&range=1h", &issues)
	got := map[string]int64{}
	for _, is := range issues.Issues {
		got[fmt.Sprintf("%s %d %s", is.Outcome, is.Status, is.Reason)] = is.Count
		if len(is.Samples) != int(min(is.Count, stats.MaxSamples)) {
			t.Errorf("issue %q has %d samples for %d failures", is.Reason, len(is.Samples), is.Count)
		}
		for _, sm := range is.Samples {
			if sm.Request == nil || sm.Response == nil || sm.Event == "" {
				t.Errorf("sample without the exchange: %+v", sm)
				continue
			}
			if sm.Request.Header.Get("Authorization") != redact.Redacted || !strings.Contains(sm.Request.URL, "api_key="+redact.Redacted) {
				t.Errorf("request not redacted: %s %v", sm.Request.URL, sm.Request.Header)
			}
		}
	}
	wantIssues := map[string]int64{
		`retryable 500 HTTP 500 Internal Server Error: {"error":"database timeout after <n>ms on shard <n>"}`: 3,
		`rejected 400 HTTP 400 Bad Request: {"error":"invalid email for user <n>","key":"[redacted]"}`:        2,
		`retryable 429 HTTP 429 Too Many Requests: {"error":"slow down"}`:                                     2,
	}
	if fmt.Sprint(got) != fmt.Sprint(wantIssues) {
		t.Errorf("issues:\n%v\nwant\n%v", got, wantIssues)
	}

	// Restart: the overview reads the same.
	r.stop()
	r2 := start(t, cfgPath)
	var after stats.Overview
	r2.get(t, "/api/v1/overview?range=1h", &after)
	if !matches(after, want) || after.Latency != ov.Latency {
		t.Errorf("after a restart:\n%+v %+v\nwant\n%+v %+v", after.Pairs, after.Latency, ov.Pairs, ov.Latency)
	}
	var issues2 struct{ Issues []stats.Issue }
	r2.get(t, "/api/v1/issues?source=web&destination=sink&range=1h", &issues2)
	if len(issues2.Issues) != 3 {
		t.Errorf("after a restart, %d issues, want 3", len(issues2.Issues))
	}
}

func matches(ov stats.Overview, want map[stats.Pair]stats.Counts) bool {
	if len(ov.Pairs) != len(want) {
		return false
	}
	for _, p := range ov.Pairs {
		if want[p.Pair] != p.Counts {
			return false
		}
	}
	return true
}

func TestAdminAuth(t *testing.T) {
	r, _ := setup(t, adminTokenOK)
	r.token = ""
	if code := r.get(t, "/api/v1/sources", nil); code != 401 {
		t.Errorf("without the token: %d, want 401", code)
	}
	r.token = "wrong"
	if code := r.get(t, "/metrics", nil); code != 401 {
		t.Errorf("with a wrong token: %d, want 401", code)
	}
	if code := r.get(t, "/healthz", nil); code != 200 {
		t.Errorf("healthz: %d, want 200", code)
	}
	r.token = adminTokenOK
	var srcs []struct{ Name string }
	if code := r.get(t, "/api/v1/sources", &srcs); code != 200 || len(srcs) != 2 {
		t.Errorf("with the token: %d %v", code, srcs)
	}

	open, _ := setup(t, "")
	for _, p := range []string{"/api/v1/sources", "/api/v1/destinations", "/api/v1/queues", "/api/v1/destination-types", "/metrics", "/debug/pprof/"} {
		if code := open.get(t, p, nil); code != 200 {
			t.Errorf("GET %s without a token on loopback: %d", p, code)
		}
	}
	var dests []struct {
		Name     string
		Settings map[string]any
	}
	open.get(t, "/api/v1/destinations", &dests)
	if len(dests) != 3 || dests[0].Settings["secret"] != redact.Redacted {
		t.Errorf("destinations = %+v", dests)
	}
}

// TestEventStream checks that a connected client gets a new event within
// a second.
func TestEventStream(t *testing.T) {
	r, _ := setup(t, "")
	resp, err := http.Get("http://" + r.srv.AdminAddr() + "/api/v1/sources/web/events/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if l := <-lines; !strings.HasPrefix(l, ": following") {
		t.Fatalf("first line %q", l)
	}
	sent := time.Now()
	r.send(t, writeKey, batch(track("stream-1", "ok", "")))
	timeout := time.After(time.Second)
	for {
		select {
		case l := <-lines:
			if strings.HasPrefix(l, "data: ") && strings.Contains(l, `"message_id":"stream-1"`) {
				t.Logf("event arrived %v after it was sent", time.Since(sent))
				return
			}
		case <-timeout:
			t.Fatal("no event within 1s")
		}
	}
}

// TestProfileLabels takes a CPU profile during delivery and checks that
// samples carry the destination's name as a label.
func TestProfileLabels(t *testing.T) {
	r, _ := setup(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			evs := make([]string, 200)
			for j := range evs {
				evs[j] = track(fmt.Sprintf("p-%d-%d", i, j), "ok", "")
			}
			r.send(t, writeKey, batch(evs...))
		}
	}()
	resp, err := http.Get("http://" + r.srv.AdminAddr() + "/debug/pprof/profile?seconds=2")
	if err != nil {
		t.Fatal(err)
	}
	prof, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cancel()
	wg.Wait()
	labels := profileLabels(t, prof)
	// Both destinations take every event; which burns more CPU in two
	// seconds varies, so either one's label will do, with its type.
	if labels["destination=sink"]+labels["destination=tracks"] == 0 ||
		labels["destination=sink"] != labels["type=webhook"] || labels["destination=tracks"] != labels["type=trackonly"] {
		t.Fatalf("no samples labelled with a destination and its type; labels: %v", labels)
	}
	t.Logf("labelled samples: %v", labels)
}

// profileLabels counts the samples of a pprof profile by label, decoding
// the protobuf (profile.proto) with protowire: Profile.sample = 2,
// Profile.string_table = 6, Sample.label = 3, Label.key = 1, Label.str = 2.
func profileLabels(t *testing.T, gz []byte) map[string]int {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var strs []string
	var samples [][]byte
	fields(t, b, func(num protowire.Number, v []byte) {
		switch num {
		case 2:
			samples = append(samples, v)
		case 6:
			strs = append(strs, string(v))
		}
	})
	out := map[string]int{}
	for _, s := range samples {
		fields(t, s, func(num protowire.Number, v []byte) {
			if num != 3 {
				return
			}
			var k, sv uint64
			fields(t, v, func(num protowire.Number, x []byte) {
				n, _ := protowire.ConsumeVarint(x)
				switch num {
				case 1:
					k = n
				case 2:
					sv = n
				}
			})
			if int(k) < len(strs) && int(sv) < len(strs) {
				out[strs[k]+"="+strs[sv]]++
			}
		})
	}
	return out
}

// fields calls fn for each length-delimited or varint field of a message;
// a varint's value is passed as its encoding.
func fields(t *testing.T, b []byte, fn func(protowire.Number, []byte)) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad profile tag")
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				t.Fatal("bad profile bytes")
			}
			fn(num, v)
			b = b[m:]
		case protowire.VarintType:
			_, m := protowire.ConsumeVarint(b)
			fn(num, b[:m])
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				t.Fatal("bad profile field")
			}
			b = b[m:]
		}
	}
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
