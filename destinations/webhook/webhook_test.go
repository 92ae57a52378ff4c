package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/event"
)

// received is one request as the test server saw it.
type received struct {
	header http.Header
	body   []byte
}

// bundle is what a webhook test needs: a receiver recording what it gets
// and answering with respond, a destination pointed at it, and a Sender.
type bundle struct {
	srv     *httptest.Server
	dest    *destination
	sender  *destinations.Sender
	now     time.Time
	mu      sync.Mutex
	got     []received
	respond func(w http.ResponseWriter, r *http.Request, body []byte)
}

// setup starts a receiver and builds a webhook destination from settings,
// its url pointed at the receiver. The receiver answers 200 unless the test
// sets b.respond.
func setup(t *testing.T, settings map[string]any) *bundle {
	t.Helper()
	b := &bundle{now: time.Unix(1767225600, 0)}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading request: %v", err)
		}
		b.mu.Lock()
		b.got = append(b.got, received{header: r.Header.Clone(), body: body})
		respond := b.respond
		b.mu.Unlock()
		if respond != nil {
			respond(w, r, body)
		}
	}))
	t.Cleanup(b.srv.Close)

	s := map[string]any{"url": b.srv.URL}
	for k, v := range settings {
		s[k] = v
	}
	valid, err := Integration.Settings.Validate(s)
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
	b.dest, err = newDestination(valid, func() time.Time { return b.now })
	if err != nil {
		t.Fatalf("newDestination: %v", err)
	}
	b.sender = &destinations.Sender{
		Client: destinations.NewClient(time.Second, true),
		Name:   "hooks",
		Now:    func() time.Time { return b.now },
	}
	return b
}

func (b *bundle) send(events []event.Event) []destinations.SendResult {
	return b.sender.Send(context.Background(), b.dest, events)
}

func (b *bundle) requests() []received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]received(nil), b.got...)
}

// payload is deliberately not in the form encoding/json would write
// (spacing, 1.50, a \u escape, key order), so that any re-encoding shows.
func payload(i int) string {
	return `{"type":"track",  "event":"Order Completed","properties":{"total":1.50,"name":"caf\u00e9"},"messageId":"m` +
		strconv.Itoa(i) + `"}`
}

func testEvents(n int) []event.Event {
	out := make([]event.Event, n)
	for i := range out {
		out[i] = event.Event{
			Source:    "web",
			MessageID: "m" + strconv.Itoa(i),
			Type:      event.Track,
			Payload:   json.RawMessage(payload(i)),
		}
	}
	return out
}

// verify checks a webhook-signature header the way a receiver would,
// independently of the code under test.
func verify(key []byte, h http.Header, body []byte) bool {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("webhook-id") + "." + h.Get("webhook-timestamp") + "."))
	mac.Write(body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(h.Get("webhook-signature")), []byte(want))
}

func TestRequest(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	tests := []struct {
		name     string
		settings map[string]any
		key      []byte // nil: unsigned
	}{
		{"unsigned", nil, nil},
		{"whsec secret", map[string]any{"secret": "whsec_" + base64.StdEncoding.EncodeToString(key)}, key},
		{"raw secret", map[string]any{"secret": "s3cr3t"}, []byte("s3cr3t")},
		{"extra headers", map[string]any{"headers": map[string]any{"x-api-key": "k1", "User-Agent": "acme"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t, tt.settings)
			res := b.send(testEvents(1))
			if res[0].Outcome != destinations.Delivered {
				t.Fatalf("outcome %+v", res[0].Result)
			}
			reqs := b.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			h, body := reqs[0].header, reqs[0].body
			if string(body) != payload(0) {
				t.Errorf("body\n got %s\nwant %s", body, payload(0))
			}
			wantUA := "fanout"
			if tt.name == "extra headers" {
				wantUA = "acme"
				if got := h.Get("X-Api-Key"); got != "k1" {
					t.Errorf("X-Api-Key = %q", got)
				}
			}
			for k, want := range map[string]string{
				"Content-Type":      "application/json",
				"User-Agent":        wantUA,
				"webhook-id":        "m0",
				"webhook-timestamp": "1767225600",
				"Fanout-Source":     "web",
			} {
				if got := h.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tt.key == nil {
				if v := h.Values("webhook-signature"); v != nil {
					t.Errorf("unsigned destination sent webhook-signature %q", v)
				}
			} else if !verify(tt.key, h, body) {
				t.Errorf("signature %q does not verify", h.Get("webhook-signature"))
			}
		})
	}
}

// TestSignatureVector signs the Standard Webhooks specification's published
// example, so that receivers using its libraries accept fanout's requests.
func TestSignatureVector(t *testing.T) {
	d, err := newDestination(map[string]any{
		"url":    "https://example.com/hook",
		"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	}, func() time.Time { return time.Unix(1614265330, 0) })
	if err != nil {
		t.Fatal(err)
	}
	plan, err := d.Transform(context.Background(), []event.Event{
		{MessageID: "msg_p5jXN8AQM9LWM0D4loKWxJek", Payload: json.RawMessage(`{"test": 2432232314}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	const want = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	if got := plan.Requests[0].Header.Get("webhook-signature"); got != want {
		t.Errorf("signature %q, want %q", got, want)
	}
}

func TestBatch(t *testing.T) {
	big := func(i int) event.Event {
		return event.Event{Source: "web", MessageID: "big" + strconv.Itoa(i),
			Payload: json.RawMessage(`{"x":"` + strings.Repeat("a", 200<<10) + `"}`)}
	}
	tests := []struct {
		name   string
		batch  int
		events []event.Event
		want   [][]int // events of each request
	}{
		{"one per request", 0, testEvents(3), [][]int{{0}, {1}, {2}}},
		{"batch 1 is one per request", 1, testEvents(2), [][]int{{0}, {1}}},
		{"by count", 3, testEvents(7), [][]int{{0, 1, 2}, {3, 4, 5}, {6}}},
		{"all in one", 10, testEvents(4), [][]int{{0, 1, 2, 3}}},
		// 200 KB each: a third would pass the 500 KB bound.
		{"by bytes", 100, []event.Event{big(0), big(1), big(2), big(3), big(4)}, [][]int{{0, 1}, {2, 3}, {4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t, map[string]any{"batch": tt.batch, "secret": "s"})
			res := b.send(tt.events)
			for i, r := range res {
				if r.Outcome != destinations.Delivered {
					t.Errorf("event %d: %+v", i, r.Result)
				}
			}
			reqs := b.requests()
			if len(reqs) != len(tt.want) {
				t.Fatalf("%d requests, want %d", len(reqs), len(tt.want))
			}
			ids := map[string]bool{}
			for j, want := range tt.want {
				var wantBody []byte
				if tt.batch <= 1 {
					wantBody = tt.events[want[0]].Payload
				} else {
					var parts [][]byte
					for _, i := range want {
						parts = append(parts, tt.events[i].Payload)
					}
					wantBody = append(append([]byte{'['}, bytes.Join(parts, []byte{','})...), ']')
				}
				got := reqs[j]
				if !bytes.Equal(got.body, wantBody) {
					t.Errorf("request %d: body of %d bytes, want the %d bytes of events %v", j, len(got.body), len(wantBody), want)
				}
				if len(got.body) > MaxBatchBytes && len(want) > 1 {
					t.Errorf("request %d: %d bytes, over the bound", j, len(got.body))
				}
				if !json.Valid(got.body) {
					t.Errorf("request %d: body is not JSON", j)
				}
				id := got.header.Get("webhook-id")
				if tt.batch > 1 && !strings.HasPrefix(id, "batch_") || ids[id] {
					t.Errorf("request %d: webhook-id %q", j, id)
				}
				ids[id] = true
				if !verify([]byte("s"), got.header, got.body) {
					t.Errorf("request %d: signature does not verify", j)
				}
			}
			// A retry of the same events carries the same ids.
			b.send(tt.events)
			for j, got := range b.requests()[len(tt.want):] {
				if id := got.header.Get("webhook-id"); id != reqs[j].header.Get("webhook-id") {
					t.Errorf("request %d: retry has webhook-id %q, first attempt %q", j, id, reqs[j].header.Get("webhook-id"))
				}
			}
		})
	}
}

func TestClassify(t *testing.T) {
	const retryIn = "Retry-After: 30"
	tests := []struct {
		name   string
		batch  int
		status int
		header string // "Key: value"
		body   string
		hang   bool
		want   []destinations.Result
	}{
		{name: "200", status: 200, want: []destinations.Result{{Outcome: destinations.Delivered, StatusCode: 200}}},
		{name: "400", status: 400, body: `{"error":"bad event"}`, want: []destinations.Result{
			{Outcome: destinations.Rejected, StatusCode: 400, Reason: `HTTP 400 Bad Request: {"error":"bad event"}`}}},
		{name: "429 with Retry-After", status: 429, header: retryIn, want: []destinations.Result{
			{Outcome: destinations.Retryable, StatusCode: 429, Reason: "HTTP 429 Too Many Requests", RetryAfter: 30 * time.Second}}},
		{name: "500", status: 500, body: "oops", want: []destinations.Result{
			{Outcome: destinations.Retryable, StatusCode: 500, Reason: "HTTP 500 Internal Server Error: oops"}}},
		{name: "501", status: 501, want: []destinations.Result{
			{Outcome: destinations.Rejected, StatusCode: 501, Reason: "HTTP 501 Not Implemented"}}},
		{name: "timeout", hang: true, want: []destinations.Result{
			{Outcome: destinations.Retryable, Reason: "timeout: no response within 1s"}}},
		{name: "batch, one status for all", batch: 5, status: 503, header: retryIn, want: []destinations.Result{
			{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503 Service Unavailable", RetryAfter: 30 * time.Second},
			{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503 Service Unavailable", RetryAfter: 30 * time.Second},
			{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503 Service Unavailable", RetryAfter: 30 * time.Second},
		}},
		{name: "batch, per-event results", batch: 5, status: 207, header: retryIn,
			body: `{"results":[{"status":200},{"status":400,"error":"email is invalid"},{"status":429}]}`,
			want: []destinations.Result{
				{Outcome: destinations.Delivered, StatusCode: 200},
				{Outcome: destinations.Rejected, StatusCode: 400, Reason: "HTTP 400 Bad Request: email is invalid"},
				{Outcome: destinations.Retryable, StatusCode: 429, Reason: "HTTP 429 Too Many Requests", RetryAfter: 30 * time.Second},
			}},
		{name: "batch, per-event results with an error status", batch: 5, status: 400,
			body: `{"results":[{"status":202},{"status":422,"error":"no userId"},{"status":202}]}`,
			want: []destinations.Result{
				{Outcome: destinations.Delivered, StatusCode: 202},
				{Outcome: destinations.Rejected, StatusCode: 422, Reason: "HTTP 422 Unprocessable Entity: no userId"},
				{Outcome: destinations.Delivered, StatusCode: 202},
			}},
		{name: "batch, results miscounted", batch: 5, status: 200,
			body: `{"results":[{"status":200}]}`,
			want: []destinations.Result{
				{Outcome: destinations.Retryable, StatusCode: 200, Reason: "the batch response lists 1 results for a batch of 3 events, so the outcome of each event is unknown"},
				{Outcome: destinations.Retryable, StatusCode: 200, Reason: "the batch response lists 1 results for a batch of 3 events, so the outcome of each event is unknown"},
				{Outcome: destinations.Retryable, StatusCode: 200, Reason: "the batch response lists 1 results for a batch of 3 events, so the outcome of each event is unknown"},
			}},
		{name: "batch, 413", batch: 5, status: 413, want: []destinations.Result{
			{Outcome: destinations.Retryable, StatusCode: 413, Split: true, Reason: "HTTP 413 Request Entity Too Large: the batch is too large for the receiver; it is sent again in halves"},
			{Outcome: destinations.Retryable, StatusCode: 413, Split: true, Reason: "HTTP 413 Request Entity Too Large: the batch is too large for the receiver; it is sent again in halves"},
		}},
		{name: "413 to one event", status: 413, want: []destinations.Result{
			{Outcome: destinations.Rejected, StatusCode: 413, Reason: "HTTP 413 Request Entity Too Large"}}},
		{name: "batch, other JSON body", batch: 5, status: 200, body: `{"ok":true,"note":"results later"}`,
			want: []destinations.Result{
				{Outcome: destinations.Delivered, StatusCode: 200},
				{Outcome: destinations.Delivered, StatusCode: 200},
				{Outcome: destinations.Delivered, StatusCode: 200},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t, map[string]any{"batch": tt.batch})
			b.respond = func(w http.ResponseWriter, r *http.Request, _ []byte) {
				if tt.hang {
					<-r.Context().Done()
					return
				}
				if k, v, ok := strings.Cut(tt.header, ": "); ok {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}
			res := b.send(testEvents(len(tt.want)))
			for i, want := range tt.want {
				if res[i].Result != want {
					t.Errorf("event %d\n got %+v\nwant %+v", i, res[i].Result, want)
				}
			}
		})
	}
}

func TestNewRejectsBadSettings(t *testing.T) {
	tests := []struct {
		name     string
		settings map[string]any
		want     string
	}{
		{"no url", map[string]any{}, "url: required setting is missing"},
		{"not http", map[string]any{"url": "ftp://example.com/x"}, `url: expected an http or https URL, found "ftp://example.com/x"`},
		{"relative url", map[string]any{"url": "/hook"}, "url: expected an http or https URL"},
		{"bad whsec", map[string]any{"url": "https://x.test", "secret": "whsec_!!notbase64"}, "secret: starts with whsec_ but what follows is not a base64 key"},
		{"reserved header", map[string]any{"url": "https://x.test", "headers": map[string]any{"webhook-signature": "x"}}, "headers: Webhook-Signature is set by fanout"},
		{"bad header name", map[string]any{"url": "https://x.test", "headers": map[string]any{"X Key": "x"}}, `headers: "X Key" is not a valid header name`},
		{"header injection", map[string]any{"url": "https://x.test", "headers": map[string]any{"X-Key": "a\r\nHost: evil"}}, `headers: the value of "X-Key" holds a line break`},
		{"negative batch", map[string]any{"url": "https://x.test", "batch": -1}, "batch: expected 0 to 2500 events per request, found -1"},
		{"huge batch", map[string]any{"url": "https://x.test", "batch": 10000}, "batch: expected 0 to 2500"},
		{"unknown setting", map[string]any{"url": "https://x.test", "batchsize": 3}, "batchsize: unknown setting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			valid, err := Integration.Settings.Validate(tt.settings)
			if err == nil {
				_, err = Integration.New(destinations.Config{Name: "hooks", Settings: valid})
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error %v, want one starting %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "notbase64") {
				t.Errorf("error quotes the secret: %v", err)
			}
		})
	}
}

func TestBatchLimits(t *testing.T) {
	for _, tt := range []struct {
		batch int
		want  destinations.BatchLimits
	}{
		{0, destinations.BatchLimits{}},
		{1, destinations.BatchLimits{}},
		{50, destinations.BatchLimits{MaxEvents: 50, MaxBytes: MaxBatchBytes}},
	} {
		d, err := Integration.New(destinations.Config{Settings: map[string]any{"url": "https://x.test", "batch": tt.batch}})
		if err != nil {
			t.Fatal(err)
		}
		if got := d.(destinations.Batcher).BatchLimits(); got != tt.want {
			t.Errorf("batch %d: %+v, want %+v", tt.batch, got, tt.want)
		}
	}
}

func TestEmptyPayloadRejected(t *testing.T) {
	for _, batch := range []int{0, 5} {
		b := setup(t, map[string]any{"batch": batch})
		evs := testEvents(3)
		evs[1].Payload = nil
		res := b.send(evs)
		want := []destinations.Outcome{destinations.Delivered, destinations.Rejected, destinations.Delivered}
		for i := range want {
			if res[i].Outcome != want[i] {
				t.Errorf("batch %d, event %d: %+v", batch, i, res[i].Result)
			}
		}
	}
}

// TestTransformAllocations pins the cost of the hot path: a signed single
// event should take a handful of allocations (the request, its header map
// and values, the timestamp and signature strings), not one per header.
func TestTransformAllocations(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation counts are exact only without -race")
	}
	d, err := newDestination(map[string]any{"url": "https://x.test", "secret": "s", "batch": 0}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	evs := testEvents(1)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := d.Transform(context.Background(), evs); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 8 {
		t.Errorf("Transform of one signed event: %v allocations, want at most 8", allocs)
	}
}

// FuzzBatchResults feeds arbitrary response bodies to the batch classifier:
// it must not panic, and every event must get a real outcome.
func FuzzBatchResults(f *testing.F) {
	for _, s := range []string{
		`{"results":[{"status":200},{"status":400,"error":"x"},{"status":503}]}`,
		`{"results":[]}`,
		`{"results":null}`,
		`{"results":[{"status":"200"}]}`,
		`{"results":[{"status":99999999999999999999}]}`,
		`OK`,
	} {
		f.Add(s, 200)
	}
	d, err := newDestination(map[string]any{"url": "https://x.test", "batch": 10}, time.Now)
	if err != nil {
		f.Fatal(err)
	}
	req := &destinations.Request{Events: []int{0, 1, 2}}
	f.Fuzz(func(t *testing.T, body string, status int) {
		resp := &destinations.Response{StatusCode: status, Header: http.Header{}, Body: []byte(body), ReceivedAt: time.Now()}
		out := d.Classify(req, resp)
		if len(out) != len(req.Events) {
			t.Fatalf("%d results for %d events", len(out), len(req.Events))
		}
		for i, r := range out {
			if r.Outcome < destinations.Delivered || r.Outcome > destinations.Unsupported {
				t.Errorf("event %d: outcome %d", i, r.Outcome)
			}
		}
	})
}
