package ga4

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock, a minute after the events' timestamp.
var now = time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination whose API
// secret comes from the tape (GA4_API_SECRET and GA4_MEASUREMENT_ID when
// recording).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name)
	settings := map[string]any{
		"measurement_id": tp.Var("GA4_MEASUREMENT_ID", "G-ABC123DEF4"),
		"api_secret":     tp.Secret("GA4_API_SECRET"),
	}
	maps.Copy(settings, extra)
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		New:         newAt,
		Tape:        tp,
		Settings:    settings,
		Now:         now,
	})
}

// newAt builds the destination on the tests' clock.
func newAt(cfg destinations.Config) (destinations.Destination, error) {
	return newDestination(cfg, func() time.Time { return now })
}

// want is the expected outcome of one event.
type want = destinationstest.Want

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func signedUp(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","anonymousId":"555.1234","userId":"u1","messageId":"m-1",`+ts+`,"properties":{"plan":"pro"}}`)
}

var delivered = want{Outcome: destinations.Delivered, Status: 204}

func TestTapes(t *testing.T) {
	one := func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} }
	cases := []destinationstest.TapeCase{
		{
			// A track and a page call of one user share a request; another
			// user's event goes in its own.
			Tape: "track",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					destinationstest.Event(t, `{"type":"track","event":"Order Completed","anonymousId":"555.1234","userId":"u1","messageId":"m-1",`+ts+`,
						"properties":{"Order ID":"o-17","revenue":19.99,"currency":"usd","coupon":null,"gift":true,
						"items":[{"item_id":"sku-1","price":19.99}]}}`),
					destinationstest.Event(t, `{"type":"track","event":"Signed Up","anonymousId":"777.4321","messageId":"m-2",`+ts+`}`),
					destinationstest.Event(t, `{"type":"page","name":"Pricing","anonymousId":"555.1234","userId":"u1","messageId":"m-3",`+ts+`,
						"properties":{"path":"/pricing","url":"https://shop.example/pricing"},
						"context":{"page":{"referrer":"https://search.example/"}}}`),
				}
			},
			Want: []want{delivered, delivered, delivered},
		},
		{
			// The debug endpoint finds the second event invalid: it is
			// rejected and the first alone goes to /mp/collect.
			Tape:     "validate",
			Settings: map[string]any{"validate": true},
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					signedUp(t),
					destinationstest.Event(t, `{"type":"track","event":"Logged In","anonymousId":"555.1234","userId":"u1","messageId":"m-2",`+ts+`,"properties":{"method":"sso"}}`),
				}
			},
			Want: []want{delivered, {Outcome: destinations.Rejected, Reason: "GA4 validation: Event at index: [1] has invalid param [method] (VALUE_INVALID at events.params)"}},
		},
		{
			// A message about the request as a whole rejects every event
			// of it, and nothing is sent to /mp/collect.
			Tape:     "validate_request",
			Settings: map[string]any{"validate": true},
			Events:   one,
			Want:     []want{{Outcome: destinations.Rejected, Reason: "client_id (VALUE_INVALID at client_id)"}},
		},
		{
			Tape:     "validate_unavailable",
			Settings: map[string]any{"validate": true},
			Events:   one,
			Want:     []want{{Outcome: destinations.Retryable, Reason: "GA4 validation server: HTTP 503 Service Unavailable"}},
		},
		{
			Tape:     "eu",
			Settings: map[string]any{"api_url": "https://region1.google-analytics.com"},
			Events:   one,
			Want:     []want{delivered},
		},
		{
			Tape:   "forbidden",
			Events: one,
			Want:   []want{{Outcome: destinations.Rejected, Status: 403, Reason: "check api_secret"}},
		},
		{
			Tape:   "rate_limited",
			Events: one,
			Want:   []want{{Outcome: destinations.Retryable, Status: 429, Reason: "HTTP 429 Too Many Requests", RetryAfter: 60 * time.Second}},
		},
		{
			Tape:   "server_error",
			Events: one,
			Want:   []want{{Outcome: destinations.Retryable, Status: 500, Reason: "HTTP 500 Internal Server Error"}},
		},
		{
			Tape:   "bad_request",
			Events: one,
			Want:   []want{{Outcome: destinations.Rejected, Status: 400, Reason: "HTTP 400 Bad Request"}},
		},
	}
	destinationstest.RunTapes(t, setup, cases)
}

// TestWithoutRequest covers what GA4 would answer 2xx to and drop: such
// events are rejected in Transform, with the rule they break.
func TestWithoutRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, New: newAt, Settings: map[string]any{"measurement_id": "G-ABC123DEF4", "api_secret": "s"}})
	long := strings.Repeat("x", 101)
	many := make([]string, 26)
	for i := range many {
		many[i] = `"p` + string(rune('a'+i)) + `":1`
	}
	cases := []struct {
		name, payload string
		outcome       destinations.Outcome
		reason        string
	}{
		{"no anonymousId", `{"type":"track","event":"x","userId":"u"}`, destinations.Rejected, "no anonymousId, which GA4 needs as client_id"},
		{"no event name", `{"type":"track","anonymousId":"a"}`, destinations.Rejected, "no event name"},
		{"digit first", `{"type":"track","event":"3D Viewed","anonymousId":"a"}`, destinations.Rejected, `"3d_viewed", which does not start with a letter`},
		{"no letters", `{"type":"track","event":"!!!","anonymousId":"a"}`, destinations.Rejected, "has no letters or digits"},
		{"name too long", `{"type":"track","event":"` + strings.Repeat("a", 41) + `","anonymousId":"a"}`, destinations.Rejected, "longer than the 40 characters"},
		{"reserved name", `{"type":"track","event":"Session Start","anonymousId":"a"}`, destinations.Rejected, `"session_start" (from "Session Start") is reserved`},
		{"reserved prefix", `{"type":"track","event":"Google Thing","anonymousId":"a"}`, destinations.Rejected, `whose prefix "google_" GA4 reserves`},
		{"reserved param prefix", `{"type":"track","event":"x","anonymousId":"a","properties":{"ga_session":1}}`, destinations.Rejected, `property name "ga_session"`},
		{"long value", `{"type":"track","event":"x","anonymousId":"a","properties":{"note":"` + long + `"}}`, destinations.Rejected, "101 characters long"},
		{"nested value", `{"type":"track","event":"x","anonymousId":"a","properties":{"cart":{"id":1}}}`, destinations.Rejected, `property "cart" is an object`},
		{"duplicate param", `{"type":"track","event":"x","anonymousId":"a","properties":{"Plan Name":"a","plan_name":"b"}}`, destinations.Rejected, `both become parameter "plan_name"`},
		{"too many params", `{"type":"track","event":"x","anonymousId":"a","properties":{` + strings.Join(many, ",") + `}}`, destinations.Rejected, "26 parameters; GA4 takes at most 25"},
		{"too old", `{"type":"track","event":"x","anonymousId":"a","timestamp":"2025-12-29T00:00:00Z"}`, destinations.Rejected, "backdated more than 72 hours"},
		{"identify", `{"type":"identify","userId":"u","anonymousId":"a"}`, destinations.Unsupported, "not identify"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			payload := c.payload
			if !strings.Contains(payload, "timestamp") {
				payload = strings.TrimSuffix(payload, "}") + "," + ts + "}"
			}
			e := event.Event{MessageID: "m", Type: event.Track, Payload: json.RawMessage(payload)}
			if strings.Contains(payload, `"identify"`) {
				e.Type = event.Identify
			}
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, e), c.outcome, c.reason)
		})
	}
}

// TestBatchLimits checks that Transform cuts one user's events at 25 a
// request.
func TestBatchLimits(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, New: newAt, Settings: map[string]any{"measurement_id": "G-ABC123DEF4", "api_secret": "s"}})
	p := destinationstest.Transform(t, d, slices.Repeat([]event.Event{signedUp(t)}, 2*MaxEventsPerRequest+1)...)
	destinationstest.CheckBatches(t, p, MaxRequestBytes, MaxEventsPerRequest, MaxEventsPerRequest, 1)
}

func TestSnakeCase(t *testing.T) {
	cases := map[string]string{
		"Order Completed":     "order_completed",
		"product-viewed!":     "product_viewed",
		"  Signed   Up  ":     "signed_up",
		"already_snake":       "already_snake",
		"Café Visited":        "café_visited",
		"__private":           "private",
		"Checkout Step 2 / 3": "checkout_step_2_3",
	}
	for in, want := range cases {
		if got := SnakeCase(in); got != want {
			t.Errorf("SnakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSettings(t *testing.T) {
	cases := []struct {
		name     string
		settings map[string]any
		err      string
	}{
		{"secret missing", map[string]any{"measurement_id": "G-ABC"}, "api_secret: required"},
		{"universal analytics id", map[string]any{"measurement_id": "UA-1234-1", "api_secret": "s"}, "measurement_id: expected a web stream's Measurement ID"},
		{"bad api_url", map[string]any{"measurement_id": "G-ABC", "api_secret": "s", "api_url": "ftp://x"}, "api_url: expected an http or https URL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
		})
	}
}

// TestTooLarge checks that a 413 splits a request of several events and
// rejects an event alone.
func TestTooLarge(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, New: newAt, Settings: map[string]any{"measurement_id": "G-ABC123DEF4", "api_secret": "s"}})
	resp := &destinations.Response{StatusCode: 413, ReceivedAt: now}
	got := d.Classify(&destinations.Request{Events: []int{0, 1}}, resp)
	for i, r := range got {
		if r.Outcome != destinations.Retryable || !r.Split || !strings.Contains(r.Reason, "sent again in halves") {
			t.Errorf("event %d of two: %+v", i, r)
		}
	}
	if r := d.Classify(&destinations.Request{Events: []int{0}}, resp)[0]; r.Outcome != destinations.Rejected || r.Split {
		t.Errorf("event alone: %+v", r)
	}
}
