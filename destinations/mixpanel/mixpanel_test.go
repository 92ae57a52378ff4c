package mixpanel

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// setup opens the tape testdata/<name>.yaml and builds a destination whose
// credentials come from the tape (MIXPANEL_PROJECT_TOKEN and friends when
// recording, REDACTED when replaying) and whose other settings are extra.
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
	settings := map[string]any{"project_token": tp.Secret("MIXPANEL_PROJECT_TOKEN")}
	maps.Copy(settings, extra)
	if _, ok := extra["service_account_username"]; ok {
		settings["service_account_username"] = tp.Secret("MIXPANEL_SERVICE_ACCOUNT_USERNAME")
		settings["service_account_secret"] = tp.Secret("MIXPANEL_SERVICE_ACCOUNT_SECRET")
	}
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		New:         fixedJitter,
		Tape:        tp,
		Settings:    settings,
		Now:         time.Unix(1767323100, 0),
	})
}

// jitter is the tests' backoff jitter.
const jitter = 3 * time.Second

// fixedJitter builds the destination with the jitter fixed at jitter.
func fixedJitter(cfg destinations.Config) (destinations.Destination, error) {
	d, err := newDestination(cfg, func() time.Duration { return jitter })
	if err != nil {
		return nil, err
	}
	return d, nil
}

// want is the expected outcome of one event.
type want = destinationstest.Want

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func signedUp(t *testing.T, user, id string) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"`+user+`","messageId":"`+id+`",`+ts+`,"properties":{"plan":"pro"}}`)
}

func identify(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"identify","userId":"u1","messageId":"m-id-1",`+ts+`,
		"traits":{"email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","created_at":"2024-05-06T07:08:09Z",
		"plan":"pro","address":{"city":"London","country":"GB"}},
		"context":{"ip":"203.0.113.7"}}`)
}

// TestTapes runs each event type's request and each documented answer.
func TestTapes(t *testing.T) {
	delivered := want{Outcome: destinations.Delivered, Status: 200}
	cases := []destinationstest.TapeCase{
		{
			Tape: "track",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u1","anonymousId":"a1","messageId":"m-track-1",`+ts+`,
						"properties":{"revenue":19.99,"currency":"USD"},
						"context":{"ip":"203.0.113.7","page":{"url":"https://shop.example/checkout"}}}`),
					// A messageId too long for $insert_id is hashed.
					destinationstest.Event(t, `{"type":"page","name":"Pricing","anonymousId":"a2","messageId":"ajs-next-1767323045678-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e",`+ts+`,
						"properties":{"path":"/pricing"}}`),
					destinationstest.Event(t, `{"type":"screen","name":"Home","userId":"u3","messageId":"m-screen-1",`+ts+`,"context":{"os":{"name":"iOS"}}}`),
				}
			},
			Want: []want{delivered, delivered, delivered},
		},
		{
			Tape:     "service_account",
			Settings: map[string]any{"service_account_username": "", "project_id": "3141592", "region": "eu"},
			Events:   func(t *testing.T) []event.Event { return []event.Event{signedUp(t, "u1", "m-1")} },
			Want:     []want{delivered},
		},
		{
			Tape: "partial",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{signedUp(t, "u1", "m-1"), signedUp(t, "u2", "m-2")}
			},
			Want: []want{
				{Outcome: destinations.Delivered, Status: 400},
				{Outcome: destinations.Rejected, Status: 400, Reason: "'properties.time' is invalid"},
			},
		},
		{
			Tape:   "unauthorized",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t, "u1", "m-1")} },
			Want:   []want{{Outcome: destinations.Rejected, Status: 401, Reason: "Invalid credentials\", \"status\": \"Unauthorized\"}: check project_token"}},
		},
		{
			Tape:   "rate_limited",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t, "u1", "m-1")} },
			// No Retry-After: the first step of the documented backoff.
			Want: []want{{Outcome: destinations.Retryable, Status: 429, Reason: "Project exceeded rate limits", RetryAfter: BackoffStart + jitter}},
		},
		{
			Tape:   "server_error",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t, "u1", "m-1")} },
			Want:   []want{{Outcome: destinations.Retryable, Status: 503, Reason: "HTTP 503 Service Unavailable"}},
		},
		{
			Tape:   "identify",
			Events: func(t *testing.T) []event.Event { return []event.Event{identify(t)} },
			Want:   []want{delivered},
		},
		{
			// The 200 that means failure.
			Tape:   "identify_refused",
			Events: func(t *testing.T) []event.Event { return []event.Event{identify(t)} },
			Want:   []want{{Outcome: destinations.Rejected, Status: 200, Reason: `refused the profile update: Invalid token "REDACTED"`}},
		},
	}
	destinationstest.RunTapes(t, setup, cases)
}

// TestWithoutRequest covers events decided in Transform.
func TestWithoutRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"project_token": "tok"}})
	cases := []struct {
		name, payload string
		outcome       destinations.Outcome
		reason        string
	}{
		{"no user", `{"type":"track","event":"x","messageId":"m",` + ts + `}`, destinations.Rejected, "neither userId nor anonymousId"},
		{"no event name", `{"type":"track","userId":"u","messageId":"m",` + ts + `}`, destinations.Rejected, "no event name"},
		{"no timestamp", `{"type":"track","event":"x","userId":"u","messageId":"m"}`, destinations.Rejected, "no readable timestamp"},
		{"anonymous identify", `{"type":"identify","messageId":"m","traits":{}}`, destinations.Rejected, "neither userId nor anonymousId"},
		{"not JSON", `{"type":`, destinations.Rejected, "not valid JSON"},
		{"alias", `{"type":"alias","userId":"u","previousId":"p","messageId":"m"}`, destinations.Unsupported, "only in projects on Original ID Merge"},
		{"group", `{"type":"group","userId":"u","groupId":"g","messageId":"m"}`, destinations.Unsupported, "not group"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := event.Event{MessageID: "m", Type: event.Track, Payload: json.RawMessage(c.payload)}
			if strings.Contains(c.payload, `"identify"`) {
				e.Type = event.Identify
			}
			if strings.Contains(c.payload, `"alias"`) {
				e.Type = event.Alias
			}
			if strings.Contains(c.payload, `"group"`) {
				e.Type = event.Group
			}
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, e), c.outcome, c.reason)
		})
	}
}

// TestBatchLimits checks that Transform cuts what it is given at 2000
// events, however many it receives.
func TestBatchLimits(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"project_token": "tok"}})
	p := destinationstest.Transform(t, d, slices.Repeat([]event.Event{signedUp(t, "u", "m")}, MaxBatchEvents+1)...)
	destinationstest.CheckBatches(t, p, MaxBatchBytes, MaxBatchEvents, 1)
}

func TestInsertID(t *testing.T) {
	cases := map[string]string{
		"m-1":                                  "m-1",
		"123e4567-e89b-12d3-a456-426614174000": "123e4567-e89b-12d3-a456-426614174000",
		"ajs-next-1767323045678-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e": "542178b4eb321081d12ec7b7b116d4cb",
		"with space": InsertID("with space"),
	}
	for in, want := range cases {
		got := InsertID(in)
		if got != want || len(got) > 36 {
			t.Errorf("InsertID(%q) = %q, want %q", in, got, want)
		}
	}
	if InsertID("with space") == "with space" {
		t.Error("an id with a space must be hashed")
	}
}

func TestSettings(t *testing.T) {
	cases := []struct {
		name     string
		settings map[string]any
		err      string
	}{
		{"token missing", map[string]any{}, "project_token: required"},
		{"bad region", map[string]any{"project_token": "t", "region": "mars"}, "region: expected us, eu or in"},
		{"half a service account", map[string]any{"project_token": "t", "service_account_username": "u"}, "set both or neither"},
		{"service account without project", map[string]any{"project_token": "t", "service_account_username": "u", "service_account_secret": "s"}, "project_id: required"},
		{"bad api_url", map[string]any{"project_token": "t", "api_url": "ftp://x"}, "api_url: expected an http or https URL"},
		{"bad id_management", map[string]any{"project_token": "t", "id_management": "v3"}, "id_management: expected simplified or original"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
		})
	}
}

const anonUUID = "0b1c2d3e-4f5a-4b7c-8d9e-0f1a2b3c4d5e"

func identifyAnon(t *testing.T) event.Event {
	return destinationstest.Event(t, `{"type":"identify","userId":"u1","anonymousId":"`+anonUUID+`","messageId":"m-id-1",`+ts+`,
		"traits":{"email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","created_at":"2024-05-06T07:08:09Z",
		"plan":"pro","address":{"city":"London","country":"GB"}},
		"context":{"ip":"203.0.113.7"}}`)
}

// TestIDManagement covers the Original ID Merge events: $identify before
// the profile update of an identify call that links an anonymousId, and
// $merge for an alias call.
func TestIDManagement(t *testing.T) {
	original := map[string]any{"id_management": "original"}
	t.Run("identify", func(t *testing.T) {
		got := setup(t, "identify_original", original).Send(identifyAnon(t))
		destinationstest.Check(t, got, want{Outcome: destinations.Delivered, Status: 200})
	})
	t.Run("identify rate limited", func(t *testing.T) {
		// The $identify is answered 429: the profile update waits with it.
		got := setup(t, "identify_original_rate_limited", original).Send(identifyAnon(t))
		destinationstest.Check(t, got, want{Outcome: destinations.Retryable, Status: 429,
			Reason: "the $identify linking anonymousId to userId did not go through", RetryAfter: BackoffStart + jitter})
	})
	t.Run("simplified sends no $identify", func(t *testing.T) {
		// The identify tape has the profile update alone.
		got := setup(t, "identify", nil).Send(identify(t))
		destinationstest.Check(t, got, want{Outcome: destinations.Delivered, Status: 200})
	})
	t.Run("alias", func(t *testing.T) {
		got := setup(t, "alias_merge", map[string]any{"id_management": "original", "service_account_username": "", "project_id": "3141592"}).
			Send(destinationstest.Event(t, `{"type":"alias","userId":"u1","previousId":"a-previous","messageId":"m-alias-1",`+ts+`}`))
		destinationstest.Check(t, got, want{Outcome: destinations.Delivered, Status: 200})
	})
	t.Run("alias without service account", func(t *testing.T) {
		d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"project_token": "tok", "id_management": "original"}})
		p := destinationstest.Transform(t, d, event.Event{MessageID: "m", Type: event.Alias,
			Payload: json.RawMessage(`{"type":"alias","userId":"u1","previousId":"p","messageId":"m",` + ts + `}`)})
		destinationstest.CheckDecided(t, p, destinations.Unsupported, "service_account_username")
	})
	t.Run("anonymousId not a UUID", func(t *testing.T) {
		// Original ID Merge takes only a UUID as $anon_id: no $identify,
		// the profile update goes alone, as the identify tape has it.
		e := identify(t)
		m, _ := e.Fields()
		m["anonymousId"] = "not-a-uuid"
		e.Payload, _ = json.Marshal(m)
		got := setup(t, "identify", original).Send(e)
		destinationstest.Check(t, got, want{Outcome: destinations.Delivered, Status: 200})
	})
}

// TestTooLarge checks that a 413 asks for the batch to be split.
func TestTooLarge(t *testing.T) {
	got := setup(t, "too_large", nil).Send(signedUp(t, "u1", "m-1"))
	destinationstest.Check(t, got, want{Outcome: destinations.Retryable, Status: 413, Reason: "sent again in halves"})
	if !got[0].Split {
		t.Errorf("a 413 must Split: %+v", got[0].Result)
	}
}

// TestBackoff checks the documented schedule of 429s without Retry-After:
// 2 s doubling to 60 s, plus jitter, reset by any other answer.
func TestBackoff(t *testing.T) {
	d, err := newDestination(destinations.Config{Settings: destinations.Settings{"project_token": "tok"}},
		func() time.Duration { return jitter })
	if err != nil {
		t.Fatal(err)
	}
	tooMany := &destinations.Response{StatusCode: 429, Header: http.Header{}, Body: []byte(`{"code":429}`), ReceivedAt: time.Unix(1767323100, 0)}
	req := &destinations.Request{URL: d.importURL, Events: []int{0}}
	for _, want := range []time.Duration{2, 4, 8, 16, 32, 60, 60} {
		if got := d.Classify(req, tooMany)[0].RetryAfter; got != want*time.Second+jitter {
			t.Errorf("wait %v, want %v", got, want*time.Second+jitter)
		}
	}
	d.Classify(req, &destinations.Response{StatusCode: 200, Body: []byte(`{"code":200}`)})
	if got := d.Classify(req, tooMany)[0].RetryAfter; got != BackoffStart+jitter {
		t.Errorf("after a 200: wait %v, want %v", got, BackoffStart+jitter)
	}
	withHeader := &destinations.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"7"}}, ReceivedAt: time.Unix(1767323100, 0)}
	if got := d.Classify(req, withHeader)[0].RetryAfter; got != 7*time.Second {
		t.Errorf("Retry-After 7: wait %v", got)
	}
	if !Integration.Deduplicates {
		t.Error("Mixpanel /import deduplicates on $insert_id: Deduplicates must be true")
	}
}
