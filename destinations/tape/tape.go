// Package tape is fanout's traffic recorder: integration tests send their
// requests through a client that replays request/response pairs ("tapes")
// stored in the package's testdata/, so the whole integrations suite runs
// in seconds with no network and no credentials.
//
// A tape is a YAML file, testdata/<name>.yaml, listing interactions:
//
//	version: 2
//	interactions:
//	  - id: 0
//	    request:
//	      method: POST
//	      url: https://api.example.com/v1/events?strict=1
//	      headers:
//	        Content-Type: [application/json]
//	        Authorization: [Bearer REDACTED]
//	      body: |
//	        {"event": "Signed Up", "id": "m1"}
//	    response:
//	      code: 429
//	      headers:
//	        Retry-After: ["30"]
//	      body: |
//	        {"error": "rate limited"}
//
// A tape checks what fanout sends as well as replaying what the API
// answers: a request is served only by an interaction whose method, URL
// (query parameters in any order), Content-Type, the headers the test names
// with MatchHeaders, and body all match. JSON bodies are compared as JSON
// (key order and spacing do not matter, values do), form bodies as forms.
// Each interaction answers once, so a test that sends the same request
// twice needs it twice on its tape. A request nothing matches fails the
// test with the request, how the closest interaction differs, and the
// command that records the tape; an interaction no request used fails it
// too, since it is a request fanout no longer sends.
//
// # Serving a tape
//
// Client suits a test that builds the integration itself. A test that runs
// fanout as a user does (the fanout serve binary, configured with an API
// base URL) cannot hand it a client; it starts an httptest.Server on
// Handler instead and points the destination's api_url at it:
//
//	tp := tape.New(t, "mixpanel", tape.MatchHeaders("Authorization"))
//	api := httptest.NewServer(tp.Handler("https://api.mixpanel.com"))
//	t.Cleanup(api.Close)
//
// The handler matches, answers and checks requests exactly as Client does,
// so one tape format and one matcher serve both kinds of test.
//
// # Recording
//
// With FANOUT_RECORD=1 in the environment, the client sends the requests to
// the live API instead and saves what happened, overwriting the tape:
//
//	FANOUT_RECORD=1 MIXPANEL_TOKEN=... go test ./destinations/mixpanel -run TestTrack
//
// A test takes its credentials from Tape.Secret, which reads the
// environment variable the test names when recording and returns REDACTED
// when replaying. Before the tape is saved, every secret value, the
// credentials of Authorization headers (the scheme stays: "Basic
// REDACTED"), the values of the headers in DefaultScrubHeaders and the
// values of the fields in DefaultScrubFields (in query strings, forms and
// JSON bodies, at any depth) are replaced by REDACTED; ScrubHeaders and
// ScrubFields add more. Requests are scrubbed the same way before they are
// matched, so a replayed request matches its scrubbed tape.
//
// The live APIs are often unreachable from where fanout is developed, so
// the first tape of an integration is usually written by hand from the
// request and response examples of the API's documentation; the package
// doc of each integration says which pages. A tape that holds answers no
// live API gives on demand, such as a test's scripted 429, is opened with
// NotRecorded: recording skips its test rather than overwrite it.
package tape

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
	"gopkg.in/dnaeon/go-vcr.v4/pkg/cassette"
	"gopkg.in/dnaeon/go-vcr.v4/pkg/recorder"
)

// RecordEnv is the environment variable that switches tapes to recording
// against the live API when set to 1.
const RecordEnv = "FANOUT_RECORD"

// Redacted replaces secrets in tapes, and is what Tape.Secret returns when
// replaying.
const Redacted = "REDACTED"

// DefaultScrubHeaders are request and response headers whose values never
// reach a tape.
var DefaultScrubHeaders = []string{"Authorization", "Api-Key", "X-Api-Key", "Cookie", "Set-Cookie"}

// DefaultScrubFields are query, form and JSON fields whose values never
// reach a tape: the names APIs commonly give credentials.
var DefaultScrubFields = []string{"api_key", "apikey", "api_secret", "access_token", "refresh_token",
	"client_secret", "password", "secret"}

// droppedHeaders are response headers a recorded tape leaves out: they
// change on every request and no classifier reads them.
var droppedHeaders = []string{"Date", "Content-Length", "Alt-Svc", "Via", "Strict-Transport-Security",
	"Server-Timing", "X-Request-Id", "Cf-Ray", "Set-Cookie"}

// Option configures a Tape.
type Option func(*Tape)

// MatchHeaders adds request headers that must match the tape, besides
// Content-Type. The tape must list them; a header it lists that is not
// named here is not compared.
func MatchHeaders(names ...string) Option {
	return func(tp *Tape) {
		for _, n := range names {
			tp.match = append(tp.match, http.CanonicalHeaderKey(n))
		}
	}
}

// NotRecorded marks a tape written by hand that recording must not
// overwrite, because it holds answers a live API cannot be made to give on
// demand (a 429, say), which reason names. With FANOUT_RECORD=1, New skips
// the test instead of recording; a request the tape does not hold is
// reported with the advice to edit the tape rather than to record it.
func NotRecorded(reason string) Option {
	return func(tp *Tape) { tp.notRecorded = reason }
}

// ScrubHeaders adds headers whose values are replaced by REDACTED.
func ScrubHeaders(names ...string) Option {
	return func(tp *Tape) {
		for _, n := range names {
			tp.scrubHeaders[http.CanonicalHeaderKey(n)] = true
		}
	}
}

// ScrubFields adds query, form and JSON field names whose values are
// replaced by REDACTED.
func ScrubFields(names ...string) Option {
	return func(tp *Tape) {
		for _, n := range names {
			tp.scrubFields[n] = true
		}
	}
}

// Tape is one test's tape, either replaying or recording.
type Tape struct {
	t         testing.TB
	file      string
	recording bool
	rec       *recorder.Recorder
	client    *http.Client

	match        []string
	notRecorded  string // why the tape is written by hand; empty: it is recorded
	scrubHeaders map[string]bool
	scrubFields  map[string]bool

	mu sync.Mutex
	// secrets are the live values Secret returned, replaced in what is
	// saved; vars maps live values of Var to their stand-ins.
	secrets []string
	vars    map[string]string
	// interactions is the tape as loaded, to explain a mismatch.
	interactions []*cassette.Interaction
	failedBefore bool
}

// New opens testdata/<name>.yaml for t: replaying it, or with FANOUT_RECORD=1
// recording it. The tape is checked (replay) or saved (record) when t ends.
// A missing tape fails t at once with the command that records it.
func New(t testing.TB, name string, opts ...Option) *Tape {
	t.Helper()
	tp := &Tape{
		t:            t,
		file:         filepath.Join("testdata", name+".yaml"),
		recording:    os.Getenv(RecordEnv) == "1",
		scrubHeaders: map[string]bool{},
		scrubFields:  map[string]bool{},
		vars:         map[string]string{},
	}
	ScrubHeaders(DefaultScrubHeaders...)(tp)
	ScrubFields(DefaultScrubFields...)(tp)
	for _, o := range opts {
		o(tp)
	}

	if tp.recording && tp.notRecorded != "" {
		// Before the recorder exists: stopping it would save an empty tape.
		t.Skipf("tape %s is written by hand, not recorded: %s", tp.file, tp.notRecorded)
	}
	mode := recorder.ModeReplayOnly
	if tp.recording {
		mode = recorder.ModeRecordOnly
	} else {
		if _, err := os.Stat(tp.file); err != nil {
			t.Fatalf("tape %s: %v\n%s", tp.file, err, tp.fixHint())
		}
	}
	rec, err := recorder.New(strings.TrimSuffix(tp.file, ".yaml"),
		recorder.WithMode(mode),
		recorder.WithMatcher(tp.matches),
		recorder.WithSkipRequestLatency(true),
		recorder.WithMarshalFunc(tp.marshal),
		recorder.WithHook(tp.beforeSave, recorder.BeforeSaveHook),
		recorder.WithHook(tp.beforeReplay, recorder.BeforeResponseReplayHook),
		recorder.WithHook(tp.atStop, recorder.OnRecorderStopHook),
	)
	if err != nil {
		t.Fatalf("tape %s: %v", tp.file, err)
	}
	tp.rec = rec
	if !tp.recording {
		c, err := cassette.Load(strings.TrimSuffix(tp.file, ".yaml"))
		if err != nil {
			t.Fatalf("tape %s: %v", tp.file, err)
		}
		tp.interactions = c.Interactions
	}
	tp.client = &http.Client{
		Transport: &transport{tp: tp},
		Timeout:   30 * time.Second,
		// Like fanout's own client: a redirect is the API's answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(func() {
		// A test that failed already (a request no interaction matched,
		// say) is not also told which interactions went unused.
		tp.failedBefore = t.Failed()
		if err := rec.Stop(); err != nil {
			t.Errorf("tape %s: %v", tp.file, err)
		}
	})
	return tp
}

// Client returns the HTTP client to send the test's requests through,
// for example as destinations.Sender.Client.
func (tp *Tape) Client() *http.Client { return tp.client }

// Recording reports whether the tape records against the live API.
func (tp *Tape) Recording() bool { return tp.recording }

// Secret returns a credential for the test: the value of the environment
// variable env when recording (failing the test if it is unset), REDACTED
// when replaying. The live value is replaced by REDACTED in the saved tape.
func (tp *Tape) Secret(env string) string {
	tp.t.Helper()
	if !tp.recording {
		return Redacted
	}
	v := tp.getenv(env, "the credential in $"+env)
	tp.mu.Lock()
	tp.secrets = append(tp.secrets, v)
	tp.mu.Unlock()
	return v
}

// Var returns a setting that differs between the live account and the
// tape, such as an account's own API host: the value of the environment
// variable env when recording (failing the test if it is unset), replay
// when replaying. The live value is replaced by replay in the saved tape.
func (tp *Tape) Var(env, replay string) string {
	tp.t.Helper()
	if !tp.recording {
		return replay
	}
	v := tp.getenv(env, "$"+env)
	tp.mu.Lock()
	tp.vars[v] = replay
	tp.mu.Unlock()
	return v
}

// getenv returns the value of the environment variable env for a
// recording, failing the test when it is unset with a message that the
// recording needs what.
func (tp *Tape) getenv(env, what string) string {
	tp.t.Helper()
	v := os.Getenv(env)
	if v == "" {
		tp.t.Fatalf("tape %s: recording needs %s", tp.file, what)
	}
	return v
}

// fixHint says how to bring the tape up to date: the command that records
// it, or, for a tape written by hand, to edit it.
func (tp *Tape) fixHint() string {
	if tp.notRecorded != "" {
		return fmt.Sprintf("edit the tape by hand: it is not recorded (%s)", tp.notRecorded)
	}
	return "record the tape against the live API with:\n\t" + tp.recordHint()
}

// recordHint is the command that records this test's tape.
func (tp *Tape) recordHint() string {
	pkg := "."
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				if rel, err := filepath.Rel(dir, wd); err == nil {
					pkg = "./" + filepath.ToSlash(rel)
				}
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	run := tp.t.Name()
	parts := strings.Split(run, "/")
	for i, p := range parts {
		parts[i] = "^" + regexpQuote(p) + "$"
	}
	return fmt.Sprintf("%s=1 go test %s -run '%s'", RecordEnv, pkg, strings.Join(parts, "/"))
}

// regexpQuote escapes what go test's -run would read as regexp syntax in a
// test name.
func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// transport sends requests through the recorder and turns "no interaction
// matches" into a test failure that says what to do.
type transport struct{ tp *Tape }

func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := readBody(req)
	if err != nil {
		return nil, err
	}
	resp, err := tr.tp.rec.RoundTrip(req)
	if errors.Is(err, cassette.ErrInteractionNotFound) {
		msg := tr.tp.mismatch(req, body)
		tr.tp.t.Errorf("%s", msg)
		return nil, &mismatchError{msg}
	}
	return resp, err
}

// mismatchError is the error of a request no interaction matched; the test
// has been failed already. Handler tells it from a transport error.
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string { return e.msg }

// Handler serves the tape as the API at base (its scheme and host, such as
// https://api.mixpanel.com, as the tape's URLs spell them) would answer,
// for a test whose code under test runs elsewhere, such as a fanout serve
// subprocess whose API base URL points at an httptest.Server on Handler.
//
// Each request's path and query are joined to base and the request goes
// through Client's transport: it is matched, answered and counted (or, when
// recording, sent to base) exactly as Client's requests are. A request no
// interaction matches fails the test as it would through Client, and is
// answered 501 Not Implemented with the explanation as its body: a status
// fanout never retries, so one wrong request is reported once, not again at
// every retry. A live API that cannot be reached while recording is
// answered 502 Bad Gateway.
//
// Start the server after New and close it in a t.Cleanup registered after
// New's, so that it stops before the tape checks that every interaction was
// used.
func (tp *Tape) Handler(base string) http.Handler {
	tp.t.Helper()
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" || u.Host == "" || u.RawQuery != "" {
		tp.t.Fatalf("tape %s: Handler needs the API's base URL as the tape spells it, such as https://api.example.com; found %q", tp.file, base)
	}
	base = strings.TrimRight(base, "/")
	rt := tp.client.Transport
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "tape: read the request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		out, err := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, "tape: "+err.Error(), http.StatusBadRequest)
			return
		}
		out.Header = r.Header.Clone()
		// The outbound transport negotiates its own compression and
		// connection; forwarding the client's would have a recording
		// keep a gzipped body.
		out.Header.Del("Accept-Encoding")
		out.Header.Del("Connection")
		resp, err := rt.RoundTrip(out)
		var miss *mismatchError
		switch {
		case errors.As(err, &miss):
			http.Error(w, miss.Error(), http.StatusNotImplemented)
			return
		case err != nil:
			http.Error(w, "tape: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			// net/http sets the length of what is written.
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
}

// readBody reads req's body and puts it back, so that it can be read again.
func readBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}

// matches is the recorder's matcher.
func (tp *Tape) matches(req *http.Request, rec cassette.Request) bool {
	body, err := readBody(req)
	if err != nil {
		return false
	}
	return len(tp.differences(req, body, rec)) == 0
}

// differences lists how req (with body) differs from the recorded request
// rec, in words; none means it matches.
func (tp *Tape) differences(req *http.Request, body []byte, rec cassette.Request) []string {
	var diffs []string
	if !strings.EqualFold(req.Method, rec.Method) {
		diffs = append(diffs, fmt.Sprintf("method: tape has %s, request has %s", rec.Method, req.Method))
	}
	if got, want := tp.scrubURL(req.URL.String()), tp.scrubURL(rec.URL); !sameURL(got, want) {
		diffs = append(diffs, fmt.Sprintf("url: tape has %s, request has %s", want, got))
	}
	recHeaders := canonical(rec.Headers)
	for _, name := range append([]string{"Content-Type"}, tp.match...) {
		got := tp.scrubHeader(name, req.Header.Values(name))
		want := tp.scrubHeader(name, recHeaders.Values(name))
		if !reflect.DeepEqual(got, want) {
			diffs = append(diffs, fmt.Sprintf("header %s: tape has %q, request has %q", name, want, got))
		}
	}
	gotBody, wantBody := tp.scrubBody(req.Header.Get("Content-Type"), body), tp.scrubBody(recHeaders.Get("Content-Type"), []byte(rec.Body))
	if !sameBody(req.Header.Get("Content-Type"), gotBody, wantBody) {
		want, okW := decodeJSON(bytes.TrimSpace(wantBody))
		got, okG := decodeJSON(bytes.TrimSpace(gotBody))
		if okW && okG {
			// Point at the first difference: in a batch of a thousand
			// events the start of the body says nothing.
			diffs = append(diffs, "body "+jsonDiff("$", want, got))
		} else {
			diffs = append(diffs, fmt.Sprintf("body: tape has %s\n\t  request has %s", snippet(wantBody), snippet(gotBody)))
		}
	}
	return diffs
}

// mismatch explains a request no interaction matched: the request, how
// the closest interaction differs, and how to record.
func (tp *Tape) mismatch(req *http.Request, body []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "tape %s has no interaction for %s %s\n\tbody: %s",
		tp.file, req.Method, tp.scrubURL(req.URL.String()), snippet(tp.scrubBody(req.Header.Get("Content-Type"), body)))
	var best []string
	bestID := -1
	for _, in := range tp.interactions {
		d := tp.differences(req, body, in.Request)
		if bestID < 0 || len(d) < len(best) {
			best, bestID = d, in.ID
		}
	}
	switch {
	case bestID < 0:
		b.WriteString("\n\tthe tape has no interactions")
	case len(best) == 0:
		fmt.Fprintf(&b, "\n\tinteraction %d matches but was already used: each interaction answers once", bestID)
	default:
		fmt.Fprintf(&b, "\n\tclosest is interaction %d:", bestID)
		for _, d := range best {
			b.WriteString("\n\t- " + d)
		}
	}
	fmt.Fprintf(&b, "\n\tif the request is right, %s", tp.fixHint())
	return b.String()
}

// canonical returns h with canonical keys: hand-written tapes may spell
// them in any case.
func canonical(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		out[ck] = append(out[ck], v...)
	}
	return out
}

// sameURL compares URLs with their query parameters in any order.
func sameURL(a, b string) bool {
	if a == b {
		return true
	}
	ua, errA := url.Parse(a)
	ub, errB := url.Parse(b)
	if errA != nil || errB != nil {
		return false
	}
	qa, qb := ua.Query(), ub.Query()
	ua.RawQuery, ub.RawQuery = "", ""
	return ua.String() == ub.String() && reflect.DeepEqual(qa, qb)
}

// sameBody compares bodies as JSON when both are JSON, as forms when the
// request is a form, else byte for byte (trailing white space aside, which
// a YAML block adds).
func sameBody(contentType string, a, b []byte) bool {
	a, b = bytes.TrimSpace(a), bytes.TrimSpace(b)
	if bytes.Equal(a, b) {
		return true
	}
	if va, ok := decodeJSON(a); ok {
		if vb, ok := decodeJSON(b); ok {
			return reflect.DeepEqual(va, vb)
		}
		return false
	}
	if strings.HasPrefix(contentType, "application/x-www-form-urlencoded") {
		fa, errA := url.ParseQuery(string(a))
		fb, errB := url.ParseQuery(string(b))
		return errA == nil && errB == nil && reflect.DeepEqual(fa, fb)
	}
	return false
}

// decodeJSON decodes b keeping numbers as written.
func decodeJSON(b []byte) (any, bool) {
	if len(b) == 0 || (b[0] != '{' && b[0] != '[') {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil || d.More() {
		return nil, false
	}
	return v, true
}

// jsonDiff describes the first difference between the JSON values want
// (the tape's) and got (the request's), with its path.
func jsonDiff(path string, want, got any) string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		keys := make([]string, 0, len(w)+len(g))
		for k := range w {
			keys = append(keys, k)
		}
		for k := range g {
			if _, dup := w[k]; !dup {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			wv, inW := w[k]
			gv, inG := g[k]
			switch {
			case !inG:
				return fmt.Sprintf("at %s.%s: tape has %s, request has none", path, k, compact(wv))
			case !inW:
				return fmt.Sprintf("at %s.%s: tape has none, request has %s", path, k, compact(gv))
			case !reflect.DeepEqual(wv, gv):
				return jsonDiff(path+"."+k, wv, gv)
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok {
			break
		}
		for i := 0; i < len(w) && i < len(g); i++ {
			if !reflect.DeepEqual(w[i], g[i]) {
				return jsonDiff(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])
			}
		}
		if len(w) != len(g) {
			return fmt.Sprintf("at %s: tape has %d elements, request has %d", path, len(w), len(g))
		}
	}
	return fmt.Sprintf("at %s: tape has %s, request has %s", path, compact(want), compact(got))
}

// compact renders a JSON value on one line, shortened.
func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return snippet(b)
}

// snippet shortens a body for a failure message.
func snippet(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(empty)"
	}
	const max = 300
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}

// replace applies the secret and var replacements to s.
func (tp *Tape) replace(s string) string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, secret := range tp.secrets {
		s = strings.ReplaceAll(s, secret, Redacted)
		// Credentials also travel percent-encoded in URLs and forms.
		if esc := url.QueryEscape(secret); esc != secret {
			s = strings.ReplaceAll(s, esc, Redacted)
		}
	}
	for live, stand := range tp.vars {
		s = strings.ReplaceAll(s, live, stand)
	}
	return s
}

// scrubURL replaces secrets and scrubbed query fields in a URL.
func (tp *Tape) scrubURL(raw string) string {
	raw = tp.replace(raw)
	u, err := url.Parse(raw)
	if err != nil || u.RawQuery == "" {
		return raw
	}
	if q := u.Query(); tp.redactFields(q) {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// redactFields replaces the values of the scrubbed fields in v with
// Redacted, and reports whether v had any.
func (tp *Tape) redactFields(v url.Values) bool {
	changed := false
	for k := range v {
		if tp.scrubFields[k] {
			for i := range v[k] {
				v[k][i] = Redacted
			}
			changed = true
		}
	}
	return changed
}

// scrubHeader returns the values of header name as a tape keeps them.
func (tp *Tape) scrubHeader(name string, values []string) []string {
	if len(values) == 0 {
		return nil
	}
	out := make([]string, len(values))
	for i, v := range values {
		switch {
		case name == "Authorization":
			// The scheme says how the integration authenticates, which
			// the tape checks; the credentials never reach it.
			if scheme, _, ok := strings.Cut(v, " "); ok {
				out[i] = scheme + " " + Redacted
			} else {
				out[i] = Redacted
			}
		case tp.scrubHeaders[name]:
			out[i] = Redacted
		default:
			out[i] = tp.replace(v)
		}
	}
	return out
}

// scrubBody replaces secrets and scrubbed fields in a JSON or form body.
func (tp *Tape) scrubBody(contentType string, body []byte) []byte {
	if len(body) == 0 {
		return body
	}
	body = []byte(tp.replace(string(body)))
	if v, ok := decodeJSON(bytes.TrimSpace(body)); ok {
		if tp.scrubJSON(v) {
			if b, err := json.Marshal(v); err == nil {
				return b
			}
		}
		return body
	}
	if strings.HasPrefix(contentType, "application/x-www-form-urlencoded") {
		if f, err := url.ParseQuery(string(body)); err == nil && tp.redactFields(f) {
			return []byte(f.Encode())
		}
	}
	return body
}

// scrubJSON replaces the values of scrubbed fields in v, at any depth, and
// reports whether it changed anything.
func (tp *Tape) scrubJSON(v any) bool {
	changed := false
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if tp.scrubFields[k] {
				if s, isString := e.(string); !isString || s != Redacted {
					x[k] = Redacted
					changed = true
				}
				continue
			}
			changed = tp.scrubJSON(e) || changed
		}
	case []any:
		for _, e := range x {
			changed = tp.scrubJSON(e) || changed
		}
	}
	return changed
}

// beforeSave scrubs an interaction before a recorded tape is written. It
// runs only when saving, never on what the live API answers to the test:
// an OAuth token in a response must still work for the next request.
func (tp *Tape) beforeSave(in *cassette.Interaction) error {
	req := &in.Request
	req.URL = tp.scrubURL(req.URL)
	ct := http.Header(req.Headers).Get("Content-Type")
	req.Body = pretty(tp.scrubBody(ct, []byte(req.Body)))
	// A tape keeps the request headers it checks and no others.
	kept := http.Header{}
	for _, name := range append([]string{"Content-Type"}, tp.match...) {
		if v := tp.scrubHeader(name, req.Headers.Values(name)); v != nil {
			kept[name] = v
		}
	}
	req.Headers = kept
	req.Form = nil

	resp := &in.Response
	ct = resp.Headers.Get("Content-Type")
	resp.Body = pretty(tp.scrubBody(ct, []byte(resp.Body)))
	for _, name := range droppedHeaders {
		resp.Headers.Del(name)
	}
	for name, v := range resp.Headers {
		resp.Headers[name] = tp.scrubHeader(name, v)
	}
	return nil
}

// pretty indents a JSON body so that the tape reads well; the matcher
// compares JSON by value, so the layout does not matter.
func pretty(b []byte) string {
	if _, ok := decodeJSON(bytes.TrimSpace(b)); !ok {
		return string(b)
	}
	var out bytes.Buffer
	if json.Indent(&out, bytes.TrimSpace(b), "", "  ") != nil {
		return string(b)
	}
	out.WriteByte('\n')
	return out.String()
}

// beforeReplay completes a hand-written response: canonical header keys,
// a status line, and a Content-Length that matches the body (go-vcr would
// otherwise replay length 0, and a client trusting it would read nothing).
func (tp *Tape) beforeReplay(in *cassette.Interaction) error {
	resp := &in.Response
	resp.Headers = canonical(resp.Headers)
	if resp.Status == "" {
		resp.Status = strconv.Itoa(resp.Code) + " " + http.StatusText(resp.Code)
	}
	if resp.Proto == "" {
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	}
	resp.ContentLength = int64(len(resp.Body))
	return nil
}

// atStop fails the test for each interaction no request used.
func (tp *Tape) atStop(in *cassette.Interaction) error {
	if !tp.recording && !in.WasReplayed() && !tp.failedBefore {
		tp.t.Errorf("tape %s: interaction %d (%s %s) was never requested: fanout no longer sends it; fix the integration, or the tape",
			tp.file, in.ID, in.Request.Method, in.Request.URL)
	}
	return nil
}

// tapeFile is the layout tapes are saved in: go-vcr's cassette, without the
// fields that only add noise to a review (protocol, lengths, durations).
type tapeFile struct {
	Version      int               `yaml:"version"`
	Interactions []tapeInteraction `yaml:"interactions"`
}

type tapeInteraction struct {
	ID      int `yaml:"id"`
	Request struct {
		Method  string      `yaml:"method"`
		URL     string      `yaml:"url"`
		Headers http.Header `yaml:"headers,omitempty"`
		Body    string      `yaml:"body,omitempty"`
	} `yaml:"request"`
	Response struct {
		Code    int         `yaml:"code"`
		Headers http.Header `yaml:"headers,omitempty"`
		Body    string      `yaml:"body,omitempty"`
	} `yaml:"response"`
}

// marshal writes a cassette as a tapeFile.
func (tp *Tape) marshal(v any) ([]byte, error) {
	c, ok := v.(*cassette.Cassette)
	if !ok {
		return nil, fmt.Errorf("tape: cannot save a %T", v)
	}
	f := tapeFile{Version: c.Version}
	for _, in := range c.Interactions {
		var ti tapeInteraction
		ti.ID = in.ID
		ti.Request.Method = in.Request.Method
		ti.Request.URL = in.Request.URL
		ti.Request.Headers = in.Request.Headers
		ti.Request.Body = in.Request.Body
		ti.Response.Code = in.Response.Code
		ti.Response.Headers = sortedHeader(in.Response.Headers)
		ti.Response.Body = in.Response.Body
		f.Interactions = append(f.Interactions, ti)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// sortedHeader drops empty header entries; yaml writes map keys sorted.
func sortedHeader(h http.Header) http.Header {
	keys := make([]string, 0, len(h))
	for k, v := range h {
		if len(v) > 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	sort.Strings(keys)
	out := make(http.Header, len(keys))
	for _, k := range keys {
		out[k] = h[k]
	}
	return out
}
