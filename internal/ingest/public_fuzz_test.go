package ingest_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzPublic drives the endpoints of the browser and mobile libraries with
// arbitrary bodies, content types, encodings and origins: the short paths,
// /v1/m, preflights and the settings document. Invariants: no panic; every
// answer of a POST is JSON with an expected status; Access-Control-Allow-
// Origin is the request's Origin exactly when the source allows it and the
// request was not refused for it.
func FuzzPublic(f *testing.F) {
	type seed struct {
		path, contentType, origin uint8
		gzip                      bool
		body                      string
	}
	for _, s := range []seed{
		{0, 0, 1, false, `{"writeKey":"wk_web","userId":"u","event":"e"}`},
		{6, 0, 2, false, `{"writeKey":"wk_shop","batch":[{"type":"track","userId":"u","event":"e"}],"sentAt":"2024-05-01T10:00:05.000Z"}`},
		{6, 1, 0, true, `{"writeKey":"wk_limited","batch":[{"type":"screen","anonymousId":"a","name":"Cart"}]}`},
		{7, 0, 1, false, `{"series":[{"type":"Counter","metric":"analytics_js.invoke.track","value":1,"tags":["a"]}]}`},
		{8, 0, 3, false, ``},
		{9, 0, 2, false, ``},
		{3, 2, 3, false, `{"writeKey":"wk_shop","userId":"u","groupId":"g"}`},
		{1, 3, 1, false, `not json`},
	} {
		f.Add(s.path, s.contentType, s.origin, s.gzip, []byte(s.body))
	}
	b := publicSetup(f)
	routes := []struct{ method, path string }{
		{"POST", "/v1/t"}, {"POST", "/v1/i"}, {"POST", "/v1/p"}, {"POST", "/v1/g"}, {"POST", "/v1/a"}, {"POST", "/v1/s"},
		{"POST", "/v1/b"}, {"POST", "/v1/m"}, {"OPTIONS", "/v1/b"}, {"GET", "/v1/projects/wk_shop/settings"},
	}
	contentTypes := []string{"text/plain", "application/json", "", "text/plain;charset=UTF-8"}
	origins := []string{"", "https://any.example.org", "https://shop.example.com", "null"}
	f.Fuzz(func(t *testing.T, path, contentType, origin uint8, gz bool, body []byte) {
		route := routes[int(path)%len(routes)]
		o := origins[int(origin)%len(origins)]
		if gz {
			body = gzipped(t, body)
		}
		r := httptest.NewRequest(route.method, route.path, bytes.NewReader(body))
		if ct := contentTypes[int(contentType)%len(contentTypes)]; ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		if gz {
			r.Header.Set("Content-Encoding", "gzip")
		}
		if o != "" {
			r.Header.Set("Origin", o)
		}
		w := httptest.NewRecorder()
		b.h.ServeHTTP(w, r)

		allow := w.Header().Get("Access-Control-Allow-Origin")
		if w.Code == http.StatusForbidden || o == "" {
			if allow != "" {
				t.Fatalf("%d with Access-Control-Allow-Origin %q for Origin %q", w.Code, allow, o)
			}
		} else if allow != o {
			t.Fatalf("%d with Access-Control-Allow-Origin %q, want %q", w.Code, allow, o)
		}
		switch route.method {
		case "OPTIONS":
			if w.Code != http.StatusNoContent && (o != "" || w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed) {
				t.Fatalf("preflight: %d", w.Code)
			}
			return
		case "GET":
			if w.Code != http.StatusOK && w.Code != http.StatusForbidden {
				t.Fatalf("settings: %d %s", w.Code, w.Body)
			}
		}
		switch w.Code {
		case 200, 400, 401, 403, 429:
		default:
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body)
		}
	})
}
