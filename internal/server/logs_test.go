package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/stats"
)

// Secrets of the log test, each configured once. They hold only letters
// and digits, so no log encoding (JSON or text quoting) can hide them from
// a plain search.
const (
	logWriteKey   = "wkLogsWebSecret7731"
	logSigning    = "whsecLogsSigning5521"
	logAPIKey     = "apiKeyLogsHeader9981"
	logBearer     = "bearerLogsToken4471"
	logQueryKey   = "queryKeyLogs3361"
	logAdminToken = "adminTokenLogs2251"
)

var logSecrets = []string{logWriteKey, logSigning, logAPIKey, logBearer, logQueryKey, logAdminToken}

// echo is a destination that fails and quotes back, in its error body,
// every credential the request carried: /reject answers 400, /down 503.
func echo(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	status := http.StatusServiceUnavailable
	if r.URL.Path == "/reject" {
		status = http.StatusBadRequest
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":"refused","api_key":%q,"authorization":%q,"query_key":%q,"signature":%q}`,
		r.Header.Get("X-Api-Key"), r.Header.Get("Authorization"), r.URL.Query().Get("api_key"), r.Header.Get("webhook-signature"))
}

// logFormat is one of the formats `fanout serve` can log in, with how to
// read a line's message and attributes back.
type logFormat struct {
	name    string
	handler func(io.Writer) slog.Handler
	// attrs returns a line's attributes, "msg" included, as strings.
	attrs func(t *testing.T, line string) map[string]string
}

var logFormats = []logFormat{
	{
		name: "json",
		handler: func(w io.Writer) slog.Handler {
			return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
		},
		attrs: func(t *testing.T, line string) map[string]string {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("log line is not JSON: %v\n%s", err, line)
			}
			out := map[string]string{}
			for k, v := range m {
				out[k] = fmt.Sprint(v)
			}
			return out
		},
	},
	{
		name: "text",
		handler: func(w io.Writer) slog.Handler {
			return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
		},
		attrs: func(t *testing.T, line string) map[string]string {
			return textAttrs(line)
		},
	},
}

// textAttrs reads key=value and key="quoted value" pairs of a slog text line.
func textAttrs(line string) map[string]string {
	out := map[string]string{}
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		k, rest, ok := strings.Cut(line, "=")
		if !ok {
			break
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			// Find the closing quote, skipping escaped ones.
			i := 1
			for i < len(rest) && rest[i] != '"' {
				if rest[i] == '\\' {
					i++
				}
				i++
			}
			v, rest = rest[1:min(i, len(rest))], rest[min(i+1, len(rest)):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
		}
		out[k] = v
		line = rest
	}
	return out
}

// TestLogsHoldNoSecrets runs a server whose destinations carry secrets in
// every place a setting can (the URL's query, the signing secret, an API
// key header, a bearer token) and answer with error bodies quoting them,
// and drives it through the paths that log: rejected events, an unknown
// write key, an archive that cannot be written, a replay. No secret may
// appear in any line, and the lines about a queue name its source and
// destination.
func TestLogsHoldNoSecrets(t *testing.T) {
	for _, format := range logFormats {
		t.Run(format.name, func(t *testing.T) {
			logs := &logtest.Buffer{}
			sink := httptest.NewServer(http.HandlerFunc(echo))
			t.Cleanup(sink.Close)
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			dest := func(name, path, extra string) string {
				return fmt.Sprintf(`
  - name: %s
    type: webhook
    sources: [web]
    settings:
      url: "%s%s?api_key=%s"
      secret: %s
      headers: {X-Api-Key: %s, Authorization: "Bearer %s"}
    delivery: {%s}`, name, sink.URL, path, logQueryKey, logSigning, logAPIKey, logBearer, extra)
			}
			p := configFile(t, dir, fmt.Sprintf(`admin_token: %s
sources:
  - {name: web, write_key: %s}
destinations:%s%s%s
`, logAdminToken, logWriteKey,
				dest("hook", "/reject", "concurrency: 4"),
				dest("vault", "/down", "retry_window: 1ms"),
				dest("spare", "/down", "retry_window: 1ms")))
			// Archiving vault's jobs fails, and the engine logs the error.
			blockArchive(t, data, "web", "vault")

			clk := clock.NewFake(time.Now().UTC())
			r := startWith(t, p, clk, slog.New(format.handler(logs)))
			if code := r.send(t, logWriteKey, batch(append(tracks("log", 0, 3), nonsense)...)); code != 200 {
				t.Fatalf("batch answered %d", code)
			}
			if code := r.send(t, "wk_not_configured", batch(tracks("log", 9, 1)...)); code != 401 {
				t.Fatalf("unknown key answered %d", code)
			}
			pair := func(d string) stats.Pair { return stats.Pair{Source: "web", Destination: d} }
			var ov stats.Overview
			waitFor(t, "the first attempts", func() string {
				r.get(t, "/api/v1/overview?range=1h", &ov)
				want := map[stats.Pair]stats.Counts{
					pair("hook"):  {Received: 3, Failed: 3},
					pair("vault"): {Received: 3, PendingRetry: 3},
					pair("spare"): {Received: 3, PendingRetry: 3},
				}
				if matches(ov, want) {
					return ""
				}
				return fmt.Sprintf("%+v", ov.Pairs)
			})
			// Past the first backoff: the retries fail again, out of retry
			// window, and are archived; vault's archive cannot be written.
			clk.Advance(2500 * time.Millisecond)
			waitFor(t, "spare's archive and vault's archive error", func() string {
				r.get(t, "/api/v1/overview?range=1h&destination=spare", &ov)
				if ov.Archived != 3 {
					return fmt.Sprintf("spare archived %d, want 3", ov.Archived)
				}
				if !strings.Contains(logs.String(), "archive jobs") {
					return "no archive error logged"
				}
				return ""
			})
			req, _ := http.NewRequest("POST", "http://"+r.srv.AdminAddr()+"/api/v1/replay?source=web&destination=spare&range=1h", nil)
			req.Header.Set("Authorization", "Bearer "+logAdminToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), `"replayed": 3`) {
				t.Fatalf("replay: %s %s", resp.Status, body)
			}
			r.stop() // every line is written

			out := logs.String()
			for _, s := range logSecrets {
				if strings.Contains(out, s) {
					t.Errorf("the secret %q is in the log:\n%s", s, grepLines(out, s))
				}
			}
			// What must have been logged, with the attributes that let an
			// operator tell which queue it is about.
			wants := []struct {
				msg   string
				attrs map[string]string
			}{
				{"archive jobs", map[string]string{"source": "web", "destination": "vault"}},
				{"replayed archived events", map[string]string{"source": "web", "destination": "spare", "events": "3"}},
				{"batch partly rejected", map[string]string{"source": "web"}},
				{"request rejected", map[string]string{"source": "", "status": "401"}},
			}
			lines := map[string][]map[string]string{}
			sc := bufio.NewScanner(strings.NewReader(out))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				a := format.attrs(t, sc.Text())
				lines[a["msg"]] = append(lines[a["msg"]], a)
			}
			for _, w := range wants {
				found := false
				for _, a := range lines[w.msg] {
					ok := true
					for k, v := range w.attrs {
						if got, has := a[k]; !has || got != v {
							ok = false
						}
					}
					found = found || ok
				}
				if !found {
					t.Errorf("no %q line with %v; those logged: %v", w.msg, w.attrs, lines[w.msg])
				}
			}
			if t.Failed() {
				t.Logf("the log:\n%s", out)
			}
		})
	}
}

// grepLines returns the lines of s holding sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
