package intercom

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock: Unix 1767323100.
var now = time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)

// bundle is what an Intercom test needs.
type bundle struct {
	tape   *tape.Tape
	dest   *destination
	sender *destinations.Sender
}

// setup opens testdata/<name>.yaml and builds a destination whose access
// token comes from the tape (INTERCOM_ACCESS_TOKEN when recording).
func setup(t *testing.T, name string) *bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization", "Intercom-Version"))
	valid, err := Integration.Settings.Validate(map[string]any{
		"access_token":      tp.Secret("INTERCOM_ACCESS_TOKEN"),
		"custom_attributes": map[string]any{"plan": "plan_tier"},
	})
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
	d, err := newDestination(destinations.Config{Name: "ic", Settings: valid, Client: tp.Client()},
		func() time.Time { return now })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &bundle{
		tape:   tp,
		dest:   d,
		sender: &destinations.Sender{Client: tp.Client(), Name: "ic", Now: func() time.Time { return now }},
	}
}

func (b *bundle) send(events ...event.Event) []destinations.SendResult {
	return b.sender.Send(context.Background(), b.dest, events)
}

// ev builds a stored event from its JSON payload, as ingest would.
func ev(t *testing.T, payload string) event.Event {
	t.Helper()
	var head struct {
		Type      string `json:"type"`
		MessageID string `json:"messageId"`
	}
	if err := json.Unmarshal([]byte(payload), &head); err != nil {
		t.Fatalf("bad test payload %s: %v", payload, err)
	}
	return event.Event{Source: "web", MessageID: head.MessageID, Type: head.Type, Payload: json.RawMessage(payload)}
}

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func identify(t *testing.T) event.Event {
	return ev(t, `{"type":"identify","userId":"u1","messageId":"m-id-1",`+ts+`,
		"traits":{"email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","phone":"+44 20 7946 0000",
		"avatar":"https://ada.dev/ada.png","created_at":"2024-05-06T07:08:09Z","plan":"pro","color":"green"}}`)
}

func ordered(t *testing.T) event.Event {
	return ev(t, `{"type":"track","event":"Order Completed","userId":"u1","messageId":"m-1",`+ts+`,
		"properties":{"revenue":19.99,"currency":"usd","order_id":"o-17","coupon":"SPRING","gift":true,
		"items":[{"sku":"s-1"}],"p1":1,"p2":2,"p3":3,"p4":4,"p5":5,"p6":6}}`)
}

func signedUp(t *testing.T) event.Event {
	return ev(t, `{"type":"track","event":"Signed Up","userId":"u1","messageId":"m-2",`+ts+`,"properties":{"plan":"pro"}}`)
}

type want struct {
	outcome    destinations.Outcome
	status     int
	reason     string
	retryAfter time.Duration
}

func check(t *testing.T, got []destinations.SendResult, w want) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("%d results, want 1", len(got))
	}
	g := got[0].Result
	if g.Outcome != w.outcome || g.StatusCode != w.status || !strings.Contains(g.Reason, w.reason) || g.RetryAfter != w.retryAfter {
		t.Errorf("got %v %d %q (retry after %v); want %v %d containing %q (retry after %v)",
			g.Outcome, g.StatusCode, g.Reason, g.RetryAfter, w.outcome, w.status, w.reason, w.retryAfter)
	}
}

func TestTapes(t *testing.T) {
	cases := []struct {
		tape  string
		event func(t *testing.T) event.Event
		want  want
	}{
		// No contact found: created with role user.
		{"identify_create", identify, want{outcome: destinations.Delivered, status: 200}},
		// The search finds the contact by external_id: updated.
		{"identify_update", identify, want{outcome: destinations.Delivered, status: 200}},
		// Price first, then flat properties in name order, cut at 10 keys.
		{"track", ordered, want{outcome: destinations.Delivered, status: 202}},
		{"user_not_found", signedUp, want{outcome: destinations.Rejected, status: 404,
			reason: "Intercom has no user with this event's user_id or email (not_found User Not Found); send an identify call"}},
		{"unauthorized", signedUp, want{outcome: destinations.Rejected, status: 401,
			reason: "Intercom refused the access token (unauthorized Access Token Invalid): check access_token"}},
		// Auth failure on the search, before any write.
		{"search_unauthorized", identify, want{outcome: destinations.Rejected, status: 401,
			reason: "Intercom contact search: Intercom refused the access token"}},
		{"conflict", identify, want{outcome: destinations.Retryable, status: 409,
			reason: "conflict A contact matching those details already exists with id=5da6f18e3d7cf967e4582d05); the retry searches again"}},
		{"validation", identify, want{outcome: destinations.Rejected, status: 422,
			reason: "Intercom refused the data (parameter_invalid Custom attribute 'plan_tier' does not exist)"}},
		// X-RateLimit-Reset is 10 s after the clock.
		{"rate_limited", signedUp, want{outcome: destinations.Retryable, status: 429,
			reason: "rate_limit_exceeded", retryAfter: 10 * time.Second}},
		{"search_rate_limited", identify, want{outcome: destinations.Retryable, status: 429,
			reason: "Intercom contact search: Intercom rate limit", retryAfter: 10 * time.Second}},
		{"server_error", signedUp, want{outcome: destinations.Retryable, status: 500, reason: "HTTP 500 Internal Server Error"}},
	}
	for _, c := range cases {
		t.Run(c.tape, func(t *testing.T) {
			b := setup(t, c.tape)
			check(t, b.send(c.event(t)), c.want)
		})
	}
}

func TestWithoutRequest(t *testing.T) {
	valid, err := Integration.Settings.Validate(map[string]any{"access_token": "tok"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(destinations.Config{Settings: valid})
	if err != nil {
		t.Fatal(err)
	}
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
			p, err := d.Transform(context.Background(), []event.Event{e})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Requests) != 0 || p.Results[0].Outcome != c.outcome || !strings.Contains(p.Results[0].Reason, c.reason) {
				t.Errorf("got %d requests, %+v", len(p.Requests), p.Results[0])
			}
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
			valid, err := Integration.Settings.Validate(c.settings)
			if err == nil {
				_, err = New(destinations.Config{Settings: valid})
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("got %v, want %q", err, c.err)
			}
		})
	}
}
