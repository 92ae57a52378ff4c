package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixed is the time the test clock stands at.
var fixed = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// setup returns a sink for opts with a fixed clock and a quiet logger,
// closed when the test ends.
func setup(t *testing.T, opts Options) *Sink {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return fixed }
	}
	opts.Logger = slog.New(slog.DiscardHandler)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// post sends body to the sink's handler and returns the response.
func post(s *Sink, body string, header ...string) *http.Response {
	r := httptest.NewRequest(http.MethodPost, "/hook", strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w.Result()
}

func event(id string, receivedAgo time.Duration) string {
	return fmt.Sprintf(`{"type":"track","messageId":%q,"receivedAt":%q}`, id, fixed.Add(-receivedAgo).Format(time.RFC3339Nano))
}

func TestCounts(t *testing.T) {
	s := setup(t, Options{})
	bodies := []struct {
		body   string
		header []string
	}{
		{event("m1", 10*time.Millisecond), nil},
		{event("m1", 10*time.Millisecond), nil}, // a duplicate
		{"[" + event("m2", 0) + "," + event("m3", 0) + "]", nil},
		{`{"batch":[` + event("m4", 0) + `,` + event("m2", 0) + `]}`, nil}, // m2 again
		{`{"type":"track"}`, []string{"webhook-id", "msg_5"}},
		{`{"type":"track","messageId":"ignored"}`, []string{"webhook-id", "msg_6"}},
		{`{"type":"track"}`, nil}, // no id
		{`not json`, nil},         // one event, no id
		{``, nil},                 // no event
	}
	for _, b := range bodies {
		if resp := post(s, b.body, b.header...); resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", b.body, resp.StatusCode)
		}
	}
	st := s.Stats()
	want := Stats{Requests: 9, Events: 10, Accepted: 10, Unique: 6, Duplicates: 2, NoID: 2, Status: map[int]uint64{200: 9}}
	if st.Requests != want.Requests || st.Events != want.Events || st.Accepted != want.Accepted ||
		st.Unique != want.Unique || st.Duplicates != want.Duplicates || st.NoID != want.NoID ||
		!equalStatus(st.Status, want.Status) {
		t.Errorf("stats = %+v\nwant %+v", st, want)
	}
	if st.Latency.Count != 6 || st.Latency.Max != 10 {
		t.Errorf("latency = %+v, want 6 samples, max 10ms", st.Latency)
	}

	s.Reset()
	if st := s.Stats(); st.Requests != 0 || st.Unique != 0 || len(st.Status) != 0 {
		t.Errorf("after reset: %+v", st)
	}
	post(s, event("m1", 0))
	if st := s.Stats(); st.Duplicates != 0 || st.Unique != 1 {
		t.Errorf("reset kept the ids seen: %+v", st)
	}
}

func equalStatus(a, b map[int]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name       string
		opts       Options
		status     int
		body       string
		retryAfter string
		accepted   uint64
	}{
		{"ok", Options{}, 200, `{"success":true}`, "", 1},
		{"fail", Options{FailRate: 1}, 500, `{"success":false,"error":"injected failure"}`, "", 0},
		{"429", Options{TooManyRate: 1, RetryAfter: 1500 * time.Millisecond}, 429, `{"success":false,"error":"injected 429"}`, "2", 0},
		{"429 default retry-after", Options{TooManyRate: 1}, 429, `{"success":false,"error":"injected 429"}`, "1", 0},
		{"error body", Options{ErrorBodyRate: 1}, 200, `{"success":false,"error":"injected error in a 200 response"}`, "", 0},
		{"down", Options{Down: true, FailRate: 1}, 503, `{"success":false,"error":"the sink is down"}`, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := setup(t, tt.opts)
			resp := post(s, event("m1", 0))
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || string(body) != tt.body {
				t.Errorf("got %d %s, want %d %s", resp.StatusCode, body, tt.status, tt.body)
			}
			if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			st := s.Stats()
			if st.Accepted != tt.accepted || st.Status[tt.status] != 1 || st.Events != 1 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func TestFaultMix(t *testing.T) {
	// The same seed gives the same answers; the shares come out near the rates.
	run := func() []int {
		s := setup(t, Options{FailRate: 0.1, TooManyRate: 0.2, ErrorBodyRate: 0.1, Seed: 42})
		var codes []int
		for i := range 2000 {
			codes = append(codes, post(s, event(fmt.Sprint(i), 0)).StatusCode)
		}
		return codes
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Error("two runs with the same seed answered differently")
	}
	count := map[int]int{}
	for _, c := range a {
		count[c]++
	}
	near := func(got int, share float64) bool { return math.Abs(float64(got)-share*2000) < 0.03*2000 }
	if !near(count[500], 0.1) || !near(count[429], 0.2) || !near(count[200], 0.7) {
		t.Errorf("status mix = %v, want about 10%% 500, 20%% 429, 70%% 200", count)
	}
}

func TestDownAndUp(t *testing.T) {
	s := setup(t, Options{})
	srv := httptest.NewServer(s)
	defer srv.Close()
	call := func(method, path string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(event("m", 0)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	steps := []struct {
		method, path string
		want         int
	}{
		{"POST", "/hook", 200},
		{"POST", "/_sink/down", 200},
		{"POST", "/hook", 503},
		{"POST", "/other/path", 503},
		{"POST", "/_sink/up", 200},
		{"POST", "/hook", 200},
		{"GET", "/hook", 405},
		{"GET", "/_sink/down", 405},
		{"GET", "/_sink/nope", 404},
	}
	for _, st := range steps {
		if got := call(st.method, st.path); got != st.want {
			t.Errorf("%s %s = %d, want %d", st.method, st.path, got, st.want)
		}
	}
	resp, err := http.Get(srv.URL + "/_sink/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Requests != 4 || st.Status[200] != 2 || st.Status[503] != 2 || st.Unique != 1 || st.Duplicates != 1 {
		t.Errorf("stats = %+v", st)
	}
	if resp, err := http.Post(srv.URL+"/_sink/reset", "", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("reset: %v", err)
	}
	if st := s.Stats(); st.Requests != 0 {
		t.Errorf("after reset: %+v", st)
	}
}

func TestRateLimitPerKey(t *testing.T) {
	now := fixed
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := setup(t, Options{RateLimit: 2, Key: "header:fanout-source", Now: clock})
	send := func(source string) *http.Response {
		if source == "" {
			return post(s, event("m", 0))
		}
		return post(s, event("m", 0), "Fanout-Source", source)
	}
	// Burst is one second's worth: 2 pass, the third waits half a second.
	for i, want := range []int{200, 200, 429} {
		if resp := send("a"); resp.StatusCode != want {
			t.Fatalf("a #%d = %d, want %d", i, resp.StatusCode, want)
		} else if want == 429 && resp.Header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After = %q, want 1", resp.Header.Get("Retry-After"))
		}
	}
	if resp := send("b"); resp.StatusCode != 200 {
		t.Errorf("b = %d; another key must have its own limit", resp.StatusCode)
	}
	if resp := send(""); resp.StatusCode != 200 {
		t.Errorf("no header = %d", resp.StatusCode)
	}
	mu.Lock()
	now = now.Add(500 * time.Millisecond)
	mu.Unlock()
	if resp := send("a"); resp.StatusCode != 200 {
		t.Errorf("a after 500ms = %d, want 200", resp.StatusCode)
	}
	st := s.Stats()
	if ka := st.Keys["a"]; ka.Requests != 4 || ka.RateLimited != 1 || ka.Accepted != 3 {
		t.Errorf("key a = %+v", ka)
	}
	if kb := st.Keys["b"]; kb.Requests != 1 || kb.RateLimited != 0 {
		t.Errorf("key b = %+v", kb)
	}
	if kn := st.Keys["-"]; kn.Requests != 1 {
		t.Errorf("key - = %+v", kn)
	}
}

func TestGlobalRateLimit(t *testing.T) {
	s := setup(t, Options{RateLimit: 1})
	a := post(s, event("m", 0), "Fanout-Source", "a")
	b := post(s, event("m", 0), "Fanout-Source", "b")
	if a.StatusCode != 200 || b.StatusCode != 429 {
		t.Errorf("got %d, %d: want one global limit", a.StatusCode, b.StatusCode)
	}
	if st := s.Stats(); st.Keys != nil {
		t.Errorf("per-key stats without a key header: %+v", st.Keys)
	}
}

func TestTimeout(t *testing.T) {
	s := setup(t, Options{TimeoutRate: 1})
	srv := httptest.NewServer(s)
	defer srv.Close()
	client := &http.Client{Timeout: 50 * time.Millisecond}
	_, err := client.Post(srv.URL+"/hook", "application/json", strings.NewReader(event("m", 0)))
	if err == nil {
		t.Fatal("the request was answered, want it to hang")
	}
	// The handler counts the request once it sees the client leave.
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Timeouts != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("timeouts = %d, want 1", s.Stats().Timeouts)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Stats(); st.Accepted != 0 || len(st.Status) != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestCloseReleasesHangingRequests(t *testing.T) {
	s := setup(t, Options{TimeoutRate: 1})
	done := make(chan struct{})
	go func() {
		post(s, event("m", 0))
		close(done)
	}()
	for s.Stats().Hanging == 0 {
		time.Sleep(time.Millisecond)
	}
	s.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not release the hanging request")
	}
}

func TestLatency(t *testing.T) {
	s := setup(t, Options{Latency: 30 * time.Millisecond, LatencyJitter: 10 * time.Millisecond})
	start := time.Now()
	if resp := post(s, event("m", 0)); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("answered after %v, want at least 30ms", d)
	}
}

func TestLatencyCancelled(t *testing.T) {
	s := setup(t, Options{Latency: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/hook", strings.NewReader(event("m", 0)))
	cancel()
	s.ServeHTTP(httptest.NewRecorder(), r)
	if st := s.Stats(); st.Timeouts != 1 {
		t.Errorf("timeouts = %d, want 1", st.Timeouts)
	}
}

// TestParse checks the events found in each kind of body: each event's id,
// latency in microseconds (-1 for none) and raw bytes.
func TestParse(t *testing.T) {
	at := fixed.Add(-10 * time.Millisecond).Format(time.RFC3339Nano) // 10ms before the clock
	tests := []struct {
		name   string
		body   string
		header []string
		want   []string
	}{
		{"one event", `{"messageId":"m1","receivedAt":"` + at + `"}`, nil,
			[]string{`m1 10000 {"messageId":"m1","receivedAt":"` + at + `"}`}},
		{"surrounding whitespace", " \n{\"messageId\": \"m1\"}\t", nil, []string{`m1 -1 {"messageId": "m1"}`}},
		{"webhook-id wins", `{"messageId":"m1"}`, []string{"Webhook-Id", "msg_1"}, []string{`msg_1 -1 {"messageId":"m1"}`}},
		{"escapes decoded", `{"messageId":"m\u0031\"\\","receivedAt":"` + strings.Replace(at, "T", `\u0054`, 1) + `"}`, nil,
			[]string{`m1"\ 10000 {"messageId":"m\u0031\"\\","receivedAt":"` + strings.Replace(at, "T", `\u0054`, 1) + `"}`}},
		{"last of repeated names", `{"messageId":"m1","messageId":"m2"}`, nil, []string{`m2 -1 {"messageId":"m1","messageId":"m2"}`}},
		{"names are case-sensitive", `{"MessageId":"m1"}`, nil, []string{` -1 {"MessageId":"m1"}`}},
		{"messageId not a string", `{"messageId":12,"receivedAt":"bad"}`, nil, []string{` -1 {"messageId":12,"receivedAt":"bad"}`}},
		{"not an object", `"m1"`, []string{"Webhook-Id", "msg_1"}, []string{`msg_1 -1 "m1"`}},
		{"array", `[{"messageId":"m1"}, {"messageId":"m2","receivedAt":"` + at + `"}]`, nil,
			[]string{`m1 -1 {"messageId":"m1"}`, `m2 10000 {"messageId":"m2","receivedAt":"` + at + `"}`}},
		{"batch", `{"messageId":"top","batch":[{"messageId":"m1"},{"messageId":"m2"}]}`, []string{"Webhook-Id", "batch_1"},
			[]string{`m1 -1 {"messageId":"m1"}`, `m2 -1 {"messageId":"m2"}`}},
		{"batch of non-objects", `{"batch":[1,"m1",null,[{"messageId":"m2"}]]}`, nil,
			[]string{` -1 1`, ` -1 "m1"`, ` -1 null`, ` -1 [{"messageId":"m2"}]`}},
		{"last batch counts", `{"batch":[{"messageId":"m1"}],"batch":[{"messageId":"m2"}]}`, nil, []string{`m2 -1 {"messageId":"m2"}`}},
		{"batch not an array", `{"batch":[{"messageId":"m1"}],"batch":null,"messageId":"m2"}`, nil,
			[]string{`m2 -1 {"batch":[{"messageId":"m1"}],"batch":null,"messageId":"m2"}`}},
		{"empty array", `[]`, nil, nil},
		{"empty batch", `{"batch":[]}`, nil, nil},
		{"invalid JSON", `{"messageId":"m1"`, []string{"Webhook-Id", "msg_1"}, []string{` -1 {"messageId":"m1"`}},
		{"not JSON", `not json`, nil, []string{` -1 not json`}},
		{"empty body", " \n", nil, nil},
	}
	s := setup(t, Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for i := 0; i+1 < len(tt.header); i += 2 {
				h.Set(tt.header[i], tt.header[i+1])
			}
			req := new(request)
			req.body.WriteString(tt.body)
			s.parse(req, h)
			var got []string
			for _, e := range req.events {
				got = append(got, fmt.Sprintf("%s %d %s", e.id, e.latencyUS, e.raw))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("events of %s:\n%q\nwant\n%q", tt.body, got, tt.want)
			}
		})
	}
}

func TestRecordTimes(t *testing.T) {
	var recorded bytes.Buffer
	s := setup(t, Options{Record: &recorded, RecordTimes: true})
	post(s, `[{"messageId":"m1"}, {"messageId":"m2"}]`)
	s.SetDown(true)
	post(s, `{"messageId":"m3"}`)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	at := fixed.UnixNano()
	want := fmt.Sprintf(`{"at":%d,"event":{"messageId":"m1"}}
{"at":%d,"event":{"messageId":"m2"}}
`, at, at)
	if recorded.String() != want {
		t.Errorf("recorded:\n%s\nwant:\n%s", recorded.String(), want)
	}
}

func TestPrintAndRecord(t *testing.T) {
	var printed, recorded bytes.Buffer
	s := setup(t, Options{Print: &printed, Record: &recorded, FailRate: 0})
	post(s, `{ "messageId": "m1",  "receivedAt": "bad" }`)
	post(s, `[{"messageId":"m2"}, {"messageId":"m3"}]`)
	s.SetDown(true)
	post(s, `{"messageId":"m4"}`)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantPrinted := `200 {"messageId":"m1","receivedAt":"bad"}
200 {"messageId":"m2"}
200 {"messageId":"m3"}
503 {"messageId":"m4"}
`
	if printed.String() != wantPrinted {
		t.Errorf("printed:\n%s\nwant:\n%s", printed.String(), wantPrinted)
	}
	wantRecorded := `{"messageId":"m1","receivedAt":"bad"}
{"messageId":"m2"}
{"messageId":"m3"}
`
	if recorded.String() != wantRecorded {
		t.Errorf("recorded:\n%s\nwant:\n%s", recorded.String(), wantRecorded)
	}
}

func TestBodyTooLarge(t *testing.T) {
	s := setup(t, Options{})
	resp := post(s, `"`+strings.Repeat("x", MaxBodyBytes)+`"`)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		opts Options
		want string
	}{
		{Options{FailRate: 1.5}, "fail rate must be between 0 and 1, found 1.5"},
		{Options{FailRate: 0.6, TooManyRate: 0.6}, "fault rates add up to 1.2, more than 1"},
		{Options{Key: "query:x"}, `key must be "global" or "header:NAME", found "query:x"`},
		{Options{Latency: -1}, "latency, latency jitter and retry-after must not be negative"},
	}
	for _, tt := range tests {
		_, err := New(tt.opts)
		if err == nil || err.Error() != tt.want {
			t.Errorf("New(%+v) = %v, want %q", tt.opts, err, tt.want)
		}
	}
}

func TestHistogramAccuracy(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	var values []int64
	for range 100000 {
		// Log-uniform from 1µs to about 100s, the range a sink sees.
		v := int64(math.Exp(rng.Float64() * math.Log(1e8)))
		values = append(values, v)
		h.record(v)
	}
	slices.Sort(values)
	for _, q := range []float64{0.5, 0.95, 0.99, 0.999} {
		exact := float64(values[int(math.Ceil(q*float64(len(values))))-1])
		got := h.quantile(q)
		if math.Abs(got-exact)/exact > 0.01 {
			t.Errorf("p%v = %v, exact %v: more than 1%% off", q*100, got, exact)
		}
	}
}

func TestConcurrent(t *testing.T) {
	s := setup(t, Options{FailRate: 0.2, Key: "header:Fanout-Source", RateLimit: 1e6})
	srv := httptest.NewServer(s)
	defer srv.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				resp, err := http.Post(srv.URL, "application/json", strings.NewReader(event(fmt.Sprint(g, "-", i), 0)))
				if err != nil && !errors.Is(err, context.Canceled) {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if st.Requests != 400 || st.Status[200]+st.Status[500] != 400 || st.Unique != st.Status[200] {
		t.Errorf("stats = %+v", st)
	}
}

// BenchmarkServeHTTP measures the hot path: one single-event request
// answered 200, counted, not printed.
func BenchmarkServeHTTP(b *testing.B) {
	s, _ := New(Options{Logger: slog.New(slog.DiscardHandler)})
	defer s.Close()
	body := []byte(`{"type":"track","event":"Order Completed","userId":"u1","properties":{"revenue":10,"currency":"USD"},"messageId":"00000000","receivedAt":"2026-03-01T12:00:00.123Z","timestamp":"2026-03-01T12:00:00.100Z","context":{"library":{"name":"analytics-go","version":"3.3.0"}}}`)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := httptest.NewRequest(http.MethodPost, "/hook", nil)
		w := &discardWriter{h: http.Header{}}
		rd := bytes.NewReader(body)
		i := 0
		for pb.Next() {
			i++
			rd.Reset(body)
			r.Body = io.NopCloser(rd)
			r.ContentLength = int64(len(body))
			r.Header.Set("Webhook-Id", fmt.Sprint(i))
			s.ServeHTTP(w, r)
		}
	})
}

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// webhookEvent is one event the way the webhook destination delivers it: the
// stored payload, with the server-set messageId, receivedAt and timestamp,
// about 600 bytes.
const webhookEvent = `{"type":"track","event":"Order Completed","userId":"user-1842",` +
	`"properties":{"orderId":"50314b8e9bcf000000000000","total":27.5,"revenue":25.0,"shipping":3,"tax":2.5,"currency":"USD",` +
	`"products":[{"product_id":"507f1f77bcf86cd799439011","sku":"45790-32","name":"Monopoly: 3rd Edition","price":19,"quantity":1}]},` +
	`"context":{"ip":"203.0.113.7","locale":"en-US","library":{"name":"analytics.js","version":"next-1.70.0"}},"integrations":{},` +
	`"messageId":"ajs-next-1714564800000-1842","sentAt":"2026-03-01T11:59:58.250Z",` +
	`"receivedAt":"2026-03-01T12:00:00.123Z","timestamp":"2026-03-01T11:59:58.120Z"}`

// BenchmarkParse measures finding the events of one webhook request and their
// ids and receivedAt, the part of the hot path that reads the body.
func BenchmarkParse(b *testing.B) {
	s, _ := New(Options{Logger: slog.New(slog.DiscardHandler)})
	defer s.Close()
	h := http.Header{"Webhook-Id": {"ajs-next-1714564800000-1842"}}
	req := new(request)
	req.body.WriteString(webhookEvent)
	b.SetBytes(int64(len(webhookEvent)))
	b.ReportAllocs()
	for b.Loop() {
		req.events = req.events[:0]
		s.parse(req, h)
		if len(req.events) != 1 || req.events[0].latencyUS < 0 {
			b.Fatalf("parsed %+v", req.events)
		}
	}
}
