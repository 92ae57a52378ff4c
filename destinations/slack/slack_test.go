package slack

import (
	"context"
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock.
var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination posting to the
// tape's webhook (SLACK_WEBHOOK_URL when recording).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name)
	settings := map[string]any{
		"webhook_url": tp.Var("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
	}
	maps.Copy(settings, extra)
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		Tape:        tp,
		Settings:    settings,
		Now:         now,
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

// call builds an event of type typ from the rest of its JSON.
func call(t *testing.T, typ, id, rest string) event.Event {
	t.Helper()
	return destinationstest.Event(t, `{"type":"`+typ+`","messageId":"`+id+`","timestamp":"2026-01-02T03:00:00Z",`+rest+`}`)
}

// order is a track call whose user's name comes from context.traits.
func order(t *testing.T) event.Event {
	return call(t, event.Track, "m1", `"userId":"u-1","event":"Order Completed",
		"properties":{"revenue":19.99,"currency":"USD"},
		"context":{"traits":{"first_name":"Ada","last_name":"Lovelace","email":"ada@example.com"}}`)
}

var delivered = want{Outcome: destinations.Delivered}

func TestTrack(t *testing.T) {
	b := setup(t, "track", map[string]any{"channel": "#orders", "username": "fanout", "icon_emoji": ":moneybag:"})
	destinationstest.CheckIgnoringStatus(t, b.Send(order(t)), delivered)
}

func TestIdentify(t *testing.T) {
	b := setup(t, "identify", nil)
	grace := call(t, event.Identify, "m1", `"userId":"u-2","traits":{"name":"Grace Hopper","email":"grace@example.com"}`)
	// No name: the email names the user, once.
	ada := call(t, event.Identify, "m2", `"anonymousId":"a-1","traits":{"email":"ada@example.com"}`)
	destinationstest.CheckIgnoringStatus(t, b.Send(grace, ada), delivered, delivered)
}

// TestCustomTemplate renders every field family and checks that the event's
// markup is escaped while the template's is not.
func TestCustomTemplate(t *testing.T) {
	b := setup(t, "custom_template", map[string]any{
		"track_template": `<!here> New order from {{.UserID}} ({{.Email}}): {{.Properties.revenue}} {{.Properties.currency}}, ` +
			`coupon {{.Properties.coupon}}, plan {{or .Traits.plan "none"}}, {{json .Properties}}`,
	})
	ev := call(t, event.Track, "m1", `"userId":"u-1","event":"Order Completed",
		"properties":{"revenue":19.99,"currency":"USD","coupon":"<!channel> & friends","email":"ada@example.com"}`)
	destinationstest.CheckIgnoringStatus(t, b.Send(ev), delivered)
}

func TestTapes(t *testing.T) {
	cases := []struct {
		tape string
		want want
	}{
		{"rate_limited", want{Outcome: destinations.Retryable, Reason: "HTTP 429 Too Many Requests: rate_limited", RetryAfter: 30 * time.Second}},
		{"server_error", want{Outcome: destinations.Retryable, Reason: "HTTP 500 Internal Server Error: rollup_error"}},
		// Auth failures: the webhook URL is the credential.
		{"invalid_token", want{Outcome: destinations.Rejected,
			Reason: "Slack refused the message (HTTP 403 invalid_token): the webhook URL is no longer valid (revoked, or the app was uninstalled): create a new one in your Slack app > Incoming Webhooks and set webhook_url"}},
		{"no_service", want{Outcome: destinations.Rejected, Reason: "(HTTP 404 no_service): the webhook is disabled, removed or invalid"}},
		{"channel_not_found", want{Outcome: destinations.Rejected, Reason: "(HTTP 404 channel_not_found): the webhook's channel, or the channel setting, does not exist"}},
		{"channel_is_archived", want{Outcome: destinations.Rejected, Reason: "(HTTP 410 channel_is_archived): the webhook's channel is archived: unarchive it"}},
		{"action_prohibited", want{Outcome: destinations.Rejected, Reason: "(HTTP 403 action_prohibited): the workspace restricts"}},
		// Validation failure.
		{"invalid_payload", want{Outcome: destinations.Rejected, Reason: "(HTTP 400 invalid_payload): Slack could not read the message"}},
	}
	for _, c := range cases {
		t.Run(c.tape, func(t *testing.T) {
			b := setup(t, c.tape, map[string]any{"track_template": `{{.User}} did *{{.Event}}*`})
			destinationstest.CheckIgnoringStatus(t, b.Send(order(t)), c.want)
		})
	}
}

// TestWithoutRequest covers the outcomes decided before any request.
func TestWithoutRequest(t *testing.T) {
	valid, err := Integration.Settings.Validate(map[string]any{
		"webhook_url":       "https://hooks.slack.com/services/T0/B0/X",
		"identify_template": `{{with .Traits.plan}}Upgraded to {{.}}{{end}}`,
		"track_template":    `{{index .Properties "items" 3}}`,
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(destinations.Config{Settings: valid})
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.Transform(context.Background(), []event.Event{
		call(t, event.Page, "p", `"name":"Home"`),
		call(t, event.Identify, "i", `"userId":"u","traits":{"email":"x@example.com"}`),
		call(t, event.Track, "t", `"event":"Cart","properties":{"items":[1]}`),
		{MessageID: "bad", Type: event.Track, Payload: json.RawMessage(`{`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Requests) != 0 {
		t.Fatalf("%d requests, want none", len(p.Requests))
	}
	wants := []struct {
		outcome destinations.Outcome
		reason  string
	}{
		{destinations.Unsupported, "track and identify calls only, not page"},
		{destinations.Rejected, "identify_template gives an empty message for this event"},
		{destinations.Rejected, "track_template fails on this event"},
		{destinations.Rejected, "not valid JSON"},
	}
	for i, w := range wants {
		if r := p.Results[i]; r.Outcome != w.outcome || !strings.Contains(r.Reason, w.reason) {
			t.Errorf("event %d: %+v, want %v containing %q", i, r, w.outcome, w.reason)
		}
	}
}

func TestSettings(t *testing.T) {
	const hook = "https://hooks.slack.com/services/T0/B0/SECRET"
	cases := []struct {
		settings map[string]any
		err      string
	}{
		{map[string]any{}, "webhook_url: required setting is missing"},
		{map[string]any{"webhook_url": "hooks.slack.com/services/T0/B0/SECRET"}, "webhook_url: expected the webhook's https URL"},
		{map[string]any{"webhook_url": hook, "track_template": "{{.User"}, "track_template: the template does not parse"},
		{map[string]any{"webhook_url": hook, "identify_template": "{{.Nope}}"}, "identify_template: the template names a field events do not have (see Data for the fields): template: identify_template:1:2: executing \"identify_template\" at <.Nope>: can't evaluate field Nope"},
		{map[string]any{"webhook_url": hook, "track_template": "{{nope .User}}"}, `track_template: the template does not parse: template: track_template:1: function "nope" not defined`},
		{map[string]any{"webhook_url": hook, "track_template": "   "}, "track_template: expected a template, found an empty one"},
		{map[string]any{"webhook_url": hook, "icon_url": "rocket.png"}, `icon_url: expected an image's http or https URL, found "rocket.png"`},
	}
	for _, c := range cases {
		valid, err := Integration.Settings.Validate(c.settings)
		if err == nil {
			_, err = New(destinations.Config{Settings: valid})
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%v: got %v, want %q", c.settings, err, c.err)
		}
		if err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%v: the error quotes the webhook URL: %v", c.settings, err)
		}
	}
}

// TestClassify covers the answers no tape needs a request for: every
// documented error body, and bodies Slack did not document.
func TestClassify(t *testing.T) {
	d := &destination{}
	req := &destinations.Request{Events: []int{0}}
	cases := []struct {
		code       int
		body       string
		want       destinations.Outcome
		reason     string
		retryAfter time.Duration
	}{
		{200, "ok", destinations.Delivered, "", 0},
		{400, "no_text", destinations.Rejected, "the message is empty: check track_template and identify_template", 0},
		{400, "user_not_found", destinations.Rejected, "the user named in the channel setting", 0},
		{403, "posting_to_general_channel_denied", destinations.Rejected, "only admins may post to this channel", 0},
		{404, "no_team", destinations.Rejected, "workspace no longer exists", 0},
		{400, "no_service_id\n", destinations.Rejected, "the webhook URL is incomplete", 0},
		{404, "<html>not found</html>", destinations.Rejected, "HTTP 404 Not Found: <html>not found</html>", 0},
		{503, "", destinations.Retryable, "HTTP 503 Service Unavailable", 0},
		{429, "rate_limited", destinations.Retryable, "rate_limited", 0},
	}
	for _, c := range cases {
		got := d.Classify(req, &destinations.Response{StatusCode: c.code, Body: []byte(c.body), ReceivedAt: now})
		if len(got) != 1 {
			t.Fatalf("%d results", len(got))
		}
		if g := got[0]; g.Outcome != c.want || !strings.Contains(g.Reason, c.reason) || g.StatusCode != c.code || g.RetryAfter != c.retryAfter {
			t.Errorf("%d %q: got %+v", c.code, c.body, g)
		}
	}
}

func TestData(t *testing.T) {
	m := map[string]any{
		"type":        "track",
		"event":       "A <b> & c",
		"anonymousId": "anon",
		"properties":  map[string]any{"k<": []any{"<x>", json.Number("1")}},
	}
	d := data(event.Track, m)
	if d.Event != "A &lt;b&gt; &amp; c" || d.User != "anon" {
		t.Errorf("got %+v", d)
	}
	if got := d.Properties["k&lt;"].([]any)[0]; got != "&lt;x&gt;" {
		t.Errorf("nested property: %v", got)
	}
}
