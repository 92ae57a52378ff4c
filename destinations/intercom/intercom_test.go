package intercom

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock: Unix 1767323100.
var now = time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination whose access
// token comes from the tape (INTERCOM_ACCESS_TOKEN when recording).
func setup(t *testing.T, name string) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization", "Intercom-Version"))
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		New: func(cfg destinations.Config) (destinations.Destination, error) {
			return newDestination(cfg, func() time.Time { return now })
		},
		Tape: tp,
		Settings: map[string]any{
			"access_token":      tp.Secret("INTERCOM_ACCESS_TOKEN"),
			"custom_attributes": map[string]any{"plan": "plan_tier"},
		},
		Now: now,
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func identify(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"identify","userId":"u1","messageId":"m-id-1",`+ts+`,
		"traits":{"email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","phone":"+44 20 7946 0000",
		"avatar":"https://ada.dev/ada.png","created_at":"2024-05-06T07:08:09Z","plan":"pro","color":"green"}}`)
}

func ordered(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u1","messageId":"m-1",`+ts+`,
		"properties":{"revenue":19.99,"currency":"usd","order_id":"o-17","coupon":"SPRING","gift":true,
		"items":[{"sku":"s-1"}],"p1":1,"p2":2,"p3":3,"p4":4,"p5":5,"p6":6}}`)
}

func signedUp(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"u1","messageId":"m-2",`+ts+`,"properties":{"plan":"pro"}}`)
}

func TestTapes(t *testing.T) {
	cases := []struct {
		tape  string
		event func(t *testing.T) event.Event
		want  want
	}{
		// No contact found: created with role user.
		{"identify_create", identify, want{Outcome: destinations.Delivered, Status: 200}},
		// The search finds the contact by external_id: updated.
		{"identify_update", identify, want{Outcome: destinations.Delivered, Status: 200}},
		// Price first, then flat properties in name order, cut at 10 keys.
		{"track", ordered, want{Outcome: destinations.Delivered, Status: 202}},
		{"user_not_found", signedUp, want{Outcome: destinations.Rejected, Status: 404,
			Reason: "Intercom has no user with this event's user_id or email (not_found User Not Found); send an identify call"}},
		{"unauthorized", signedUp, want{Outcome: destinations.Rejected, Status: 401,
			Reason: "Intercom refused the access token (unauthorized Access Token Invalid): check access_token"}},
		// Auth failure on the search, before any write.
		{"search_unauthorized", identify, want{Outcome: destinations.Rejected, Status: 401,
			Reason: "Intercom contact search: Intercom refused the access token"}},
		{"conflict", identify, want{Outcome: destinations.Retryable, Status: 409,
			Reason: "conflict A contact matching those details already exists with id=5da6f18e3d7cf967e4582d05); the retry searches again"}},
		{"validation", identify, want{Outcome: destinations.Rejected, Status: 422,
			Reason: "Intercom refused the data (parameter_invalid Custom attribute 'plan_tier' does not exist)"}},
		// X-RateLimit-Reset is 10 s after the clock.
		{"rate_limited", signedUp, want{Outcome: destinations.Retryable, Status: 429,
			Reason: "rate_limit_exceeded", RetryAfter: 10 * time.Second}},
		{"search_rate_limited", identify, want{Outcome: destinations.Retryable, Status: 429,
			Reason: "Intercom contact search: Intercom rate limit", RetryAfter: 10 * time.Second}},
		{"server_error", signedUp, want{Outcome: destinations.Retryable, Status: 500, Reason: "HTTP 500 Internal Server Error"}},
	}
	for _, c := range cases {
		t.Run(c.tape, func(t *testing.T) {
			b := setup(t, c.tape)
			destinationstest.Check(t, b.Send(c.event(t)), c.want)
		})
	}
}

func TestWithoutRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"access_token": "tok"}})
	cases := []struct {
		name, typ, payload string
		outcome            destinations.Outcome
		reason             string
	}{
		{"anonymous identify", event.Identify, `{"type":"identify","anonymousId":"a","traits":{"name":"X"}}`, destinations.Rejected, "neither userId nor an email"},
		{"anonymous track", event.Track, `{"type":"track","event":"x","anonymousId":"a",` + ts + `}`, destinations.Rejected, "neither userId nor an email"},
		{"no event name", event.Track, `{"type":"track","userId":"u",` + ts + `}`, destinations.Rejected, "no event name"},
		{"no timestamp", event.Track, `{"type":"track","event":"x","userId":"u"}`, destinations.Rejected, "no readable timestamp"},
		{"page", event.Page, `{"type":"page","userId":"u"}`, destinations.Unsupported, "not page"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := event.Event{MessageID: "m", Type: c.typ, Payload: json.RawMessage(c.payload)}
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, e), c.outcome, c.reason)
		})
	}
}

func TestSettings(t *testing.T) {
	cases := []struct {
		name     string
		settings map[string]any
		err      string
	}{
		{"token missing", map[string]any{}, "access_token: required"},
		{"bad api_url", map[string]any{"access_token": "t", "api_url": "api.intercom.io"}, "api_url: expected an http or https URL"},
		{"bad version", map[string]any{"access_token": "t", "api_version": "latest"}, "api_version: expected a version such as 2.11"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
		})
	}
}

// TestRateLimitWait checks the wait after a 429: Retry-After first, then
// X-RateLimit-Reset, then the 10-second window.
func TestRateLimitWait(t *testing.T) {
	reset := strconv.FormatInt(now.Add(7*time.Second).Unix(), 10)
	past := strconv.FormatInt(now.Add(-time.Minute).Unix(), 10)
	cases := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"reset", http.Header{"X-Ratelimit-Reset": {reset}}, 7 * time.Second},
		{"retry-after first", http.Header{"Retry-After": {"3"}, "X-Ratelimit-Reset": {reset}}, 3 * time.Second},
		{"reset past", http.Header{"X-Ratelimit-Reset": {past}}, RateLimitWindow},
		{"no header", http.Header{}, RateLimitWindow},
	}
	for _, c := range cases {
		r := classify(true, &destinations.Response{StatusCode: 429, Header: c.header, ReceivedAt: now,
			Body: []byte(`{"type":"error.list","errors":[{"code":"rate_limit_exceeded","message":"Exceeded rate limit of 167 in 10_seconds"}]}`)})
		if r.Outcome != destinations.Retryable || r.RetryAfter != c.want {
			t.Errorf("%s: %v after %v, want retryable after %v", c.name, r.Outcome, r.RetryAfter, c.want)
		}
	}
}
