// Package compat_test checks that the official Segment client libraries work
// against fanout with no change but their host: it runs the fanout binary,
// sends every call type with analytics-go and with @segment/analytics-node,
// and checks what the webhook destination receives.
package compat_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/fanout/fanout/test/fanouttest"
)

// bin is the fanout binary TestMain builds.
var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

const writeKey = "wk_compat"

// setup starts a receiver and a fanout delivering to it.
func setup(t *testing.T) (*fanouttest.Server, *fanouttest.Receiver) {
	t.Helper()
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{KeepBodies: true})
	srv := fanouttest.Start(t, bin, fanouttest.Config{WriteKey: writeKey, WebhookURL: recv.URL})
	return srv, recv
}

// scenario is one message of every call type, with userId, properties or
// traits, a context and a client timestamp an hour in the past (so that the
// clock-skew correction has something to keep). Ids start with prefix.
func scenario(prefix string) []analytics.Message {
	ts := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	user := prefix + "-user"
	ctx := func(kind string) *analytics.Context {
		return &analytics.Context{
			IP:        net.ParseIP("203.0.113.7"),
			Locale:    "fr-FR",
			Timezone:  "Europe/Paris",
			UserAgent: "Mozilla/5.0 (compat test)",
			Page:      analytics.PageInfo{Path: "/checkout", URL: "https://shop.example/checkout", Title: "Caisse"},
			Campaign:  analytics.CampaignInfo{Name: "spring", Source: "newsletter"},
			Extra: map[string]any{
				"compat": map[string]any{"kind": kind, "n": 3, "ok": true},
			},
		}
	}
	return []analytics.Message{
		analytics.Identify{
			MessageId: prefix + "-identify", UserId: user, Timestamp: ts, Context: ctx("identify"),
			Traits: analytics.Traits{
				"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro",
				"logins": 42, "address": map[string]any{"city": "Zürich", "zip": "8001"},
			},
		},
		analytics.Track{
			MessageId: prefix + "-track", UserId: user, Timestamp: ts, Context: ctx("track"),
			Event: "Order Completed",
			Properties: analytics.Properties{
				"order_id": "o-1", "revenue": 19.99, "currency": "EUR", "coupon": nil,
				"products": []any{map[string]any{"sku": "s-1", "quantity": 2}},
				"note":     "naïve ☃ \"quoted\" <tag>",
			},
		},
		analytics.Page{
			MessageId: prefix + "-page", UserId: user, Timestamp: ts, Context: ctx("page"),
			Name:       "Checkout",
			Properties: analytics.Properties{"path": "/checkout", "title": "Caisse", "referrer": ""},
		},
		analytics.Screen{
			MessageId: prefix + "-screen", UserId: user, Timestamp: ts, Context: ctx("screen"),
			Name:       "Cart",
			Properties: analytics.Properties{"items": 3, "empty": false},
		},
		analytics.Group{
			MessageId: prefix + "-group", UserId: user, Timestamp: ts, Context: ctx("group"),
			GroupId: prefix + "-group-1",
			Traits:  analytics.Traits{"name": "Initech", "employees": 120, "industry": "software"},
		},
		analytics.Alias{
			MessageId: prefix + "-alias", UserId: user, Timestamp: ts, Context: ctx("alias"),
			PreviousId: prefix + "-anonymous",
		},
	}
}

// expectation is a sent message as JSON, with its type, which the checks
// compare what arrived against.
type expectation struct {
	typ  string
	json map[string]any
}

func expect(t *testing.T, msgs []analytics.Message) []expectation {
	t.Helper()
	out := make([]expectation, len(msgs))
	for i, m := range msgs {
		var typ string
		switch m.(type) {
		case analytics.Identify:
			typ = "identify"
		case analytics.Track:
			typ = "track"
		case analytics.Page:
			typ = "page"
		case analytics.Screen:
			typ = "screen"
		case analytics.Group:
			typ = "group"
		case analytics.Alias:
			typ = "alias"
		default:
			t.Fatalf("scenario holds a %T", m)
		}
		out[i] = expectation{typ: typ, json: asJSON(t, m)}
	}
	return out
}

func asJSON(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// callback records what analytics-go says became of each message.
type callback struct {
	mu       sync.Mutex
	ok       []string
	failures map[string]error
}

func (c *callback) Success(m analytics.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ok = append(c.ok, messageID(m))
}

func (c *callback) Failure(m analytics.Message, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failures == nil {
		c.failures = make(map[string]error)
	}
	c.failures[messageID(m)] = err
}

func messageID(m analytics.Message) string {
	var v struct {
		MessageID string `json:"messageId"`
	}
	b, _ := json.Marshal(m)
	json.Unmarshal(b, &v)
	return v.MessageID
}

// sendGo sends msgs with analytics-go, pointed at fanout, and closes the
// client, which flushes them.
func sendGo(t *testing.T, endpoint, key string, msgs []analytics.Message) *callback {
	t.Helper()
	cb := &callback{}
	client, err := analytics.NewWithConfig(key, analytics.Config{
		Endpoint:   endpoint,
		Interval:   time.Hour, // Close flushes
		BatchSize:  len(msgs),
		Callback:   cb,
		RetryAfter: func(int) time.Duration { return 10 * time.Millisecond },
		Logger:     analytics.StdLogger(log.New(io.Discard, "", 0)),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := client.Enqueue(m); err != nil {
			t.Fatalf("Enqueue %T: %v", m, err)
		}
	}
	if err := client.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return cb
}

func TestAnalyticsGo(t *testing.T) {
	srv, recv := setup(t)
	start := time.Now()
	msgs := scenario("go")
	cb := sendGo(t, srv.TrackingURL, writeKey, msgs)
	if len(cb.failures) > 0 || len(cb.ok) != len(msgs) {
		t.Fatalf("analytics-go reports %d successes of %d, failures: %v", len(cb.ok), len(msgs), cb.failures)
	}
	checkDelivered(t, srv, recv, expect(t, msgs), "analytics-go", start)
}

func TestAnalyticsNode(t *testing.T) {
	dir, err := filepath.Abs("node")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@segment", "analytics-node")); err != nil {
		t.Fatalf("@segment/analytics-node is not installed (%v): run `npm ci --prefix test/compat/node` from the repository root", err)
	}
	// Stat what node reads, so that go test reruns this test when it changes.
	for _, f := range []string{"send.mjs", "package-lock.json", filepath.Join("node_modules", ".package-lock.json")} {
		os.Stat(filepath.Join(dir, f))
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed to run the analytics-node test: %v", err)
	}

	srv, recv := setup(t)
	start := time.Now()
	msgs := scenario("node")
	exp := expect(t, msgs)
	type call struct {
		Type   string         `json:"type"`
		Params map[string]any `json:"params"`
	}
	calls := make([]call, len(exp))
	for i, e := range exp {
		// analytics-go's JSON of a message is the params object that
		// analytics-node takes for the same call.
		calls[i] = call{Type: e.typ, Params: e.json}
	}
	events, err := json.Marshal(calls)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "send.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"FANOUT_HOST="+srv.TrackingURL,
		"WRITE_KEY="+writeKey,
		"EVENTS="+string(events),
	)
	done := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			if cmd.Process != nil {
				cmd.Process.Kill()
			}
		}
	})
	out, err := cmd.CombinedOutput()
	close(done)
	if err != nil {
		t.Fatalf("node send.mjs: %v\n%s", err, out)
	}
	t.Logf("node send.mjs: %s", strings.TrimSpace(string(out)))
	checkDelivered(t, srv, recv, exp, "@segment/analytics-node", start)
}

// TestWrongWriteKey checks that fanout answers 401 to an unknown write key,
// as analytics-go sees it, and delivers nothing.
func TestWrongWriteKey(t *testing.T) {
	srv, recv := setup(t)
	msgs := scenario("wrongkey")[:2]
	cb := sendGo(t, srv.TrackingURL, "wk_not_configured", msgs)
	if len(cb.ok) != 0 {
		t.Errorf("analytics-go reports success for %v with an unknown write key", cb.ok)
	}
	for _, m := range msgs {
		id := messageID(m)
		err, ok := cb.failures[id]
		if !ok {
			t.Errorf("%s: analytics-go reports no failure", id)
			continue
		}
		if !strings.Contains(err.Error(), "401") {
			t.Errorf("%s: analytics-go reports %q, want a 401", id, err)
		}
	}
	// Stop waits for the server's in-flight work: nothing can arrive after.
	if err := srv.Stop(); err != nil {
		t.Errorf("fanout serve did not exit cleanly on SIGTERM: %v", err)
	}
	if n := recv.Total(); n != 0 {
		t.Errorf("the destination received %d events sent with an unknown write key", n)
	}
}

// checkDelivered waits until every expected event has arrived, stops the
// server (so that no late duplicate can arrive unseen), and checks that each
// arrived exactly once, intact.
func checkDelivered(t *testing.T, srv *fanouttest.Server, recv *fanouttest.Receiver, exp []expectation, library string, start time.Time) {
	t.Helper()
	ids := make([]string, len(exp))
	for i, e := range exp {
		ids[i] = e.json["messageId"].(string)
	}
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return len(recv.Missing(ids)) == 0 }) {
		t.Errorf("after 30s, the destination has not received %v", recv.Missing(ids))
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("fanout serve did not exit cleanly on SIGTERM: %v", err)
	}
	end := time.Now()
	if bad := recv.Bad(); len(bad) > 0 {
		t.Errorf("the destination received %d requests that are not one event: %q", len(bad), bad)
	}

	byID := make(map[string][]fanouttest.Delivery)
	for _, d := range recv.Deliveries() {
		byID[d.MessageID] = append(byID[d.MessageID], d)
	}
	if len(byID) != len(exp) {
		t.Errorf("the destination received %d distinct messageIds, want %d", len(byID), len(exp))
	}
	for _, e := range exp {
		id := e.json["messageId"].(string)
		got := byID[id]
		if len(got) != 1 {
			t.Errorf("%s: received %d times, want exactly once", id, len(got))
			if len(got) == 0 {
				continue
			}
		}
		d := got[0]
		if d.WebhookID != id {
			t.Errorf("%s: webhook-id header is %q, want the messageId", id, d.WebhookID)
		}
		var ev map[string]any
		if err := json.Unmarshal(d.Body, &ev); err != nil {
			t.Errorf("%s: body is not a JSON object: %v\n%s", id, err, d.Body)
			continue
		}
		for _, problem := range compare(e, ev, library, start, end) {
			t.Errorf("%s: %s\nreceived: %s", id, problem, d.Body)
		}
	}
}

// skewTolerance is how far the delivered timestamp may be from the one the
// client set: the correction uses receivedAt - sentAt, which here is the
// time a request takes on loopback.
const skewTolerance = time.Second

// compare returns what is wrong with the delivered event ev, given what was
// sent: every member sent arrives unchanged, but for timestamp (corrected
// for clock skew only) and context (the library's batch context merged in).
func compare(e expectation, ev map[string]any, library string, start, end time.Time) []string {
	var problems []string
	if ev["type"] != e.typ {
		problems = append(problems, fmt.Sprintf("type is %v, want %q", ev["type"], e.typ))
	}
	for k, want := range e.json {
		switch k {
		case "timestamp", "context":
			continue
		}
		if got := ev[k]; !reflect.DeepEqual(got, want) {
			problems = append(problems, fmt.Sprintf("%s is %s, want %s", k, compact(got), compact(want)))
		}
	}

	sentTS, _ := time.Parse(time.RFC3339Nano, e.json["timestamp"].(string))
	if ts, err := parseTime(ev, "timestamp"); err != nil {
		problems = append(problems, err.Error())
	} else if d := ts.Sub(sentTS); d > skewTolerance || d < -skewTolerance {
		problems = append(problems, fmt.Sprintf("timestamp is %s, %v from the %s the client set", ts.Format(time.RFC3339Nano), d, sentTS.Format(time.RFC3339Nano)))
	}
	if orig, ok := ev["originalTimestamp"]; ok {
		if ots, err := parseTime(ev, "originalTimestamp"); err != nil || !ots.Equal(sentTS) {
			problems = append(problems, fmt.Sprintf("originalTimestamp is %v, want the client's %s", orig, sentTS.Format(time.RFC3339Nano)))
		}
	}
	if ra, err := parseTime(ev, "receivedAt"); err != nil {
		problems = append(problems, err.Error())
	} else if ra.Before(start.Add(-time.Second)) || ra.After(end.Add(time.Second)) {
		problems = append(problems, fmt.Sprintf("receivedAt is %s, outside the test's run from %s to %s", ra.Format(time.RFC3339Nano), start.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano)))
	}

	ctx, _ := ev["context"].(map[string]any)
	if ctx == nil {
		problems = append(problems, fmt.Sprintf("context is %s, want an object", compact(ev["context"])))
		return problems
	}
	problems = append(problems, contains(ctx, e.json["context"].(map[string]any), "context")...)
	if lib, _ := ctx["library"].(map[string]any); lib == nil || lib["name"] != library {
		problems = append(problems, fmt.Sprintf("context.library is %s, want the name %q", compact(ctx["library"]), library))
	}
	return problems
}

// contains reports each member of want missing from got or different in it,
// recursively through objects.
func contains(got, want map[string]any, path string) []string {
	var problems []string
	for k, w := range want {
		g, ok := got[k]
		p := path + "." + k
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s is missing, want %s", p, compact(w)))
		case isObject(w) && isObject(g):
			problems = append(problems, contains(g.(map[string]any), w.(map[string]any), p)...)
		case !reflect.DeepEqual(g, w):
			problems = append(problems, fmt.Sprintf("%s is %s, want %s", p, compact(g), compact(w)))
		}
	}
	return problems
}

func isObject(v any) bool { _, ok := v.(map[string]any); return ok }

func parseTime(ev map[string]any, key string) (time.Time, error) {
	s, ok := ev[key].(string)
	if !ok {
		return time.Time{}, fmt.Errorf("%s is %s, want an RFC 3339 string", key, compact(ev[key]))
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, errors.New(key + ": " + err.Error())
	}
	return ts, nil
}

func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
