package marketo

import (
	"encoding/json"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock: 2026-01-02 03:04:05 UTC, 21:04:05 US Central
// the day before.
var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination whose
// credentials and instance come from the tape (MARKETO_CLIENT_ID,
// MARKETO_CLIENT_SECRET and MARKETO_BASE_URL when recording).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
	settings := map[string]any{
		"base_url":      tp.Var("MARKETO_BASE_URL", "https://123-ABC-456.mktorest.com"),
		"client_id":     tp.Secret("MARKETO_CLIENT_ID"),
		"client_secret": tp.Secret("MARKETO_CLIENT_SECRET"),
	}
	maps.Copy(settings, extra)
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		New: func(cfg destinations.Config) (destinations.Destination, error) {
			return newDestination(cfg, func() time.Time { return now })
		},
		Tape:     tp,
		Settings: settings,
		Now:      now,
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

// identify builds an identify call with traits.
func identify(t *testing.T, id, traitsJSON string) event.Event {
	t.Helper()
	return destinationstest.Event(t, `{"type":"identify","userId":"u-`+id+`","messageId":"`+id+`","timestamp":"2026-01-02T03:00:00Z","traits":`+traitsJSON+`}`)
}

func ada(t *testing.T) event.Event {
	return identify(t, "m1", `{"email":"ada@example.com","name":"Ada Lovelace"}`)
}

var delivered = want{Outcome: destinations.Delivered}

func TestIdentify(t *testing.T) {
	b := setup(t, "identify", map[string]any{
		"fields":         map[string]any{"plan": "planTier"},
		"partition_name": "EMEA",
	})
	// Every standard field, from snake_case, camelCase and nested traits,
	// and a custom field through the `fields` mapping; unmapped traits
	// (favorite_color) stay out of the lead.
	first := identify(t, "m1", `{"email":"ada@example.com","first_name":"Ada","lastName":"Lovelace",
		"phone":"+44 20 7946 0000","company":{"name":"Analytical Engines"},"title":"CTO","website":"https://ada.dev",
		"address":{"street":"12 St James's Square","city":"London","postal_code":"SW1Y 4JH","country":"GB"},
		"birthday":"1815-12-10","plan":"pro","favorite_color":"green"}`)
	second := identify(t, "m2", `{"email":"grace@example.com","name":"Grace Hopper"}`)
	destinationstest.CheckIgnoringStatus(t, b.Send(first, second), delivered, delivered)
	// The cached token serves the next batch: the tape has no second
	// token request.
	destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), delivered)
}

func TestTapes(t *testing.T) {
	cases := []struct {
		tape  string
		want  want
		quota bool
	}{
		// Auth failure at the identity endpoint: no leads call is made.
		{"bad_credentials", want{Outcome: destinations.Rejected,
			Reason: "Marketo refused client_id and client_secret (HTTP 401: Bad client credentials): copy them again from Admin > Integration > LaunchPoint"}, false},
		{"access_denied", want{Outcome: destinations.Rejected, Reason: "603 Access denied: the custom service's API-only user needs a role with the Read-Write Lead permission"}, false},
		{"invalid_json", want{Outcome: destinations.Rejected, Reason: "609 Invalid JSON"}, false},
		{"rate_limited", want{Outcome: destinations.Retryable, Reason: "606 Max rate limit", RetryAfter: 20 * time.Second}, false},
		// 21:04:05 CST to midnight.
		{"quota", want{Outcome: destinations.Retryable, Reason: "607 Daily quota reached", RetryAfter: 2*time.Hour + 55*time.Minute + 55*time.Second}, true},
		{"concurrent", want{Outcome: destinations.Retryable, Reason: "615 Concurrent access limit reached"}, false},
		{"system_error", want{Outcome: destinations.Retryable, Reason: "611 System error"}, false},
		{"bad_gateway", want{Outcome: destinations.Retryable, Reason: "HTTP 502 Bad Gateway"}, false},
		{"too_large", want{Outcome: destinations.Rejected, Reason: "HTTP 413 Request Entity Too Large"}, false},
	}
	for _, c := range cases {
		t.Run(c.tape, func(t *testing.T) {
			b := setup(t, c.tape, nil)
			got := b.Send(ada(t))
			destinationstest.CheckIgnoringStatus(t, got, c.want)
			if got[0].Quota != c.quota {
				t.Errorf("quota %v, want %v", got[0].Quota, c.quota)
			}
		})
	}
}

// TestSkipped is the 200 with "success": true that still failed leads.
func TestSkipped(t *testing.T) {
	b := setup(t, "skipped", map[string]any{"fields": map[string]any{"plan": "planTier"}})
	got := b.Send(
		identify(t, "m1", `{"email":"ada@example.com"}`),
		identify(t, "m2", `{"email":"not-an-email"}`),
		identify(t, "m3", `{"email":"grace@example.com","plan":"pro"}`),
		identify(t, "m4", `{"email":"twins@example.com"}`),
		identify(t, "m5", `{"email":"busy@example.com"}`),
	)
	destinationstest.CheckIgnoringStatus(t, got,
		delivered,
		want{Outcome: destinations.Rejected, Reason: "Marketo skipped the lead: 1003 Value for field 'email' is invalid (a value is not valid"},
		want{Outcome: destinations.Rejected, Reason: "1006 Field 'planTier' not found (a field in the `fields` setting does not exist in Marketo"},
		want{Outcome: destinations.Rejected, Reason: "1007 Multiple lead match lookup criteria (several leads share"},
		want{Outcome: destinations.Retryable, Reason: "1029 Too many jobs in queue"},
	)
	for i, r := range got {
		if r.StatusCode != 200 {
			t.Errorf("event %d: status %d, want the 200 Marketo answered", i, r.StatusCode)
		}
	}
}

// TestTokenExpired checks that a 602 drops the token, so that the retry
// fetches a new one and succeeds.
func TestTokenExpired(t *testing.T) {
	b := setup(t, "token_expired", nil)
	destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), want{Outcome: destinations.Retryable, Reason: "602 Access token expired; a new access token is fetched for the retry"})
	destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), delivered)
}

func TestWithoutRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{
		"base_url": "https://123-ABC-456.mktorest.com", "client_id": "id", "client_secret": "s"}})
	track := event.Event{MessageID: "t", Type: event.Track, Payload: json.RawMessage(`{"type":"track","event":"x"}`)}
	p := destinationstest.Transform(t, d, identify(t, "m1", `{"name":"No Email"}`), track)
	if len(p.Requests) != 0 {
		t.Fatalf("%d requests, want none (and no token request)", len(p.Requests))
	}
	if r := p.Results[0]; r.Outcome != destinations.Rejected || !strings.Contains(r.Reason, "has no email, the lookup_field") {
		t.Errorf("identify without email: %+v", r)
	}
	if r := p.Results[1]; r.Outcome != destinations.Unsupported {
		t.Errorf("track: %+v", r)
	}
}

func TestClassifyMalformed(t *testing.T) {
	d := &destination{now: func() time.Time { return now }}
	req := &destinations.Request{Events: []int{0, 1}, Header: http.Header{}}
	cases := []struct {
		name, body string
		want       destinations.Outcome
		reason     string
	}{
		{"not JSON", `<html>`, destinations.Retryable, "not its JSON envelope"},
		{"result count", `{"success":true,"result":[{"status":"created"}]}`, destinations.Retryable, "1 results for 2 leads"},
		{"no error code", `{"success":false}`, destinations.Retryable, "without an error code"},
		{"duplicate seq", `{"success":true,"result":[{"seq":0,"status":"created"},{"seq":0,"status":"created"}]}`, destinations.Retryable, "no result for this lead"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := d.Classify(req, &destinations.Response{StatusCode: 200, Body: []byte(c.body)})
			last := got[len(got)-1]
			if last.Outcome != c.want || !strings.Contains(last.Reason, c.reason) {
				t.Errorf("got %+v", last)
			}
		})
	}
}

// TestQuotaReset checks the wait of a 607 in summer, when US Central time
// is UTC-5, and that other codes hidden in a 200 are never delivered.
func TestQuotaReset(t *testing.T) {
	july := time.Date(2026, 7, 1, 3, 0, 0, 0, time.UTC) // 22:00 CDT
	d := &destination{now: func() time.Time { return july }}
	req := &destinations.Request{Events: []int{0}, Header: http.Header{}}
	cases := []struct {
		code  string
		want  destinations.Outcome
		after time.Duration
		quota bool
	}{
		{"607", destinations.Retryable, 2 * time.Hour, true},
		{"606", destinations.Retryable, 20 * time.Second, false},
		{"600", destinations.Retryable, 0, false},
		{"614", destinations.Retryable, 0, false},
		{"610", destinations.Rejected, 0, false},
	}
	for _, c := range cases {
		body := `{"requestId":"e42b#14272d07d78","success":false,"errors":[{"code":"` + c.code + `","message":"m"}]}`
		r := d.Classify(req, &destinations.Response{StatusCode: 200, Body: []byte(body), ReceivedAt: july})[0]
		if r.Outcome != c.want || r.RetryAfter != c.after || r.Quota != c.quota {
			t.Errorf("%s: %+v", c.code, r)
		}
	}
}

func TestSettings(t *testing.T) {
	for _, base := range []string{"123-ABC-456.mktorest.com", "ftp://x"} {
		valid, err := Integration.Settings.Validate(map[string]any{"base_url": base, "client_id": "i", "client_secret": "s"})
		if err == nil {
			_, err = New(destinations.Config{Settings: valid})
		}
		if err == nil || !strings.Contains(err.Error(), "base_url: expected") {
			t.Errorf("base_url %q: %v", base, err)
		}
	}
	if _, err := Integration.Settings.Validate(map[string]any{"base_url": "https://x"}); err == nil || !strings.Contains(err.Error(), "client_id: required") {
		t.Errorf("missing client_id: %v", err)
	}
}

// TestTooLargeSplits checks that a 413 to several leads sends them again
// in halves, and rejects a lead alone.
func TestTooLargeSplits(t *testing.T) {
	d := &destination{now: func() time.Time { return now }}
	resp := &destinations.Response{StatusCode: 413, Header: http.Header{}, Body: []byte("Request Entity Too Large")}
	for _, r := range d.Classify(&destinations.Request{Events: []int{0, 1}}, resp) {
		if r.Outcome != destinations.Retryable || !r.Split {
			t.Errorf("two leads: %+v", r)
		}
	}
	if r := d.Classify(&destinations.Request{Events: []int{0}}, resp)[0]; r.Outcome != destinations.Rejected || r.Split {
		t.Errorf("one lead: %+v", r)
	}
}
