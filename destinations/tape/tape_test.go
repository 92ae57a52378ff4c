package tape

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// spy stands in for the test a Tape belongs to, capturing its failures so
// that a test can check them instead of failing.
type spy struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (s *spy) Errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors = append(s.errors, fmt.Sprintf(format, args...))
}

func (s *spy) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.errors) > 0
}

func (s *spy) failures() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.errors, "\n")
}

// do sends a request through c and returns the status, Retry-After and body.
func do(t *testing.T, c *http.Client, method, url, contentType, auth, body string) (int, string, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(b), nil
}

func TestReplay(t *testing.T) {
	tp := New(t, "replay", MatchHeaders("Authorization"))
	if tp.Recording() {
		t.Skip("recording")
	}
	c := tp.Client()
	// Query order, key order, spacing and the bearer token all differ
	// from the tape; the request is the same.
	code, retryAfter, body, err := do(t, c, "POST", "https://api.example.com/v1/events?a=1&b=2",
		"application/json", "Bearer "+tp.Secret("EXAMPLE_TOKEN"),
		`{"properties":{"seats":3,"plan":"pro"},"event":"Signed Up"}`)
	if err != nil {
		t.Fatal(err)
	}
	if code != 429 || retryAfter != "30" || strings.TrimSpace(body) != `{"error": "slow down"}` {
		t.Errorf("got %d, Retry-After %q, body %q", code, retryAfter, body)
	}
	// A form compares field by field; the secret is REDACTED on both sides.
	code, _, body, err = do(t, c, "POST", "https://api.example.com/oauth/token",
		"application/x-www-form-urlencoded", "", "client_id=abc&grant_type=client_credentials&client_secret=s3cr3t")
	if err != nil {
		t.Fatal(err)
	}
	if code != 200 || !strings.Contains(body, "access_token") {
		t.Errorf("got %d %q", code, body)
	}
}

func TestMismatch(t *testing.T) {
	cases := []struct {
		name     string
		url      string
		auth     string
		body     string
		wantDiff string
	}{
		{"body", "https://api.example.com/v1/events?a=1&b=2", "Bearer x",
			`{"event":"Signed Up","properties":{"plan":"free","seats":3}}`, `body at $.properties.plan: tape has "pro", request has "free"`},
		{"number as string", "https://api.example.com/v1/events?a=1&b=2", "Bearer x",
			`{"event":"Signed Up","properties":{"plan":"pro","seats":"3"}}`, `body at $.properties.seats: tape has 3, request has "3"`},
		{"missing key", "https://api.example.com/v1/events?a=1&b=2", "Bearer x",
			`{"event":"Signed Up","properties":{"plan":"pro"}}`, `body at $.properties.seats: tape has 3, request has none`},
		{"query", "https://api.example.com/v1/events?a=1", "Bearer x",
			`{"event":"Signed Up","properties":{"plan":"pro","seats":3}}`, "url: tape has"},
		{"auth scheme", "https://api.example.com/v1/events?a=1&b=2", "Basic eDo=",
			`{"event":"Signed Up","properties":{"plan":"pro","seats":3}}`, `header Authorization: tape has ["Bearer REDACTED"], request has ["Basic REDACTED"]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &spy{TB: t}
			tp := New(s, "replay", MatchHeaders("Authorization"))
			_, _, _, err := do(t, tp.Client(), "POST", c.url, "application/json", c.auth, c.body)
			if err == nil {
				t.Fatal("a request the tape does not hold got an answer")
			}
			msg := s.failures()
			for _, want := range []string{
				"tape testdata/replay.yaml has no interaction for POST " + c.url,
				"body: " + c.body,
				"closest is interaction 0",
				c.wantDiff,
				"FANOUT_RECORD=1 go test ./destinations/tape -run '^TestMismatch$/^" + strings.ReplaceAll(c.name, " ", "_") + "$'",
			} {
				if !strings.Contains(msg, want) {
					t.Errorf("failure message lacks %q:\n%s", want, msg)
				}
			}
		})
	}
}

func TestUsedOnce(t *testing.T) {
	s := &spy{TB: t}
	tp := New(s, "replay")
	form := "grant_type=client_credentials&client_secret=x&client_id=abc"
	for range 2 {
		_, _, _, _ = do(t, tp.Client(), "POST", "https://api.example.com/oauth/token", "application/x-www-form-urlencoded", "", form)
	}
	if msg := s.failures(); !strings.Contains(msg, "interaction 1 matches but was already used") {
		t.Errorf("second identical request: %s", msg)
	}
}

func TestUnused(t *testing.T) {
	s := &spy{TB: t}
	t.Run("inner", func(inner *testing.T) {
		s.TB = inner
		New(s, "replay")
	})
	msg := s.failures()
	for _, want := range []string{"interaction 0 (POST https://api.example.com/v1/events?b=2&a=1) was never requested",
		"interaction 1 (POST https://api.example.com/oauth/token) was never requested"} {
		if !strings.Contains(msg, want) {
			t.Errorf("failure lacks %q:\n%s", want, msg)
		}
	}
}

func TestMissingTape(t *testing.T) {
	// Fatalf stops the goroutine that calls it, so run New in one of its own.
	s := &fatalSpy{spy: spy{TB: t}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		New(s, "no-such-tape")
	}()
	<-done
	if msg := s.failures(); !strings.Contains(msg, "FANOUT_RECORD=1 go test ./destinations/tape -run '^TestMissingTape$'") {
		t.Errorf("failure: %s", msg)
	}
}

// fatalSpy captures Fatalf and Skipf and stops the calling goroutine, as
// testing does.
type fatalSpy struct{ spy }

func (s *fatalSpy) Fatalf(format string, args ...any) {
	s.Errorf(format, args...)
	runtime.Goexit()
}

func (s *fatalSpy) Skipf(format string, args ...any) {
	s.Errorf("skip: "+format, args...)
	runtime.Goexit()
}

func TestRecord(t *testing.T) {
	var (
		mu  sync.Mutex
		got []string
	)
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Header.Get("Authorization")+" "+r.URL.RawQuery+" "+string(b))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "7")
		// A token the client must receive intact while recording.
		fmt.Fprint(w, `{"access_token":"live-token-123","ok":true}`)
	}))
	defer live.Close()
	t.Chdir(t.TempDir())
	t.Setenv(RecordEnv, "1")
	t.Setenv("EXAMPLE_KEY", "k3y-of-the-live-account")
	t.Setenv("EXAMPLE_HOST", live.URL)

	t.Run("record", func(t *testing.T) {
		tp := New(t, "recorded", MatchHeaders("Authorization"), ScrubFields("token"))
		if !tp.Recording() {
			t.Fatal("not recording with FANOUT_RECORD=1")
		}
		key := tp.Secret("EXAMPLE_KEY")
		host := tp.Var("EXAMPLE_HOST", "https://api.example.com")
		_, _, body, err := do(t, tp.Client(), "POST", host+"/v1/track?api_key="+key+"&x=1", "application/json",
			"Bearer "+key, `{"key":"`+key+`","token":"abc","event":"Signed Up"}`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(body, "live-token-123") {
			t.Errorf("while recording the client got %q: the live answer must reach it unscrubbed", body)
		}
	})
	mu.Lock()
	if len(got) != 1 || !strings.Contains(got[0], "Bearer k3y-of-the-live-account") {
		t.Errorf("live API got %q", got)
	}
	mu.Unlock()

	saved, err := os.ReadFile(filepath.Join("testdata", "recorded.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tape := string(saved)
	for _, leak := range []string{"k3y-of-the-live-account", "live-token-123", "abc", live.URL, "Date:"} {
		if strings.Contains(tape, leak) {
			t.Errorf("saved tape holds %q:\n%s", leak, tape)
		}
	}
	for _, want := range []string{
		"url: https://api.example.com/v1/track?api_key=REDACTED&x=1",
		"Bearer REDACTED",
		`"key": "REDACTED"`,
		`"token": "REDACTED"`,
		`"access_token": "REDACTED"`,
		"Retry-After:",
	} {
		if !strings.Contains(tape, want) {
			t.Errorf("saved tape lacks %q:\n%s", want, tape)
		}
	}

	// The saved tape replays the same request, as a test without
	// credentials sends it.
	t.Setenv(RecordEnv, "")
	t.Run("replay", func(t *testing.T) {
		tp := New(t, "recorded", MatchHeaders("Authorization"), ScrubFields("token"))
		key := tp.Secret("EXAMPLE_KEY")
		host := tp.Var("EXAMPLE_HOST", "https://api.example.com")
		code, retryAfter, _, err := do(t, tp.Client(), "POST", host+"/v1/track?x=1&api_key="+key, "application/json",
			"Bearer "+key, `{"event":"Signed Up","key":"`+key+`","token":"xyz"}`)
		if err != nil || code != 200 || retryAfter != "7" {
			t.Errorf("replay: %d, Retry-After %q, %v", code, retryAfter, err)
		}
	})
}

func TestHandler(t *testing.T) {
	const events = `{"event":"Signed Up","properties":{"plan":"pro","seats":3}}`
	type request struct{ path, contentType, auth, body string }
	track := request{"/v1/events?a=1&b=2", "application/json", "Bearer x", events}
	cases := []struct {
		name string
		// requests are sent in order; the last one's answer is checked.
		requests   []request
		wantCode   int
		wantHeader http.Header
		wantBody   string
		// wantFailure is in the test's failures; empty: the test passes.
		wantFailure string
	}{
		{
			name: "answers from the tape", requests: []request{track},
			wantCode: 429, wantHeader: http.Header{"Retry-After": {"30"}, "Content-Type": {"application/json"}},
			wantBody: `{"error": "slow down"}`,
		},
		{
			name:     "form",
			requests: []request{{"/oauth/token", "application/x-www-form-urlencoded", "", "client_id=abc&grant_type=client_credentials&client_secret=s3cr3t"}},
			wantCode: 200, wantBody: `{"access_token": "REDACTED", "expires_in": 3600}`,
		},
		{
			// The path is joined to the base URL before matching, so a
			// request to another path is not the tape's.
			name:     "no interaction",
			requests: []request{{"/v2/events?a=1&b=2", "application/json", "Bearer x", events}},
			wantCode: 501, wantBody: "tape testdata/replay.yaml has no interaction for POST https://api.example.com/v2/events?a=1&b=2",
			wantFailure: "url: tape has https://api.example.com/v1/events?b=2&a=1, request has https://api.example.com/v2/events?a=1&b=2",
		},
		{
			name:     "used once",
			requests: []request{track, track},
			wantCode: 501, wantBody: "interaction 0 matches but was already used",
			wantFailure: "interaction 0 matches but was already used",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &spy{TB: t}
			tp := New(s, "replay", MatchHeaders("Authorization"))
			api := httptest.NewServer(tp.Handler("https://api.example.com/"))
			defer api.Close()
			var (
				code   int
				header http.Header
				body   string
			)
			for _, r := range c.requests {
				req, err := http.NewRequest("POST", api.URL+r.path, strings.NewReader(r.body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", r.contentType)
				if r.auth != "" {
					req.Header.Set("Authorization", r.auth)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				code, header, body = resp.StatusCode, resp.Header, string(b)
			}
			if code != c.wantCode || !strings.Contains(body, c.wantBody) {
				t.Errorf("answered %d %q, want %d with %q", code, body, c.wantCode, c.wantBody)
			}
			for k := range c.wantHeader {
				if got := header.Get(k); got != c.wantHeader.Get(k) {
					t.Errorf("header %s = %q, want %q", k, got, c.wantHeader.Get(k))
				}
			}
			// Checked before the tape's own end-of-test check, which adds
			// the interactions these cases leave unused.
			msg := s.failures()
			switch {
			case c.wantFailure == "" && msg != "":
				t.Errorf("the test failed: %s", msg)
			case c.wantFailure != "" && !strings.Contains(msg, c.wantFailure):
				t.Errorf("failure lacks %q:\n%s", c.wantFailure, msg)
			case c.wantFailure != "" && !strings.Contains(msg, "FANOUT_RECORD=1 go test ./destinations/tape"):
				t.Errorf("failure does not say how to record:\n%s", msg)
			}
		})
	}
}

func TestHandlerBase(t *testing.T) {
	for _, base := range []string{"", "api.example.com", "https://api.example.com?x=1"} {
		t.Run(base, func(t *testing.T) {
			s := &fatalSpy{spy: spy{TB: t}}
			tp := New(s, "replay")
			done := make(chan struct{})
			go func() {
				defer close(done)
				tp.Handler(base)
			}()
			<-done
			if msg := s.failures(); !strings.Contains(msg, "Handler needs the API's base URL") {
				t.Errorf("base %q: %s", base, msg)
			}
		})
	}
}

func TestNotRecorded(t *testing.T) {
	const reason = "the 429 is scripted"
	cases := []struct {
		name   string
		record string // the value of FANOUT_RECORD
		// want is in the test's failures, and lack is not.
		want, lack string
	}{
		{"replay", "", "if the request is right, edit the tape by hand: it is not recorded (" + reason + ")", "FANOUT_RECORD=1 go test"},
		{"record", "1", "skip: tape testdata/replay.yaml is written by hand, not recorded: " + reason, "no interaction"},
	}
	before, err := os.ReadFile(filepath.Join("testdata", "replay.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(RecordEnv, c.record)
			s := &fatalSpy{spy: spy{TB: t}}
			done := make(chan struct{})
			go func() {
				defer close(done)
				tp := New(s, "replay", NotRecorded(reason))
				do(t, tp.Client(), "POST", "https://api.example.com/nowhere", "application/json", "", "{}")
			}()
			<-done
			msg := s.failures()
			if !strings.Contains(msg, c.want) || strings.Contains(msg, c.lack) {
				t.Errorf("failures want %q, not %q:\n%s", c.want, c.lack, msg)
			}
		})
	}
	// Recording never overwrote the tape.
	if after, err := os.ReadFile(filepath.Join("testdata", "replay.yaml")); err != nil || !bytes.Equal(after, before) {
		t.Errorf("testdata/replay.yaml changed (%v)", err)
	}
}
