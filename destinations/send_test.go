package destinations

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/internal/event"
)

// testDest is a Destination whose transform and classifier are given by the
// test. Its default transform posts each event's payload to url, one
// request per event; its default classifier is ClassifyStatus.
type testDest struct {
	url       string
	transform func(ctx context.Context, events []event.Event) (Plan, error)
	classify  func(req *Request, resp *Response) []Result
}

func (d *testDest) Transform(ctx context.Context, events []event.Event) (Plan, error) {
	if d.transform != nil {
		return d.transform(ctx, events)
	}
	var p Plan
	for i, e := range events {
		p.Requests = append(p.Requests, &Request{
			Method: http.MethodPost,
			URL:    d.url + "?" + string(e.Payload),
			Events: []int{i},
		})
	}
	return p, nil
}

func (d *testDest) Classify(req *Request, resp *Response) []Result {
	if d.classify != nil {
		return d.classify(req, resp)
	}
	return []Result{ClassifyStatus(resp, resp.ReceivedAt)}
}

var _ Destination = (*testDest)(nil)

// sendBundle is what the Send tests need: a server answering what each
// request's query asks for, a Sender pointed at it, and the log it writes.
type sendBundle struct {
	srv    *httptest.Server
	sender *Sender
	log    *bytes.Buffer
	now    time.Time
}

// setupSend starts a server that answers each request as its query says:
// status=N, retry=V (Retry-After), body=TEXT, size=N (a body of N bytes,
// chunked), hang (no answer until the client gives up).
func setupSend(t *testing.T, timeout time.Duration) *sendBundle {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Has("hang") {
			<-r.Context().Done()
			return
		}
		if v := q.Get("retry"); v != "" {
			w.Header().Set("Retry-After", v)
		}
		if v := q.Get("location"); v != "" {
			w.Header().Set("Location", v)
		}
		status := http.StatusOK
		if v := q.Get("status"); v != "" {
			status, _ = strconv.Atoi(v)
		}
		w.WriteHeader(status)
		if n, _ := strconv.Atoi(q.Get("size")); n > 0 {
			chunk := bytes.Repeat([]byte("x"), 1000)
			for ; n > 0; n -= len(chunk) {
				w.Write(chunk[:min(n, len(chunk))])
				w.(http.Flusher).Flush() // no Content-Length: chunked
			}
		}
		io.WriteString(w, q.Get("body"))
	}))
	t.Cleanup(srv.Close)
	log := &bytes.Buffer{}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return &sendBundle{
		srv: srv,
		sender: &Sender{
			Client: NewClient(timeout, true),
			Name:   "hooks",
			Logger: slog.New(slog.NewJSONHandler(log, nil)),
			Now:    func() time.Time { return now },
		},
		log: log,
		now: now,
	}
}

func events(payloads ...string) []event.Event {
	out := make([]event.Event, len(payloads))
	for i, p := range payloads {
		out[i] = event.Event{Source: "web", MessageID: "m" + strconv.Itoa(i), Type: event.Track, Payload: json.RawMessage(p)}
	}
	return out
}

func TestSendClassifiesResponses(t *testing.T) {
	b := setupSend(t, 200*time.Millisecond)
	d := &testDest{url: b.srv.URL}
	tests := []struct {
		query string
		want  Result
	}{
		{"status=200", Result{Outcome: Delivered, StatusCode: 200}},
		{"status=204", Result{Outcome: Delivered, StatusCode: 204}},
		{"status=400&body=missing+userId", Result{Outcome: Rejected, StatusCode: 400,
			Reason: "HTTP 400 Bad Request: missing userId"}},
		{"status=404", Result{Outcome: Rejected, StatusCode: 404, Reason: "HTTP 404 Not Found"}},
		{"status=408", Result{Outcome: Retryable, StatusCode: 408, Reason: "HTTP 408 Request Timeout"}},
		{"status=429&retry=7&body=slow+down", Result{Outcome: Retryable, StatusCode: 429,
			Reason: "HTTP 429 Too Many Requests: slow down", RetryAfter: 7 * time.Second}},
		{"status=503&retry=Sun,+01+Mar+2026+12:00:30+GMT", Result{Outcome: Retryable, StatusCode: 503,
			Reason: "HTTP 503 Service Unavailable", RetryAfter: 30 * time.Second}},
		{"status=500&body=%7B%22error%22:%0A%22boom%22%7D", Result{Outcome: Retryable, StatusCode: 500,
			Reason: `HTTP 500 Internal Server Error: {"error": "boom"}`}},
		{"status=501", Result{Outcome: Rejected, StatusCode: 501, Reason: "HTTP 501 Not Implemented"}},
		{"status=505", Result{Outcome: Rejected, StatusCode: 505, Reason: "HTTP 505 HTTP Version Not Supported"}},
		{"status=301&location=https://example.com/new", Result{Outcome: Rejected, StatusCode: 301,
			Reason: "HTTP 301 Moved Permanently: redirects are not followed; point the destination at https://example.com/new"}},
		{"hang", Result{Outcome: Retryable, Reason: "timeout: no response within 200ms"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			got := b.sender.Send(context.Background(), d, events(tt.query))
			if len(got) != 1 {
				t.Fatalf("got %d results, want 1", len(got))
			}
			if got[0].Result != tt.want {
				t.Errorf("result\n got %+v\nwant %+v", got[0].Result, tt.want)
			}
			if got[0].Request == nil {
				t.Error("Request not kept")
			}
			if tt.want.StatusCode != 0 && (got[0].Response == nil || got[0].Response.StatusCode != tt.want.StatusCode) {
				t.Errorf("Response not kept: %+v", got[0].Response)
			}
		})
	}
}

func TestSendTransportErrors(t *testing.T) {
	// An address nothing listens on: listen, note the port, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()

	tests := []struct {
		name         string
		url          string
		allowPrivate bool
		// resolver, when set, resolves the client's names.
		resolver   *net.Resolver
		wantReason string
	}{
		{"connection refused", closed, true, nil, "connection refused by " + closed[len("http://"):]},
		{"private address", closed, false, nil, "refused to connect to 127.0.0.1, a loopback address: set network.allow_private: true"},
		{"no such host", "http://no-such-host.invalid", true, nxdomainResolver(t), "DNS: no such host no-such-host.invalid"},
		{"bad URL", "http://[::1", true, nil, "integration built an invalid request: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &testDest{url: tt.url}
			client := NewClient(time.Second, tt.allowPrivate)
			if tt.resolver != nil {
				client.Transport.(*http.Transport).DialContext = (&net.Dialer{Timeout: time.Second, Resolver: tt.resolver}).DialContext
			}
			got := Send(context.Background(), d, client, events("x"))
			if got[0].Outcome != Retryable || !strings.HasPrefix(got[0].Reason, tt.wantReason) {
				t.Errorf("got %+v, want Retryable with reason starting %q", got[0], tt.wantReason)
			}
		})
	}
}

// nxdomainResolver returns a resolver whose every query goes to a DNS
// server on loopback that answers NXDOMAIN, so that a lookup fails as it
// does for a name that does not exist, without a packet leaving the
// machine. The server stops when the test ends.
func nxdomainResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if resp := nxdomain(buf[:n]); resp != nil {
				pc.WriteTo(resp, addr)
			}
		}
	}()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", pc.LocalAddr().String())
		},
	}
}

// nxdomain answers the DNS query q (RFC 1035 section 4.1) with NXDOMAIN:
// q's header and question, flagged as a response (QR) with recursion
// available (RA) and RCODE 3, and no other records. It returns nil for a
// query too short to answer.
func nxdomain(q []byte) []byte {
	const header = 12
	end := header
	for end < len(q) && q[end] != 0 {
		end += 1 + int(q[end]) // a label: its length, then its bytes
	}
	end += 1 + 4 // the root label, QTYPE and QCLASS
	if len(q) < header || end > len(q) {
		return nil
	}
	resp := append([]byte(nil), q[:end]...)
	resp[2] = 0x80 | q[2]&0x79 // QR; the query's opcode and RD
	resp[3] = 0x80 | 3         // RA; RCODE 3, NXDOMAIN
	clear(resp[6:header])      // no answer, authority or additional records
	return resp
}

func TestSendPanics(t *testing.T) {
	b := setupSend(t, time.Second)
	tests := []struct {
		name string
		dest *testDest
		want []Outcome
	}{
		{
			name: "transform",
			dest: &testDest{transform: func(context.Context, []event.Event) (Plan, error) {
				var m map[string]int
				m["boom"]++ // nil map write: a runtime panic, like a real bug
				return Plan{}, nil
			}},
			want: []Outcome{Retryable, Retryable},
		},
		{
			name: "classify",
			dest: &testDest{url: b.srv.URL, classify: func(req *Request, resp *Response) []Result {
				if strings.Contains(req.URL, "bad") {
					panic("boom")
				}
				return []Result{ClassifyStatus(resp, resp.ReceivedAt)}
			}},
			// Only the event whose response made Classify panic fails.
			want: []Outcome{Delivered, Retryable},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.log.Reset()
			got := b.sender.Send(context.Background(), tt.dest, events("good", "bad"))
			for i, want := range tt.want {
				if got[i].Outcome != want {
					t.Errorf("event %d: %+v, want %s", i, got[i].Result, want)
				}
				if want == Retryable && !strings.HasPrefix(got[i].Reason, "integration panicked: ") {
					t.Errorf("event %d: reason %q", i, got[i].Reason)
				}
			}
			var rec struct {
				Msg, Destination, Stage, Panic, Stack string
			}
			if err := json.Unmarshal(b.log.Bytes(), &rec); err != nil {
				t.Fatalf("log %q: %v", b.log, err)
			}
			if rec.Msg != "integration panicked" || rec.Destination != "hooks" || rec.Stage != tt.name ||
				!strings.Contains(rec.Stack, "send_test.go") {
				t.Errorf("log record %+v", rec)
			}
		})
	}
}

func TestSendPlanChecks(t *testing.T) {
	b := setupSend(t, time.Second)
	tests := []struct {
		name string
		dest *testDest
		want []Result
	}{
		{
			name: "results without requests",
			dest: &testDest{transform: func(context.Context, []event.Event) (Plan, error) {
				return Plan{Results: map[int]Result{
					0: {Outcome: Unsupported, Reason: "alias is not supported"},
					1: {Outcome: Rejected, Reason: "email is required"},
				}}, nil
			}},
			want: []Result{
				{Outcome: Unsupported, Reason: "alias is not supported"},
				{Outcome: Rejected, Reason: "email is required"},
			},
		},
		{
			name: "event forgotten",
			dest: &testDest{transform: func(context.Context, []event.Event) (Plan, error) {
				return Plan{Requests: []*Request{{URL: b.srv.URL, Events: []int{1}}}}, nil
			}},
			want: []Result{
				{Outcome: Retryable, Reason: "integration bug: the event got neither a request nor an outcome"},
				{Outcome: Delivered, StatusCode: 200},
			},
		},
		{
			name: "transform error",
			dest: &testDest{transform: func(context.Context, []event.Event) (Plan, error) {
				return Plan{}, errors.New("settings corrupt")
			}},
			want: []Result{
				{Outcome: Retryable, Reason: "transform failed: settings corrupt"},
				{Outcome: Retryable, Reason: "transform failed: settings corrupt"},
			},
		},
		{
			name: "classify miscounts",
			dest: &testDest{
				transform: func(context.Context, []event.Event) (Plan, error) {
					return Plan{Requests: []*Request{{URL: b.srv.URL, Events: []int{0, 1}}}}, nil
				},
				classify: func(*Request, *Response) []Result { return []Result{{Outcome: Delivered}} },
			},
			want: []Result{
				{Outcome: Retryable, StatusCode: 200, Reason: "integration bug: classify gave 1 outcomes for a request carrying 2 events"},
				{Outcome: Retryable, StatusCode: 200, Reason: "integration bug: classify gave 1 outcomes for a request carrying 2 events"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := b.sender.Send(context.Background(), tt.dest, events("a", "b"))
			for i := range tt.want {
				if got[i].Result != tt.want[i] {
					t.Errorf("event %d\n got %+v\nwant %+v", i, got[i].Result, tt.want[i])
				}
			}
		})
	}
}

func TestSendBoundsResponseBody(t *testing.T) {
	b := setupSend(t, 5*time.Second)
	b.sender.MaxBody = 1000
	tests := []struct {
		query string
		want  int
	}{
		{"size=999", 999},    // chunked, under the bound
		{"size=50000", 1000}, // chunked, cut
		{"size=400000", 1000},
		{"body=" + strings.Repeat("y", 5000), 1000}, // Content-Length over the bound
		{"body=short", 5},
	}
	for _, tt := range tests {
		t.Run(tt.query[:min(len(tt.query), 20)], func(t *testing.T) {
			got := b.sender.Send(context.Background(), &testDest{url: b.srv.URL}, events(tt.query))
			if got[0].Outcome != Delivered {
				t.Fatalf("%+v", got[0].Result)
			}
			if n := len(got[0].Response.Body); n != tt.want {
				t.Errorf("kept %d bytes, want %d", n, tt.want)
			}
		})
	}
}

func TestClassifyStatus(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for code := 100; code <= 599; code++ {
		got := ClassifyStatus(&Response{StatusCode: code, Header: http.Header{}}, now)
		var want Outcome
		switch {
		case code >= 200 && code < 300:
			want = Delivered
		case code == 408 || code == 429 || code >= 500 && code != 501 && code != 505:
			want = Retryable
		default:
			want = Rejected
		}
		if got.Outcome != want || got.StatusCode != code {
			t.Errorf("%d: %+v, want %s", code, got, want)
		}
		if want != Delivered && !strings.HasPrefix(got.Reason, "HTTP "+strconv.Itoa(code)) {
			t.Errorf("%d: reason %q", code, got.Reason)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"120", 2 * time.Minute},
		{" 5 ", 5 * time.Second},
		{"Sun, 01 Mar 2026 12:01:00 GMT", time.Minute},
		{"Sunday, 01-Mar-26 12:01:00 GMT", time.Minute}, // RFC 850, also allowed
		{"Sun, 01 Mar 2026 11:00:00 GMT", 0},            // in the past
		{"-5", 0},
		{"1.5", 0},
		{"soon", 0},
		{"99999999999999999999999", 1<<63 - 1},
		{"9223372037", 1<<63 - 1},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.value != "" {
			h.Set("Retry-After", tt.value)
		}
		if got := ParseRetryAfter(h, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.value, got, tt.want)
		}
	}
}

func TestParseRateLimitReset(t *testing.T) {
	now := time.Unix(1767323100, 0)
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"1767323110", 10 * time.Second},
		{" 1767323160 ", time.Minute},
		{"1767323100", 0}, // now
		{"1767323000", 0}, // in the past
		{"10", 0},         // a delay in seconds is read as a Unix time long past
		{"1767323110.5", 0},
		{"soon", 0},
		{"99999999999999999999", 0},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.value != "" {
			h.Set("X-RateLimit-Reset", tt.value)
		}
		if got := ParseRateLimitReset(h, now); got != tt.want {
			t.Errorf("ParseRateLimitReset(%q) = %v, want %v", tt.value, got, tt.want)
		}
	}
}

func TestFill(t *testing.T) {
	r := Result{Outcome: Rejected, StatusCode: 401, Reason: "check api_key"}
	for _, n := range []int{0, 1, 3} {
		got := Fill(n, r)
		if len(got) != n {
			t.Fatalf("Fill(%d) gave %d results", n, len(got))
		}
		for i := range got {
			if got[i] != r {
				t.Errorf("Fill(%d)[%d] = %+v, want %+v", n, i, got[i], r)
			}
		}
	}
}

func TestRetryUnresolved(t *testing.T) {
	ok := Result{Outcome: Delivered, StatusCode: 200}
	bad := Result{Outcome: Rejected, StatusCode: 200, Reason: "invalid email"}
	retry := Result{Outcome: Retryable, StatusCode: 200, Reason: "errors that name no event"}
	out := []Result{ok, bad, ok}
	RetryUnresolved(out, retry)
	if want := []Result{retry, bad, retry}; !reflect.DeepEqual(out, want) {
		t.Fatalf("RetryUnresolved: %+v, want %+v", out, want)
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Sun, 01 Mar 2026 12:01:00 GMT", "-1", "99999999999999999999"} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		if d := ParseRetryAfter(http.Header{"Retry-After": {v}}, now); d < 0 {
			t.Errorf("ParseRetryAfter(%q) = %v, negative", v, d)
		}
	})
}

func TestSnippet(t *testing.T) {
	tests := []struct {
		body string
		max  int
		want string
	}{
		{"", 10, ""},
		{"  ok\n", 10, "ok"},
		{"a\n\n  b\tc", 10, "a b c"},
		{"0123456789abc", 10, "0123456789..."},
		{"héllo wörld", 6, "héllo..."},
		{"\xff\xfeok", 10, "\uFFFD\uFFFDok"},
	}
	for _, tt := range tests {
		if got := Snippet([]byte(tt.body), tt.max); got != tt.want {
			t.Errorf("Snippet(%q, %d) = %q, want %q", tt.body, tt.max, got, tt.want)
		}
	}
}

func FuzzSnippet(f *testing.F) {
	f.Add([]byte("  héllo\n\twörld  "), 6)
	f.Add([]byte("\xff\xfe"), 1)
	f.Fuzz(func(t *testing.T, body []byte, max int) {
		if max < 0 || max > 1000 {
			return
		}
		s := Snippet(body, max)
		if !utf8.ValidString(s) {
			t.Errorf("Snippet(%q, %d) = %q: not UTF-8", body, max, s)
		}
		if len(strings.TrimSuffix(s, "...")) > max {
			t.Errorf("Snippet(%q, %d) = %q: longer than %d", body, max, s, max)
		}
		if strings.ContainsAny(s, "\n\r\t") {
			t.Errorf("Snippet(%q, %d) = %q: not one line", body, max, s)
		}
	})
}
