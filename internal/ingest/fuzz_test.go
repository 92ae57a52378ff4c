package ingest_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// paths are the endpoints FuzzIngest spreads its inputs over.
var paths = []string{"/v1/identify", "/v1/track", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch", "/v1/import",
	// The short paths of analytics.js and the mobile libraries, from 8.
	"/v1/i", "/v1/t", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/v1/b"}

// FuzzIngest drives the handler, real store included, with arbitrary bodies.
// Invariants: no panic; the answer is 200 or 400 with a JSON body; a 200 means
// every accepted event was handed on as a JSON object carrying the server-set
// messageId, receivedAt and type, equal to the Event's copies of them.
func FuzzIngest(f *testing.F) {
	seeds := []struct {
		path uint8
		body string
	}{
		{0, `{"userId":"u1","traits":{"email":"a@example.com","name":"Zoë"}}`},
		{1, `{"userId":"u1","event":"Signed Up","properties":{"plan":"pro"},"timestamp":"2024-05-01T10:00:00.000Z","sentAt":"2024-05-01T10:00:05.000Z"}`},
		{2, `{"anonymousId":"a1","name":"Home","properties":{"path":"/"}}`},
		{3, `{"anonymousId":42,"name":"Main"}`},
		{4, `{"userId":"u1","groupId":"g1","traits":{"employees":12}}`},
		{5, `{"userId":"u1","previousId":"a1"}`},
		{6, `{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"identify","anonymousId":"a"},{"type":"nope"},7],"context":{"library":{"name":"x"}},"integrations":{"All":false,"webhook":true},"sentAt":"2024-05-01T10:00:05Z"}`},
		{7, `{"batch":[{"type":"alias","userId":"u","previousId":"p","messageId":"m1"},{"type":"alias","userId":"u","previousId":"p","messageId":"m1"}]}`},
		{1, `{"userId":"u","event":"e",}`},
		{1, `{"userId":"u","event":"e"`},
		{6, `[1,2,3]`},
		{6, ``},
		{1, `{"userId":123456789012345678901234567890,"event":"e","properties":{"n":1e400,"m":-0.0000000000000000000001,"big":9007199254740993}}`},
		{1, `{"userId":"\u00e9\ud83c\udf89","event":"\u2028🎉","properties":{"\u0041":"\"\\\/"},"\u0075serId":"dup"}`},
		{1, `{"userId":"u","event":"e","timestamp":"9999-12-31T23:59:59Z","sentAt":"0001-01-01T00:00:00Z"}`},
		{1, `{"userId":"u","event":"e","context":{"ip":"1"},"integrations":{"Slack":{"channel":"x"},"All":true}}`},
		{6, `{"batch":[{"type":"page","userId":"u","context":null,"integrations":{}}],"context":{"a":1},"integrations":{"b":false}}`},
		// member types: objects, date-times and identifiers of the wrong type,
		// numeric identifiers, nulls, repeated names
		{0, `{"userId":"u","traits":"x"}`},
		{1, `{"userId":"u","event":"e","properties":[1,2]}`},
		{1, `{"userId":"u","event":"e","originalTimestamp":1714564800000}`},
		{1, `{"userId":"u","event":"e","originalTimestamp":"2024-05-01T10:00:00+02:00","timestamp":"2024-05-01T10:00:00Z"}`},
		{2, `{"anonymousId":"a","messageId":1714564800123,"properties":null,"traits":null}`},
		{3, `{"anonymousId":"a","messageId":{"id":1}}`},
		{4, `{"userId":false,"anonymousId":"a","groupId":"g"}`},
		{1, `{"userId":"u","event":"e","properties":"x","properties":{},"sentAt":"2024-05-01"}`},
		{6, `{"batch":[{"type":"identify","userId":"u","traits":7},{"type":"track","userId":"u","event":"e","messageId":-1.5e3,"context":[]},{"type":"page","anonymousId":true},{"type":"screen","userId":"u","originalTimestamp":"now"}]}`},
		// What analytics.js and the mobile libraries send to the short paths.
		{9, `{"event":"Clicked","properties":{"x":1},"type":"track","userId":"u1","anonymousId":"a1","messageId":"ajs-next-1","writeKey":"wk","sentAt":"2024-05-01T10:00:05.000Z","timestamp":"2024-05-01T10:00:00.000Z","context":{"page":{"path":"/","url":"http://localhost/"},"userAgent":"Mozilla/5.0","library":{"name":"analytics.js","version":"npm:next-1.84.3"}},"_metadata":{"bundled":["Segment.io"],"unbundled":[],"bundledIds":[]}}`},
		{13, `{"type":"alias","userId":"new","previousId":"old","anonymousId":"a1"}`},
		{14, `{"writeKey":"wk","batch":[{"type":"identify","userId":"","anonymousId":"a","traits":{}},{"type":"screen","anonymousId":"a","name":"Cart"}],"sentAt":"2024-05-01T10:00:05.000Z"}`},
	}
	for _, s := range seeds {
		f.Add(s.path, []byte(s.body))
	}
	b := setup(f)
	f.Fuzz(func(t *testing.T, path uint8, body []byte) {
		b.mu.Lock()
		b.accepted = b.accepted[:0]
		b.mu.Unlock()
		b.logs.Reset()

		r := httptest.NewRequest(http.MethodPost, paths[int(path)%len(paths)], bytes.NewReader(body))
		r.SetBasicAuth(webKey, "")
		w := httptest.NewRecorder()
		b.h.ServeHTTP(w, r)

		var res struct {
			Success bool   `json:"success"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
			t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body)
		}
		switch w.Code {
		case 200:
			if !res.Success {
				t.Fatalf("200 without success: %s", w.Body)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			for _, e := range b.accepted {
				checkEntry(t, e, "web")
				rawMembers(t, e.Event.Payload) // no repeated names
			}
		case 400:
			if res.Success || res.Message == "" || strings.Contains(res.Message, webKey) {
				t.Fatalf("400 body %s", w.Body)
			}
		default:
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
	})
}
