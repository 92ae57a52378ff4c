package sendcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// server is a stand-in tracking API that records what it receives.
type server struct {
	mu       sync.Mutex
	paths    []string
	events   []map[string]any
	ids      map[string]int
	requests int
	// answer, when set, decides the response to a request.
	answer func(n int, batch []map[string]any) (int, string)
}

func setup(t *testing.T) (*server, *httptest.Server) {
	t.Helper()
	s := &server{ids: map[string]int{}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return s, srv
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if !ok || user != "wk_test" || pass != "" {
		http.Error(w, `{"success":false,"error":"unknown write key"}`, 401)
		return
	}
	var batch []map[string]any
	if r.URL.Path == "/v1/batch" {
		var body struct {
			Batch  []map[string]any `json:"batch"`
			SentAt string           `json:"sentAt"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.SentAt == "" {
			http.Error(w, "bad batch", 400)
			return
		}
		batch = body.Batch
	} else {
		var e map[string]any
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
			http.Error(w, "bad event", 400)
			return
		}
		batch = []map[string]any{e}
	}
	s.mu.Lock()
	s.requests++
	n := s.requests
	s.paths = append(s.paths, r.URL.Path)
	for _, e := range batch {
		s.events = append(s.events, e)
		s.ids[e["messageId"].(string)]++
	}
	s.mu.Unlock()
	status, body := 200, `{"success":true}`
	if s.answer != nil {
		status, body = s.answer(n, batch)
	}
	w.WriteHeader(status)
	w.Write([]byte(body))
}

func TestSendOne(t *testing.T) {
	s, srv := setup(t)
	var out bytes.Buffer
	sum, err := Run(context.Background(), Options{
		URL: srv.URL + "/", WriteKey: "wk_test", Type: "track", Event: "Order Completed",
		UserID: "u1", Properties: json.RawMessage(`{"revenue":10}`), Count: 1, Out: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent != 1 || sum.Accepted != 1 {
		t.Errorf("summary = %+v", sum)
	}
	if out.String() != "200 OK\n{\"success\":true}\n" {
		t.Errorf("output = %q", out.String())
	}
	if len(s.paths) != 1 || s.paths[0] != "/v1/track" {
		t.Fatalf("paths = %v", s.paths)
	}
	e := s.events[0]
	if e["event"] != "Order Completed" || e["userId"] != "u1" || e["type"] != "track" ||
		e["properties"].(map[string]any)["revenue"] != 10.0 || e["messageId"] == "" {
		t.Errorf("event = %v", e)
	}
}

func TestSendOneRejected(t *testing.T) {
	s, srv := setup(t)
	s.answer = func(int, []map[string]any) (int, string) { return 400, `{"success":false,"error":"event is required"}` }
	var out bytes.Buffer
	_, err := Run(context.Background(), Options{URL: srv.URL, WriteKey: "wk_test", Type: "identify", Count: 1, Out: &out})
	if !errors.Is(err, ErrFailed) {
		t.Errorf("err = %v, want ErrFailed", err)
	}
	if !strings.HasPrefix(out.String(), "400 Bad Request\n") {
		t.Errorf("output = %q", out.String())
	}
	if e := s.events[0]; !strings.HasPrefix(e["anonymousId"].(string), "fanout-send-") {
		t.Errorf("no anonymousId given a default: %v", e)
	}
}

func TestSendMany(t *testing.T) {
	s, srv := setup(t)
	var out, progress bytes.Buffer
	sum, err := Run(context.Background(), Options{
		URL: srv.URL, WriteKey: "wk_test", Type: "track", Event: "E", UserID: "u1",
		Count: 1050, Batch: 100, Concurrency: 4, Out: &out, Progress: &progress, ProgressEvery: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent != 1050 || sum.Accepted != 1050 || sum.Failed != 0 {
		t.Errorf("summary = %+v", sum)
	}
	if len(s.ids) != 1050 {
		t.Errorf("%d distinct messageIds, want 1050", len(s.ids))
	}
	if s.requests != 11 {
		t.Errorf("%d requests, want 11 (10 of 100 and one of 50)", s.requests)
	}
	for _, p := range s.paths {
		if p != "/v1/batch" {
			t.Fatalf("path %s, want /v1/batch", p)
		}
	}
	if !strings.HasPrefix(out.String(), "sent 1050  accepted 1050  failed 0  elapsed ") {
		t.Errorf("summary line = %q", out.String())
	}
	if strings.Contains(progress.String(), "\r") {
		t.Errorf("progress to a non-terminal has carriage returns: %q", progress.String())
	}
}

func TestSendManyFailures(t *testing.T) {
	s, srv := setup(t)
	s.answer = func(n int, batch []map[string]any) (int, string) {
		switch n {
		case 1:
			return 500, `{"success":false,"error":"storage unavailable"}`
		case 2:
			return 200, `{"success":true,"rejected":[{"index":0,"reason":"userId or anonymousId is required"}]}`
		}
		return 200, `{"success":true}`
	}
	var out bytes.Buffer
	sum, err := Run(context.Background(), Options{
		URL: srv.URL, WriteKey: "wk_test", Type: "track", Event: "E", Count: 30, Batch: 10, Concurrency: 1, Out: &out,
	})
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("err = %v, want ErrFailed", err)
	}
	if sum.Sent != 30 || sum.Accepted != 19 || sum.Failed != 11 {
		t.Errorf("summary = %+v, want 30 sent, 19 accepted, 11 failed", sum)
	}
	if !strings.Contains(out.String(), `error: 500 {"success":false,"error":"storage unavailable"}`) {
		t.Errorf("output does not show the failure:\n%s", out.String())
	}
}

func TestSendRate(t *testing.T) {
	_, srv := setup(t)
	start := time.Now()
	// 200 events at 1000/s: batches of 100, the first at once (the burst),
	// the second after 100ms.
	sum, err := Run(context.Background(), Options{
		URL: srv.URL, WriteKey: "wk_test", Type: "track", Event: "E", Count: 200, Rate: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Errorf("200 events at 1000/s took %v, want at least 100ms", d)
	}
	if sum.Accepted != 200 {
		t.Errorf("summary = %+v", sum)
	}
}

func TestBatchSize(t *testing.T) {
	tests := []struct {
		rate float64
		most int
		want int
	}{
		{0, 100, 100}, {10, 100, 1}, {1000, 100, 100}, {250, 100, 25}, {0.5, 100, 1},
	}
	for _, tt := range tests {
		if got := batchSize(tt.rate, tt.most); got != tt.want {
			t.Errorf("batchSize(%v, %d) = %d, want %d", tt.rate, tt.most, got, tt.want)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	base := Options{URL: "http://x", WriteKey: "k", Type: "track", Event: "E", Count: 1}
	tests := []struct {
		edit func(*Options)
		want string
	}{
		{func(o *Options) { o.WriteKey = "" }, "--write-key is required"},
		{func(o *Options) { o.Type = "click" }, `--type: expected track, identify, page, screen, group or alias, found "click"`},
		{func(o *Options) { o.Event = "" }, "--event is required for track"},
		{func(o *Options) { o.Properties = json.RawMessage(`[1]`) }, "--properties: expected a JSON object, found [1]"},
		{func(o *Options) { o.Count = 0 }, "--count must be at least 1, found 0"},
	}
	for _, tt := range tests {
		o := base
		tt.edit(&o)
		if _, err := Run(context.Background(), o); err == nil || err.Error() != tt.want {
			t.Errorf("err = %v, want %q", err, tt.want)
		}
	}
}

func TestProgressLine(t *testing.T) {
	got := progressLine(time.Now().Add(-time.Second), 500, 2, 1000, true)
	if !strings.HasPrefix(got, "[===============>              ] 500/1000  ") || !strings.HasSuffix(got, " ev/s  2 errors") {
		t.Errorf("progressLine = %q", got)
	}
}
