package customerio

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock.
var now = time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination whose
// credentials come from the tape (CUSTOMERIO_SITE_ID and
// CUSTOMERIO_API_KEY when recording).
func setup(t *testing.T, name string) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
	settings := map[string]any{
		"site_id": tp.Var("CUSTOMERIO_SITE_ID", "site-1"),
		"api_key": tp.Secret("CUSTOMERIO_API_KEY"),
	}
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		Tape:        tp,
		Settings:    settings,
		Now:         now,
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func signedUp(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"u1","messageId":"m-1",`+ts+`,"properties":{"plan":"pro"}}`)
}

// TestTapes runs each event type's request and each documented answer.
func TestTapes(t *testing.T) {
	delivered := want{Outcome: destinations.Delivered, Status: 200}
	cases := []destinationstest.TapeCase{
		{
			Tape: "identify",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{destinationstest.Event(t, `{"type":"identify","userId":"u 1","anonymousId":"a1","messageId":"m-id-1",`+ts+`,
					"traits":{"email":"ada@example.com","first_name":"Ada","created_at":"2024-05-06T07:08:09Z","plan":"pro"}}`)}
			},
			Want: []want{delivered},
		},
		{
			// u1's three events in one batch; the anonymous one alone
			// through v1.
			Tape: "track",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u1","messageId":"01JGMZ3Q5X9T8Y7W6V5T4S3R2Q",`+ts+`,
						"properties":{"revenue":19.99,"currency":"USD"}}`),
					destinationstest.Event(t, `{"type":"page","name":"Pricing","userId":"u1","messageId":"m-page-1",`+ts+`,
						"properties":{"url":"https://shop.example/pricing"}}`),
					destinationstest.Event(t, `{"type":"screen","name":"Home","userId":"u1","messageId":"m-screen-1",`+ts+`}`),
					destinationstest.Event(t, `{"type":"track","event":"Viewed Product","anonymousId":"a2","messageId":"m-anon-1",`+ts+`,
						"properties":{"sku":"X1"}}`),
				}
			},
			Want: []want{delivered, delivered, delivered, delivered},
		},
		{
			// A 207: the operation it names is rejected, the others
			// were accepted.
			Tape: "partial_failure",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					destinationstest.Event(t, `{"type":"identify","userId":"u1","messageId":"m-id-1",`+ts+`,"traits":{"email":"ada@example.com"}}`),
					destinationstest.Event(t, `{"type":"identify","userId":"u2","messageId":"m-id-2",`+ts+`,"traits":{"`+strings.Repeat("x", 151)+`":"y"}}`),
					signedUp(t),
				}
			},
			Want: []want{
				{Outcome: destinations.Delivered, Status: 207},
				{Outcome: destinations.Rejected, Status: 207,
					Reason: "Customer.io refused the event: invalid: attribute name cannot be longer than 150 bytes (field attributes)"},
				{Outcome: destinations.Delivered, Status: 207},
			},
		},
		{
			// A 400 to the whole batch, naming no operation: halves.
			Tape: "malformed",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					signedUp(t),
					destinationstest.Event(t, `{"type":"identify","userId":"u2","messageId":"m-id-2",`+ts+`,"traits":{"email":"grace@example.com"}}`),
				}
			},
			Want: []want{
				{Outcome: destinations.Retryable, Status: 400, Split: true, Reason: "Customer.io refused the batch: invalid: request body could not be parsed (field batch) (the errors name no operation"},
				{Outcome: destinations.Retryable, Status: 400, Split: true, Reason: "sent again in halves"},
			},
		},
		{
			// v1's 400, to an anonymous event.
			Tape: "invalid",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{destinationstest.Event(t, `{"type":"track","event":"Viewed `+strings.Repeat("n", 95)+`","anonymousId":"a2","messageId":"m-anon-2",`+ts+`}`)}
			},
			Want: []want{{Outcome: destinations.Rejected, Status: 400, Reason: "Customer.io refused the event: event name cannot be longer than 100 bytes"}},
		},
		{
			Tape:   "unauthorized",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} },
			Want:   []want{{Outcome: destinations.Rejected, Status: 401, Reason: "check site_id and api_key"}},
		},
		{
			Tape:   "rate_limited",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} },
			Want:   []want{{Outcome: destinations.Retryable, Status: 429, Reason: "HTTP 429 Too Many Requests"}},
		},
		{
			Tape:   "server_error",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} },
			Want:   []want{{Outcome: destinations.Retryable, Status: 503, Reason: "HTTP 503 Service Unavailable", RetryAfter: 30 * time.Second}},
		},
		{
			Tape:   "redirect",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} },
			Want:   []want{{Outcome: destinations.Rejected, Status: 307, Reason: "region: eu"}},
		},
	}
	destinationstest.RunTapes(t, func(t *testing.T, name string, _ map[string]any) *destinationstest.Bundle { return setup(t, name) }, cases)
}

// newDestination builds a destination without a tape, for tests of
// Transform and Classify alone.
func newDestination(t *testing.T) *destination {
	t.Helper()
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"site_id": "s", "api_key": "k"}})
	return d.(*destination)
}

// TestBatches checks how Transform cuts batches: by count, by bytes, and
// an operation too large for v2 alone through v1.
func TestBatches(t *testing.T) {
	d := newDestination(t)
	track := func(i int, props string) event.Event {
		return destinationstest.Event(t, fmt.Sprintf(`{"type":"track","event":"Viewed","userId":"u%d","messageId":"m-%d",%s,"properties":%s}`, i, i, ts, props))
	}
	cases := []struct {
		name   string
		events int
		props  string
		want   []int // events per request
		url    string
	}{
		{"by count", 2*MaxBatchEvents + 50, `{"plan":"pro"}`, []int{MaxBatchEvents, MaxBatchEvents, 50}, batchPath},
		// 20 KB each: 24 fit in 500,000 bytes.
		{"by bytes", 50, `{"blob":"` + strings.Repeat("b", 20_000) + `"}`, []int{24, 24, 2}, batchPath},
		{"too large for v2", 2, `{"blob":"` + strings.Repeat("b", MaxOperationBytes) + `"}`, []int{1, 1}, "/api/v1/customers/u"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var evs []event.Event
			for i := range c.events {
				evs = append(evs, track(i, c.props))
			}
			p := destinationstest.Transform(t, d, evs...)
			if len(p.Results) != 0 {
				t.Fatalf("results without request: %v", p.Results)
			}
			var got []int
			seen := map[int]bool{}
			for _, r := range p.Requests {
				got = append(got, len(r.Events))
				if !strings.Contains(r.URL, c.url) {
					t.Errorf("request to %s, want %s", r.URL, c.url)
				}
				if r.URL == d.base+batchPath && len(r.Body) > MaxBatchBytes {
					t.Errorf("batch of %d bytes, more than %d", len(r.Body), MaxBatchBytes)
				}
				for _, i := range r.Events {
					if seen[i] {
						t.Errorf("event %d in two requests", i)
					}
					seen[i] = true
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) || len(seen) != c.events {
				t.Errorf("requests of %v events (%d in all), want %v", got, len(seen), c.want)
			}
		})
	}
}

// TestClassify covers answers no tape needs.
func TestClassify(t *testing.T) {
	d := newDestination(t)
	batch := &destinations.Request{URL: d.base + batchPath, Events: []int{0, 1, 2}}
	cases := []struct {
		name string
		code int
		body string
		want []destinations.Outcome
		// reason is a substring of every result's reason but the
		// delivered ones'.
		reason string
		// split says which results ask for halves.
		split []bool
	}{
		{"empty 200", 200, ``, []destinations.Outcome{destinations.Delivered, destinations.Delivered, destinations.Delivered}, "", nil},
		{"200 not JSON", 200, `<html>`, []destinations.Outcome{destinations.Retryable, destinations.Retryable, destinations.Retryable}, "not its JSON answer: <html>", nil},
		{"207 naming none", 207, `{}`, []destinations.Outcome{destinations.Retryable, destinations.Retryable, destinations.Retryable}, "without saying which", []bool{true, true, true}},
		{"error without batch_index", 207, `{"errors":[{"batch_index":0,"reason":"invalid","message":"bad"},{"reason":"internal","message":"try again"}]}`,
			[]destinations.Outcome{destinations.Rejected, destinations.Retryable, destinations.Retryable}, "", []bool{false, true, true}},
		{"batch_index out of range", 207, `{"errors":[{"batch_index":3,"message":"bad"}]}`,
			[]destinations.Outcome{destinations.Retryable, destinations.Retryable, destinations.Retryable}, "name no operation (bad)", []bool{true, true, true}},
		{"400 naming an operation", 400, `{"errors":[{"batch_index":2,"field":"name","message":"cannot be blank"}]}`,
			[]destinations.Outcome{destinations.Retryable, destinations.Retryable, destinations.Rejected}, "", nil},
		{"400 naming none", 400, `{"errors":[{"reason":"invalid","message":"bad request"}]}`,
			[]destinations.Outcome{destinations.Retryable, destinations.Retryable, destinations.Retryable}, "sent again in halves", []bool{true, true, true}},
		{"413", 413, `Request Entity Too Large`,
			[]destinations.Outcome{destinations.Retryable, destinations.Retryable, destinations.Retryable}, "500 KB request limit", []bool{true, true, true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := d.Classify(batch, &destinations.Response{StatusCode: c.code, Body: []byte(c.body), ReceivedAt: now})
			if len(got) != len(c.want) {
				t.Fatalf("%d results", len(got))
			}
			for i, g := range got {
				split := c.split != nil && c.split[i]
				if g.Outcome != c.want[i] || g.StatusCode != c.code || g.Split != split || (g.Outcome != destinations.Delivered && !strings.Contains(g.Reason, c.reason)) {
					t.Errorf("event %d: got %+v, want %v with %q", i, g, c.want[i], c.reason)
				}
			}
		})
	}
	// The named operation's reason, and the others', in a 400.
	got := d.Classify(batch, &destinations.Response{StatusCode: 400, ReceivedAt: now,
		Body: []byte(`{"errors":[{"batch_index":2,"field":"name","message":"cannot be blank"}]}`)})
	if got[2].Reason != "Customer.io refused the event: cannot be blank (field name)" || !strings.Contains(got[0].Reason, "goes again without it") {
		t.Errorf("400 reasons: %q, %q", got[2].Reason, got[0].Reason)
	}
	// An operation alone is rejected where a batch would be split.
	one := &destinations.Request{URL: d.base + batchPath, Events: []int{0}}
	for _, c := range []struct {
		code         int
		body, reason string
	}{
		{400, `{"errors":[{"reason":"invalid","message":"bad request"}]}`, "bad request"},
		{207, `{"errors":[{"reason":"invalid","message":"bad request"}]}`, "bad request"},
		{207, `{}`, "without saying which"},
	} {
		got := d.Classify(one, &destinations.Response{StatusCode: c.code, Body: []byte(c.body), ReceivedAt: now})
		if got[0].Outcome != destinations.Rejected || got[0].Split || !strings.Contains(got[0].Reason, c.reason) {
			t.Errorf("%d %s to one operation: %+v, want rejected with %q", c.code, c.body, got[0], c.reason)
		}
	}
}

// TestWithoutRequest covers events decided in Transform.
func TestWithoutRequest(t *testing.T) {
	d := newDestination(t)
	cases := []struct {
		name, typ, payload string
		outcome            destinations.Outcome
		reason             string
	}{
		{"no user", event.Track, `{"type":"track","event":"x","messageId":"m",` + ts + `}`, destinations.Rejected, "neither userId nor anonymousId"},
		{"no event name", event.Track, `{"type":"track","userId":"u","messageId":"m",` + ts + `}`, destinations.Rejected, "no event name"},
		{"page without URL or name", event.Page, `{"type":"page","userId":"u","messageId":"m",` + ts + `}`, destinations.Rejected, "neither a URL"},
		{"anonymous identify", event.Identify, `{"type":"identify","anonymousId":"a","messageId":"m","traits":{}}`, destinations.Rejected, "no userId"},
		{"not JSON", event.Track, `{"type":`, destinations.Rejected, "not valid JSON"},
		{"group", event.Group, `{"type":"group","userId":"u","groupId":"g","messageId":"m"}`, destinations.Unsupported, "not group"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := event.Event{MessageID: "m", Type: c.typ, Payload: json.RawMessage(c.payload)}
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, e), c.outcome, c.reason)
		})
	}
}

func TestEventID(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC)
	// A ULID messageId is kept.
	if got := EventID("01jgmz3q5x9t8y7w6v5t4s3r2q", at); got != "01JGMZ3Q5X9T8Y7W6V5T4S3R2Q" {
		t.Errorf("ULID messageId: got %s", got)
	}
	a, b := EventID("m-1", at), EventID("m-1", at)
	if a != b || !isULID(a) {
		t.Errorf("EventID(m-1) = %s then %s: want the same ULID", a, b)
	}
	// The time part is the event's time, so ids sort by time as ULIDs do.
	if a[:10] != "01KDYAK3SE" {
		t.Errorf("time part %s, want 01KDYAK3SE (1767323045678 ms)", a[:10])
	}
	if EventID("m-2", at) == a {
		t.Error("two messageIds gave the same id")
	}
	if got := EventID("m-1", time.Time{}); !isULID(got) || got[:10] != "0000000000" {
		t.Errorf("no timestamp: %s", got)
	}
}

func TestSettings(t *testing.T) {
	cases := []struct {
		name     string
		settings map[string]any
		err      string
	}{
		{"key missing", map[string]any{"site_id": "s"}, "api_key: required"},
		{"bad region", map[string]any{"site_id": "s", "api_key": "k", "region": "mars"}, "region: expected us or eu"},
		{"bad api_url", map[string]any{"site_id": "s", "api_key": "k", "api_url": "track.customer.io"}, "api_url: expected an http or https URL"},
		{"site id with colon", map[string]any{"site_id": "s:k", "api_key": "k"}, "site_id: expected the Site ID alone"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
		})
	}
}
