package ingest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/router"
)

const (
	webKey    = "wk_web"
	serverKey = "wk_server"
)

// now is the injected clock's time: receivedAt of every test request.
var now = time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)

const nowJSON = "2024-05-01T12:00:00.123Z"

// bundle is what a test needs: the handler over a real Pebble store, and
// the entries the store announced as stored (its Applied hook).
type bundle struct {
	h     *ingest.Handler
	store *pebble.Store

	mu       sync.Mutex
	accepted []jobstore.Entry
	logs     logtest.Buffer // what the handler logged, at debug level
}

// setup builds a handler for two sources: "web" is connected to a webhook
// ("hooks") and a Slack destination ("alerts", track only); "server" to
// nothing.
func setup(t testing.TB) *bundle {
	t.Helper()
	b := &bundle{}
	b.store = openStore(t, func(a jobstore.Appended) {
		b.mu.Lock()
		b.accepted = append(b.accepted, a.Entries...)
		b.mu.Unlock()
	})
	cfg := &config.Config{
		Sources: []config.Source{{Name: "web", WriteKey: webKey}, {Name: "server", WriteKey: serverKey}, {Name: "keyless"}},
		Destinations: []config.Destination{
			{Name: "hooks", Type: "webhook", Sources: []string{"web"}},
			{Name: "alerts", Type: "slack", Sources: []string{"web"}},
		},
	}
	reg := destinations.Registry{
		"webhook": {Type: "webhook"},
		"slack":   {Type: "slack", EventTypes: []string{event.Track}},
	}
	b.h = ingest.New(ingest.Options{
		Sources: cfg.Sources,
		Router:  router.New(cfg, reg),
		Store:   b.store,
		Now:     func() time.Time { return now },
		Logger:  b.logs.Logger(slog.LevelDebug),
	})
	return b
}

// openStore opens a Pebble store in a temporary directory, closed in
// t.Cleanup; applied, when not nil, hears what it stores.
func openStore(t testing.TB, applied jobstore.AppliedFunc) *pebble.Store {
	t.Helper()
	store, err := pebble.Open(t.TempDir(), pebble.Options{Logger: slog.New(slog.DiscardHandler), Applied: applied})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// request describes one call to the handler.
type request struct {
	path     string
	key      string // Basic auth user name; "" for none
	body     string
	gzip     bool
	encoding string // Content-Encoding when not gzip
	chunked  bool   // no Content-Length
}

// result is a decoded answer.
type result struct {
	status     int
	retryAfter string
	Success    bool               `json:"success"`
	Message    string             `json:"message"`
	Rejected   []ingest.Rejection `json:"rejected"`
	raw        string
}

func (b *bundle) do(t testing.TB, req request) result {
	t.Helper()
	body := []byte(req.body)
	if req.gzip {
		body = gzipped(t, body)
	}
	var rd io.Reader = bytes.NewReader(body)
	if req.chunked {
		rd = io.MultiReader(rd) // hides the length from httptest.NewRequest
	}
	r := httptest.NewRequest(http.MethodPost, req.path, rd)
	if req.chunked {
		r.ContentLength = -1
	}
	if req.key != "" {
		r.SetBasicAuth(req.key, "")
	}
	if req.gzip {
		r.Header.Set("Content-Encoding", "gzip")
	}
	if req.encoding != "" {
		r.Header.Set("Content-Encoding", req.encoding)
	}
	w := httptest.NewRecorder()
	b.h.ServeHTTP(w, r)
	res := result{status: w.Code, retryAfter: w.Header().Get("Retry-After"), raw: w.Body.String()}
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
		t.Fatalf("%s answered %d with a body that is not JSON: %q", req.path, w.Code, w.Body.String())
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	return res
}

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pending returns the payloads stored for a queue, in order.
func (b *bundle) pending(t testing.TB, source, dest string) []map[string]any {
	t.Helper()
	jobs, err := b.store.Pending(context.Background(), jobstore.Queue{Source: source, Destination: dest}, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]map[string]any, len(jobs))
	for i, j := range jobs {
		m, err := j.Event.Fields()
		if err != nil {
			t.Fatalf("stored payload is not JSON: %v: %s", err, j.Event.Payload)
		}
		out[i] = m
	}
	return out
}

func track(extra string) string {
	return `{"userId":"u1","event":"Signed Up"` + extra + `}`
}

func TestRejected(t *testing.T) {
	big := strings.Repeat("x", ingest.MaxEventBytes)
	oversizedBatch := `{"batch":[` + strings.Repeat(`{"type":"track","userId":"u","event":"e"},`, ingest.MaxBatchEvents) +
		`{"type":"track","userId":"u","event":"e"}]}`
	huge := `{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("y", ingest.MaxRequestBytes) + `"}}`
	tests := []struct {
		name   string
		req    request
		status int
		msg    string
	}{
		// 401
		{"no write key", request{path: "/v1/track", body: track("")}, 401, "missing write key"},
		{"unknown basic auth key", request{path: "/v1/track", key: "nope", body: track("")}, 401, "unknown write key"},
		{"unknown body key", request{path: "/v1/track", body: track(`,"writeKey":"nope"`)}, 401, "unknown write key"},
		{"body key not a string", request{path: "/v1/track", body: track(`,"writeKey":12`)}, 401, "missing write key"},
		{"batch without key", request{path: "/v1/batch", body: `{"batch":[` + track("") + `]}`}, 401, "missing write key"},

		// the body
		{"invalid JSON", request{path: "/v1/track", key: webKey, body: `{"userId":"u1",}`}, 400,
			"expected a JSON object, found invalid JSON: at byte 16: found '}', expected a member name in double quotes"},
		{"truncated JSON", request{path: "/v1/track", key: webKey, body: `{"userId":"u1"`}, 400,
			"expected a JSON object, found invalid JSON"},
		{"array body", request{path: "/v1/track", key: webKey, body: `[` + track("") + `]`}, 400, "expected a JSON object, found an array"},
		{"string body", request{path: "/v1/batch", key: webKey, body: `"hi"`}, 400, `expected a JSON object, found the string "hi"`},
		{"empty body", request{path: "/v1/track", key: webKey, body: ``}, 400, "expected a JSON object, found an empty body"},
		{"invalid UTF-8", request{path: "/v1/track", key: webKey, body: track(`,"p":"` + "\xff" + `"`)}, 400, "expected UTF-8 text"},
		{"body over 500 KB", request{path: "/v1/track", key: webKey, body: huge}, 400,
			fmt.Sprintf("request body is %d bytes, the limit is %d", len(huge), ingest.MaxRequestBytes)},
		{"chunked body over 500 KB", request{path: "/v1/track", key: webKey, body: huge, chunked: true}, 400,
			fmt.Sprintf("request body is over %d bytes, the limit", ingest.MaxRequestBytes)},
		{"event over 32 KB", request{path: "/v1/track", key: webKey, body: track(`,"p":"` + big + `"`)}, 400,
			fmt.Sprintf("event is %d bytes, the limit is %d", len(track(`,"p":"`+big+`"`)), ingest.MaxEventBytes)},
		{"bad gzip", request{path: "/v1/track", key: webKey, body: track(""), encoding: "gzip"}, 400,
			"expected a gzip body as Content-Encoding says, found gzip: invalid header"},
		{"gzip bomb", request{path: "/v1/track", key: webKey, gzip: true,
			body: `{"userId":"u","event":"e","p":"` + strings.Repeat("0", 50<<20) + `"}`}, 400,
			fmt.Sprintf("request body decompresses to over %d bytes, the limit", ingest.MaxRequestBytes)},
		{"unsupported encoding", request{path: "/v1/track", key: webKey, body: track(""), encoding: "br"}, 400,
			`expected Content-Encoding gzip or none, found "br"`},

		// one event
		{"no identity", request{path: "/v1/identify", key: webKey, body: `{"traits":{}}`}, 400,
			"expected userId or anonymousId, found userId nothing and anonymousId nothing"},
		{"empty identity", request{path: "/v1/identify", key: webKey, body: `{"userId":"","anonymousId":null}`}, 400,
			"expected userId or anonymousId, found userId an empty string and anonymousId null"},
		{"userId of the wrong type", request{path: "/v1/identify", key: webKey, body: `{"userId":true}`}, 400,
			"expected userId to be a string or a number, found a boolean"},
		{"anonymousId of the wrong type", request{path: "/v1/identify", key: webKey, body: `{"userId":"u","anonymousId":{}}`}, 400,
			"expected anonymousId to be a string or a number, found an object"},
		{"track without event", request{path: "/v1/track", key: webKey, body: `{"userId":"u"}`}, 400,
			"expected event (the name of the tracked action) to be a non-empty string, found nothing"},
		{"track with empty event", request{path: "/v1/track", key: webKey, body: `{"userId":"u","event":""}`}, 400,
			"expected event (the name of the tracked action) to be a non-empty string, found an empty string"},
		{"track with numeric event", request{path: "/v1/track", key: webKey, body: `{"userId":"u","event":7}`}, 400,
			"expected event (the name of the tracked action) to be a non-empty string, found a number"},
		{"group without groupId", request{path: "/v1/group", key: webKey, body: `{"userId":"u"}`}, 400,
			"expected groupId to be a non-empty string or a number, found nothing"},
		{"alias without previousId", request{path: "/v1/alias", key: webKey, body: `{"userId":"u","previousId":""}`}, 400,
			"expected previousId to be a non-empty string or a number, found an empty string"},
		{"bad timestamp", request{path: "/v1/track", key: webKey, body: track(`,"timestamp":"yesterday"`)}, 400,
			`expected timestamp to be an ISO 8601 date-time such as 2024-05-01T12:00:00.000Z, found the string "yesterday"`},
		{"numeric timestamp", request{path: "/v1/track", key: webKey, body: track(`,"timestamp":1714564800`)}, 400,
			`expected timestamp to be an ISO 8601 date-time such as 2024-05-01T12:00:00.000Z, found a number`},
		{"bad sentAt", request{path: "/v1/track", key: webKey, body: track(`,"sentAt":"2024-13-01T00:00:00Z"`)}, 400,
			`expected sentAt to be an ISO 8601 date-time`},
		{"messageId of the wrong type", request{path: "/v1/track", key: webKey, body: track(`,"messageId":true`)}, 400,
			"expected messageId to be a string or a number, found a boolean"},
		{"context not an object", request{path: "/v1/track", key: webKey, body: track(`,"context":[]`)}, 400,
			"expected context to be an object, found an array"},
		{"integrations not an object", request{path: "/v1/track", key: webKey, body: track(`,"integrations":"all"`)}, 400,
			`expected integrations to be an object, found the string "all"`},

		// batches
		{"batch missing", request{path: "/v1/batch", key: webKey, body: track("")}, 400,
			"expected batch to be an array of events, found nothing"},
		{"batch not an array", request{path: "/v1/import", key: webKey, body: `{"batch":{}}`}, 400,
			"expected batch to be an array of events, found an object"},
		{"batch empty", request{path: "/v1/batch", key: webKey, body: `{"batch":[]}`}, 400,
			"expected batch to hold at least one event, found an empty array"},
		{"batch over 2,500 events", request{path: "/v1/batch", key: webKey, body: oversizedBatch}, 400,
			"batch holds 2501 events, the limit is 2500"},
		{"batch context not an object", request{path: "/v1/batch", key: webKey, body: `{"batch":[],"context":"x"}`}, 400,
			`expected the batch's context to be an object, found the string "x"`},
		{"batch sentAt not a date", request{path: "/v1/batch", key: webKey, body: `{"batch":[],"sentAt":"now"}`}, 400,
			`expected sentAt to be an ISO 8601 date-time such as 2024-05-01T12:00:00.000Z, found the string "now"`},
		{"batch context copied into too many events", request{path: "/v1/batch", key: webKey,
			body: `{"context":{"p":"` + strings.Repeat("c", 3000) + `"},"batch":[` + strings.Repeat(`{"type":"track","userId":"u","event":"e"},`, 1999) +
				`{"type":"track","userId":"u","event":"e"}]}`}, 400,
			"batch would be 6103030 bytes once its context and integrations are copied into each of its 2000 events, the limit is 5120000"},
		{"every batch event invalid", request{path: "/v1/batch", key: webKey,
			body: `{"batch":[{"type":"track","userId":"u"},{"userId":"u","event":"e"},7]}`}, 400,
			"every event of the batch was rejected; the first, at index 0: expected event (the name of the tracked action) to be a non-empty string, found nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t)
			res := b.do(t, tt.req)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d; body %s", res.status, tt.status, res.raw)
			}
			if res.Success {
				t.Errorf("success true in a %d answer", res.status)
			}
			if !strings.Contains(res.Message, tt.msg) {
				t.Errorf("message %q\nwant it to contain %q", res.Message, tt.msg)
			}
			if len(b.accepted) != 0 {
				t.Errorf("the store announced %d entries for a rejected request", len(b.accepted))
			}
			if jobs := b.pending(t, "web", "hooks"); len(jobs) != 0 {
				t.Errorf("%d jobs stored for a rejected request", len(jobs))
			}
			logs := b.logs.String()
			if !strings.Contains(logs, "request rejected") {
				t.Errorf("rejection not logged: %q", logs)
			}
			if strings.Contains(logs, webKey) {
				t.Errorf("the write key is in the log: %q", logs)
			}
			if tt.req.key == webKey && !strings.Contains(logs, "source=web") {
				t.Errorf("source not in the log: %q", logs)
			}
		})
	}
}

func TestEveryBatchEventInvalidListsThem(t *testing.T) {
	b := setup(t)
	res := b.do(t, request{path: "/v1/batch", key: webKey,
		body: `{"batch":[{"type":"track","userId":"u"},{"userId":"u","event":"e"},7]}`})
	want := []ingest.Rejection{
		{Index: 0, Reason: "expected event (the name of the tracked action) to be a non-empty string, found nothing"},
		{Index: 1, Reason: "expected type to be one of identify, track, page, screen, group, alias, found nothing"},
		{Index: 2, Reason: "expected an event object, found a number"},
	}
	if fmt.Sprint(res.Rejected) != fmt.Sprint(want) {
		t.Errorf("rejected %v\nwant %v", res.Rejected, want)
	}
}

func TestBatchEventTooLargeWithContext(t *testing.T) {
	b := setup(t)
	ctx := `{"p":"` + strings.Repeat("c", 20000) + `"}`
	ev := `{"type":"track","userId":"u","event":"e","properties":{"p":"` + strings.Repeat("p", 15000) + `"}}`
	res := b.do(t, request{path: "/v1/batch", key: webKey, body: `{"context":` + ctx + `,"batch":[` + ev + `,` + track(`,"type":"track"`) + `]}`})
	want := []ingest.Rejection{{Index: 0, Reason: fmt.Sprintf(
		"event is %d bytes with the batch's context and integrations merged in, the limit is %d", len(ev)+len(ctx), ingest.MaxEventBytes)}}
	if res.status != 200 || fmt.Sprint(res.Rejected) != fmt.Sprint(want) {
		t.Errorf("status %d, rejected %v\nwant 200, %v", res.status, res.Rejected, want)
	}
}

func TestBatchPartlyRejected(t *testing.T) {
	b := setup(t)
	res := b.do(t, request{path: "/v1/batch", key: webKey, body: `{"batch":[
		{"type":"track","userId":"u","event":"one"},
		{"type":"fly","userId":"u"},
		{"type":"identify","anonymousId":"a"},
		{"type":"group","userId":"u"}
	]}`})
	if res.status != 200 || !res.Success {
		t.Fatalf("status %d success %v, want 200 true: %s", res.status, res.Success, res.raw)
	}
	want := []ingest.Rejection{
		{Index: 1, Reason: `expected type to be one of identify, track, page, screen, group, alias, found the string "fly"`},
		{Index: 3, Reason: "expected groupId to be a non-empty string or a number, found nothing"},
	}
	if fmt.Sprint(res.Rejected) != fmt.Sprint(want) {
		t.Errorf("rejected %v\nwant %v", res.Rejected, want)
	}
	jobs := b.pending(t, "web", "hooks")
	if len(jobs) != 2 || jobs[0]["event"] != "one" || jobs[1]["type"] != "identify" {
		t.Errorf("stored %v, want the track and the identify", jobs)
	}
	if len(b.accepted) != 2 {
		t.Errorf("the store announced %d entries, want 2", len(b.accepted))
	}
}

// TestStored checks the payload stored for one call: the server-set fields,
// and everything else exactly as sent.
func TestStored(t *testing.T) {
	tests := []struct {
		name string
		req  request
		// want are members the stored payload must have, as JSON.
		want map[string]string
		// absent are members it must not have.
		absent []string
	}{
		{
			name:   "server fields are set",
			req:    request{path: "/v1/track", key: webKey, body: track(`,"type":"identify","receivedAt":"1999-01-01T00:00:00Z"`)},
			want:   map[string]string{"type": `"track"`, "receivedAt": `"` + nowJSON + `"`, "timestamp": `"` + nowJSON + `"`},
			absent: []string{"originalTimestamp"},
		},
		{
			name: "messageId kept when present",
			req:  request{path: "/v1/track", key: webKey, body: track(`,"messageId":"m-1"`)},
			want: map[string]string{"messageId": `"m-1"`},
		},
		{
			name: "numbers keep their precision",
			req: request{path: "/v1/identify", key: webKey,
				body: `{"userId":123456789012345678901234567890,"traits":{"big":9007199254740993,"exact":0.10000000000000000555,"huge":1e400,"neg":-0}}`},
			want: map[string]string{
				"userId": `123456789012345678901234567890`,
				"traits": `{"big":9007199254740993,"exact":0.10000000000000000555,"huge":1e400,"neg":-0}`,
			},
		},
		{
			name: "unicode and escapes kept",
			req:  request{path: "/v1/track", key: webKey, body: track(`,"properties":{"name":"Zoë 🎉 \u00e9\n\"q\"","\u0041":1}`)},
			want: map[string]string{"properties": `{"name":"Zoë 🎉 \u00e9\n\"q\"","\u0041":1}`},
		},
		{
			name: "clock skew corrected",
			req: request{path: "/v1/track", key: webKey,
				body: track(`,"timestamp":"2024-05-01T10:00:00.000Z","sentAt":"2024-05-01T10:00:05.500+02:00"`)},
			// sentAt is 08:00:05.5Z, so sentAt - timestamp is -1h59m54.5s
			// (zones count) and timestamp = receivedAt + 1h59m54.5s.
			want: map[string]string{
				"timestamp":         `"2024-05-01T13:59:54.623Z"`,
				"originalTimestamp": `"2024-05-01T10:00:00.000Z"`,
				"sentAt":            `"2024-05-01T10:00:05.500+02:00"`,
			},
		},
		{
			name: "timestamp 5s before sentAt",
			req: request{path: "/v1/track", key: webKey,
				body: track(`,"timestamp":"2020-01-01T00:00:00Z","sentAt":"2020-01-01T00:00:05Z"`)},
			want: map[string]string{"timestamp": `"2024-05-01T11:59:55.123Z"`, "originalTimestamp": `"2020-01-01T00:00:00Z"`},
		},
		{
			name:   "timestamp without sentAt kept",
			req:    request{path: "/v1/track", key: webKey, body: track(`,"timestamp":"2020-01-01T00:00:00+01:00"`)},
			want:   map[string]string{"timestamp": `"2020-01-01T00:00:00+01:00"`},
			absent: []string{"originalTimestamp"},
		},
		{
			name: "client's originalTimestamp kept",
			req: request{path: "/v1/track", key: webKey,
				body: track(`,"timestamp":"2020-01-01T00:00:00Z","sentAt":"2020-01-01T00:00:05Z","originalTimestamp":"2019-12-31T23:59:59Z"`)},
			want: map[string]string{"originalTimestamp": `"2019-12-31T23:59:59Z"`},
		},
		{
			name:   "write key in the body is not stored",
			req:    request{path: "/v1/track", body: track(`,"writeKey":"` + webKey + `"`)},
			want:   map[string]string{"event": `"Signed Up"`},
			absent: []string{"writeKey"},
		},
		{
			name: "repeated names: the last counts",
			req:  request{path: "/v1/track", key: webKey, body: `{"userId":"","event":"a","userId":"u2","event":"b"}`},
			want: map[string]string{"userId": `"u2"`, "event": `"b"`},
		},
		{
			name: "gzip",
			req:  request{path: "/v1/track", key: webKey, gzip: true, body: track(`,"properties":{"n":1}`)},
			want: map[string]string{"properties": `{"n":1}`},
		},
		{
			name: "anonymousId only, numeric",
			req:  request{path: "/v1/page", key: webKey, body: `{"anonymousId":42,"name":"Home"}`},
			want: map[string]string{"anonymousId": `42`, "type": `"page"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t)
			res := b.do(t, tt.req)
			if res.status != 200 || !res.Success || res.raw != `{"success":true}` {
				t.Fatalf("status %d, body %s; want 200 {\"success\":true}", res.status, res.raw)
			}
			if len(b.accepted) != 1 {
				t.Fatalf("the store announced %d entries, want 1", len(b.accepted))
			}
			e := b.accepted[0].Event
			raw := rawMembers(t, e.Payload)
			for k, v := range tt.want {
				if raw[k] != v {
					t.Errorf("%s = %s, want %s", k, raw[k], v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := raw[k]; ok {
					t.Errorf("%s = %s, want it absent", k, v)
				}
			}
			checkEntry(t, b.accepted[0], "web")
			if !e.ReceivedAt.Equal(now.Truncate(time.Millisecond)) {
				t.Errorf("ReceivedAt %v, want %v", e.ReceivedAt, now)
			}
			if jobs := b.pending(t, "web", "hooks"); len(jobs) != 1 {
				t.Errorf("%d jobs stored for hooks, want 1", len(jobs))
			}
		})
	}
}

// rawMembers decodes a payload into its members' raw JSON, failing on
// repeated names.
func rawMembers(t testing.TB, payload []byte) map[string]string {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(payload))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("payload is not an object: %s", payload)
	}
	out := map[string]string{}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			t.Fatalf("payload %s: %v", payload, err)
		}
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			t.Fatalf("payload %s: %v", payload, err)
		}
		k := tok.(string)
		if _, ok := out[k]; ok {
			t.Errorf("payload repeats %q: %s", k, payload)
		}
		out[k] = string(v)
	}
	return out
}

// checkEntry checks what holds for every accepted entry.
func checkEntry(t testing.TB, e jobstore.Entry, source string) {
	t.Helper()
	if !json.Valid(e.Event.Payload) {
		t.Fatalf("payload is not valid JSON: %s", e.Event.Payload)
	}
	m, err := e.Event.Fields()
	if err != nil {
		t.Fatalf("payload is not an object: %v: %s", err, e.Event.Payload)
	}
	if e.Event.Source != source {
		t.Errorf("Source %q, want %q", e.Event.Source, source)
	}
	if id, _ := m["messageId"].(string); id == "" || id != e.Event.MessageID {
		t.Errorf("messageId %v, MessageID %q: want equal and non-empty", m["messageId"], e.Event.MessageID)
	}
	if typ, _ := m["type"].(string); typ == "" || typ != e.Event.Type {
		t.Errorf("type %v, Type %q: want equal and non-empty", m["type"], e.Event.Type)
	}
	if at, _ := m["receivedAt"].(string); at != e.Event.ReceivedAt.Format("2006-01-02T15:04:05.000Z") {
		t.Errorf("receivedAt %v, ReceivedAt %v: want equal", m["receivedAt"], e.Event.ReceivedAt)
	}
}

func TestMessageIDSetWhenAbsent(t *testing.T) {
	b := setup(t)
	body := `{"batch":[` + track("") + `,` + track(`,"messageId":null`) + `,` + track(`,"messageId":""`) + `]}`
	body = strings.ReplaceAll(body, `{"userId"`, `{"type":"track","userId"`)
	if res := b.do(t, request{path: "/v1/batch", key: webKey, body: body}); res.status != 200 {
		t.Fatalf("status %d: %s", res.status, res.raw)
	}
	seen := map[string]bool{}
	for _, e := range b.accepted {
		checkEntry(t, e, "web")
		id := e.Event.MessageID
		if !strings.HasPrefix(id, "fanout-") || len(id) != len("fanout-")+32 || seen[id] {
			t.Errorf("messageId %q: want a new fanout-<32 hex>", id)
		}
		seen[id] = true
	}
	if len(seen) != 3 {
		t.Errorf("%d messageIds, want 3", len(seen))
	}
}

func TestBatchMerge(t *testing.T) {
	b := setup(t)
	res := b.do(t, request{path: "/v1/batch", key: webKey, body: `{
		"batch": [
			{"type":"track","userId":"u","event":"a","timestamp":"2024-05-01T11:00:00Z"},
			{"type":"track","userId":"u","event":"b","context":{"ip":"1.1.1.1","page":{"path":"/"}},"integrations":{"Slack":true},"sentAt":"2024-05-01T11:00:00Z","timestamp":"2024-05-01T11:00:00Z"},
			{"type":"track","userId":"u","event":"c","context":{},"integrations":null}
		],
		"context": {"library":{"name":"analytics-go"},"ip":"9.9.9.9"},
		"integrations": {"All":false,"Webhook":true},
		"sentAt": "2024-05-01T11:00:10Z"
	}`})
	if res.status != 200 {
		t.Fatalf("status %d: %s", res.status, res.raw)
	}
	if len(b.accepted) != 3 {
		t.Fatalf("the store announced %d entries, want 3", len(b.accepted))
	}
	want := []map[string]string{
		{
			"context":      `{"library":{"name":"analytics-go"},"ip":"9.9.9.9"}`,
			"integrations": `{"All":false,"Webhook":true}`,
			"sentAt":       `"2024-05-01T11:00:10Z"`,
			"timestamp":    `"2024-05-01T11:59:50.123Z"`, // batch sentAt corrects it
		},
		{
			"context":      `{"ip":"1.1.1.1","page":{"path":"/"},"library":{"name":"analytics-go"}}`,
			"integrations": `{"Slack":true,"All":false,"Webhook":true}`,
			"sentAt":       `"2024-05-01T11:00:00Z"`,
			"timestamp":    `"2024-05-01T12:00:00.123Z"`, // its own sentAt wins
		},
		{
			"context":      `{"library":{"name":"analytics-go"},"ip":"9.9.9.9"}`,
			"integrations": `{"All":false,"Webhook":true}`,
		},
	}
	wantTo := [][]string{{"hooks"}, {"hooks", "alerts"}, {"hooks"}}
	for i, e := range b.accepted {
		checkEntry(t, e, "web")
		raw := rawMembers(t, e.Event.Payload)
		for k, v := range want[i] {
			if raw[k] != v {
				t.Errorf("event %d: %s = %s, want %s", i, k, raw[k], v)
			}
		}
		if fmt.Sprint(e.Destinations) != fmt.Sprint(wantTo[i]) {
			t.Errorf("event %d: destinations %v, want %v", i, e.Destinations, wantTo[i])
		}
	}
	if n := len(b.pending(t, "web", "alerts")); n != 1 {
		t.Errorf("%d jobs for alerts, want 1", n)
	}
}

func TestDuplicates(t *testing.T) {
	b := setup(t)
	req := request{path: "/v1/track", key: webKey, body: track(`,"messageId":"m-dup"`)}
	for i := range 2 {
		if res := b.do(t, req); res.status != 200 || res.raw != `{"success":true}` {
			t.Fatalf("call %d: status %d, body %s", i, res.status, res.raw)
		}
	}
	// The same messageId from another source is not a duplicate.
	req.key = serverKey
	if res := b.do(t, req); res.status != 200 {
		t.Fatalf("status %d: %s", res.status, res.raw)
	}
	if len(b.accepted) != 2 || b.accepted[0].Event.Source != "web" || b.accepted[1].Event.Source != "server" {
		t.Fatalf("the store announced %v, want the first call of each source", b.accepted)
	}
	if n := len(b.pending(t, "web", "hooks")); n != 1 {
		t.Errorf("%d jobs stored, want 1", n)
	}
}

// TestNoDestinations checks that an event routed nowhere is still accepted
// and remembered for deduplication.
func TestNoDestinations(t *testing.T) {
	b := setup(t)
	req := request{path: "/v1/track", key: webKey, body: track(`,"messageId":"m-none","integrations":{"All":false}`)}
	for range 2 {
		if res := b.do(t, req); res.status != 200 {
			t.Fatalf("status %d: %s", res.status, res.raw)
		}
	}
	if len(b.accepted) != 1 || len(b.accepted[0].Destinations) != 0 {
		t.Fatalf("the store announced %v, want one entry without destinations", b.accepted)
	}
	if n := len(b.pending(t, "web", "hooks")); n != 0 {
		t.Errorf("%d jobs stored, want 0", n)
	}
}

func TestStoreClosed(t *testing.T) {
	b := setup(t)
	if err := b.store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/track", "/v1/batch"} {
		body := track("")
		if path == "/v1/batch" {
			body = `{"batch":[{"type":"track",` + track("")[1:] + `]}`
		}
		res := b.do(t, request{path: path, key: webKey, body: body})
		if res.status != 503 || res.retryAfter == "" || res.Success {
			t.Errorf("%s: status %d, Retry-After %q, body %s; want 503 with Retry-After", path, res.status, res.retryAfter, res.raw)
		}
		if !strings.Contains(res.Message, "retry later") {
			t.Errorf("%s: message %q", path, res.Message)
		}
	}
	if len(b.accepted) != 0 {
		t.Errorf("the store announced events it refused")
	}
}

func TestRoutes(t *testing.T) {
	b := setup(t)
	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/v1/track", http.StatusMethodNotAllowed},
		{"POST", "/v1/unknown", http.StatusNotFound},
		{"POST", "/v1/screen", http.StatusOK},
		{"POST", "/v1/import", http.StatusBadRequest}, // no batch member
	} {
		r := httptest.NewRequest(tt.method, tt.path, strings.NewReader(`{"userId":"u","name":"s"}`))
		r.SetBasicAuth(webKey, "")
		w := httptest.NewRecorder()
		b.h.ServeHTTP(w, r)
		if w.Code != tt.status {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, w.Code, tt.status)
		}
	}
}

// TestBasicAuthHeader checks the header exactly as Segment's libraries build
// it: the write key and a colon, base64-encoded.
func TestBasicAuthHeader(t *testing.T) {
	b := setup(t)
	r := httptest.NewRequest("POST", "/v1/track", strings.NewReader(track("")))
	r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(webKey+":")))
	w := httptest.NewRecorder()
	b.h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
}
