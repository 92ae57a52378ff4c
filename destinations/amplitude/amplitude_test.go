package amplitude

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

// setup opens testdata/<name>.yaml and builds a destination whose API key
// comes from the tape (AMPLITUDE_API_KEY when recording).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name)
	settings := map[string]any{"api_key": tp.Secret("AMPLITUDE_API_KEY")}
	maps.Copy(settings, extra)
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		Tape:        tp,
		Settings:    settings,
		Now:         time.Unix(1767323100, 0),
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func signedUp(t *testing.T, user, id string) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"`+user+`","messageId":"`+id+`",`+ts+`,"properties":{"plan":"pro"}}`)
}

var delivered = want{Outcome: destinations.Delivered, Status: 200}

// TestTapes runs each event type's request and each documented answer.
func TestTapes(t *testing.T) {
	two := func(t *testing.T) []event.Event {
		return []event.Event{signedUp(t, "user-00001", "m-1"), signedUp(t, "user-00002", "m-2")}
	}
	one := func(t *testing.T) []event.Event { return []event.Event{signedUp(t, "user-00001", "m-1")} }
	cases := []destinationstest.TapeCase{
		{
			// One batch with every supported call type.
			Tape: "track",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"user-00001","anonymousId":"anon-00001","messageId":"m-track-1",`+ts+`,
						"properties":{"revenue":"19.99","currency":"USD","price":9.995,"quantity":2},
						"context":{"ip":"203.0.113.7","os":{"name":"iOS","version":"17.2"},"app":{"version":"4.2.0"},"locale":"en-GB"}}`),
					destinationstest.Event(t, `{"type":"page","name":"Pricing","anonymousId":"anon-00002","messageId":"m-page-1",`+ts+`,"properties":{"path":"/pricing"}}`),
					destinationstest.Event(t, `{"type":"screen","name":"Home","userId":"user-00003","messageId":"m-screen-1",`+ts+`,"context":{"device":{"model":"iPhone15,2"}}}`),
					destinationstest.Event(t, `{"type":"identify","userId":"user-00001","messageId":"m-identify-1",`+ts+`,
						"traits":{"first_name":"Ada","last_name":"Lovelace","email":"ada@example.com","plan":"pro","address":{"city":"London","country":"GB"}}}`),
				}
			},
			Want: []want{delivered, delivered, delivered, delivered},
		},
		{
			Tape:     "eu_min_id_length",
			Settings: map[string]any{"region": "eu", "min_id_length": 2},
			Events:   func(t *testing.T) []event.Event { return []event.Event{signedUp(t, "u1", "m-1")} },
			Want:     []want{delivered},
		},
		{
			// A 400 naming the second event: it is rejected, the first is
			// sent again.
			Tape:   "invalid_fields",
			Events: two,
			Want: []want{
				{Outcome: destinations.Retryable, Status: 400, Reason: "because of other events in it"},
				{Outcome: destinations.Rejected, Status: 400, Reason: "Amplitude refused the event: invalid time; missing event_type (Request missing required field)"},
			},
		},
		{
			Tape:   "invalid_api_key",
			Events: one,
			Want:   []want{{Outcome: destinations.Rejected, Status: 400, Reason: "Amplitude refused the API key (Invalid API key: REDACTED): check api_key"}},
		},
		{
			Tape:   "server_error",
			Events: one,
			Want:   []want{{Outcome: destinations.Retryable, Status: 503, Reason: "HTTP 503 Service Unavailable"}},
		},
	}
	destinationstest.RunTapes(t, setup, cases)
}

// extra is what Check does not compare: the fields of issue 20.
type extra struct {
	hold  string
	quota bool
	split bool
}

func checkExtra(t *testing.T, got []destinations.SendResult, wants ...extra) {
	t.Helper()
	for i, w := range wants {
		g := got[i].Result
		if g.Hold != w.hold || g.Quota != w.quota || g.Split != w.split {
			t.Errorf("event %d: hold %q quota %v split %v; want hold %q quota %v split %v",
				i, g.Hold, g.Quota, g.Split, w.hold, w.quota, w.split)
		}
	}
}

func anonSignedUp(t *testing.T, anon, id string) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","anonymousId":"`+anon+`","messageId":"`+id+`",`+ts+`,"properties":{"plan":"pro"}}`)
}

// TestThrottled checks the 429s that name users and devices: their events
// are held by their HoldKey, the others are retried at once.
func TestThrottled(t *testing.T) {
	three := func(t *testing.T) []event.Event {
		return []event.Event{signedUp(t, "user-00001", "m-1"), anonSignedUp(t, "anon-00004", "m-4"), signedUp(t, "user-00003", "m-3")}
	}
	t.Run("throttled", func(t *testing.T) {
		got := setup(t, "throttled", nil).Send(three(t)...)
		destinationstest.Check(t, got,
			want{Outcome: destinations.Retryable, Status: 429, Reason: "more than 30 events per second", RetryAfter: ThrottleWait},
			want{Outcome: destinations.Retryable, Status: 429, Reason: "more than 30 events per second", RetryAfter: ThrottleWait},
			want{Outcome: destinations.Retryable, Status: 429, Reason: "sent again at once"},
		)
		checkExtra(t, got, extra{hold: "user_id:user-00001"}, extra{hold: "device_id:anon-00004"}, extra{})
	})
	t.Run("daily_quota", func(t *testing.T) {
		got := setup(t, "daily_quota", nil).Send(three(t)...)
		destinationstest.Check(t, got,
			want{Outcome: destinations.Retryable, Status: 429, Reason: "over the daily limit", RetryAfter: QuotaWait},
			want{Outcome: destinations.Retryable, Status: 429, Reason: "over the daily limit", RetryAfter: QuotaWait},
			want{Outcome: destinations.Retryable, Status: 429, Reason: "sent again at once"},
		)
		checkExtra(t, got, extra{hold: "user_id:user-00001", quota: true}, extra{hold: "device_id:anon-00004", quota: true}, extra{})
	})
}

// TestTooLarge checks that a 413 asks for the batch to be split, whatever
// its size: the engine rejects an event alone that is still too large.
func TestTooLarge(t *testing.T) {
	got := setup(t, "too_large_batch", nil).Send(signedUp(t, "user-00001", "m-1"), signedUp(t, "user-00002", "m-2"))
	split := want{Outcome: destinations.Retryable, Status: 413, Reason: "sent again in halves"}
	destinationstest.Check(t, got, split, split)
	checkExtra(t, got, extra{split: true}, extra{split: true})

	got = setup(t, "too_large", nil).Send(signedUp(t, "user-00001", "m-1"))
	destinationstest.Check(t, got, split)
	checkExtra(t, got, extra{split: true})
}

func TestHoldKey(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"api_key": "key"}}).(destinations.HoldKeyer)
	for _, c := range []struct{ payload, want string }{
		{`{"type":"track","event":"x","userId":"user-1","anonymousId":"anon-1","messageId":"m"}`, "user_id:user-1"},
		{`{"type":"track","event":"x","anonymousId":"anon-1","messageId":"m"}`, "device_id:anon-1"},
		{`{"type":`, ""},
	} {
		if got := d.HoldKey(event.Event{Type: event.Track, Payload: json.RawMessage(c.payload)}); got != c.want {
			t.Errorf("HoldKey(%s) = %q, want %q", c.payload, got, c.want)
		}
	}
	if !Integration.Deduplicates {
		t.Error("Amplitude deduplicates on insert_id: Deduplicates must be true")
	}
}

// TestWithoutRequest covers events decided in Transform.
func TestWithoutRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"api_key": "key"}})
	cases := []struct {
		name, payload string
		outcome       destinations.Outcome
		reason        string
	}{
		{"no user", `{"type":"track","event":"x","messageId":"m",` + ts + `}`, destinations.Rejected, "neither userId nor anonymousId"},
		{"short user id", `{"type":"track","event":"x","userId":"u1","messageId":"m",` + ts + `}`, destinations.Rejected, `userId "u1" is shorter than the 5 characters`},
		{"no event name", `{"type":"track","userId":"user-1","messageId":"m",` + ts + `}`, destinations.Rejected, "no event name"},
		{"no timestamp", `{"type":"track","event":"x","userId":"user-1","messageId":"m"}`, destinations.Rejected, "no readable timestamp"},
		{"not JSON", `{"type":`, destinations.Rejected, "not valid JSON"},
		{"alias", `{"type":"alias","userId":"user-1","previousId":"p","messageId":"m"}`, destinations.Unsupported, "not alias"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := event.Event{MessageID: "m", Type: event.Track, Payload: json.RawMessage(c.payload)}
			if strings.Contains(c.payload, `"alias"`) {
				e.Type = event.Alias
			}
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, e), c.outcome, c.reason)
		})
	}
}

// TestBatchLimits checks that Transform cuts what it is given by count and
// by bytes, however much it receives.
func TestBatchLimits(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"api_key": "key"}})
	p := destinationstest.Transform(t, d, slices.Repeat([]event.Event{signedUp(t, "user-1", "m")}, MaxBatchEvents+1)...)
	destinationstest.CheckBatches(t, p, 0, MaxBatchEvents, 1)

	big := strings.Repeat("x", 300_000)
	events := make([]event.Event, 4)
	for i := range events {
		events[i] = destinationstest.Event(t, `{"type":"track","event":"Big","userId":"user-1","messageId":"m",`+ts+`,"properties":{"blob":"`+big+`"}}`)
	}
	p = destinationstest.Transform(t, d, events...)
	if len(p.Requests) != 2 {
		t.Fatalf("4 events of 300 kB in %d requests, want 2", len(p.Requests))
	}
	for _, r := range p.Requests {
		if len(r.Body) >= MaxBatchBytes {
			t.Errorf("request of %d bytes", len(r.Body))
		}
	}
}

// TestClassifyMalformed covers answers whose body is not Amplitude's JSON.
func TestClassifyMalformed(t *testing.T) {
	d := &destination{}
	req := &destinations.Request{Events: []int{0, 1}}
	cases := []struct {
		code    int
		body    string
		outcome destinations.Outcome
	}{
		{400, `<html>bad request</html>`, destinations.Rejected},
		{429, `<html>slow down</html>`, destinations.Retryable},
		{429, `{"code":429,"error":"Too many requests"}`, destinations.Retryable},
		{400, `{"code":400,"events_with_invalid_fields":{"time":[7]}}`, destinations.Rejected},
	}
	for _, c := range cases {
		got := d.Classify(req, &destinations.Response{StatusCode: c.code, Body: []byte(c.body)})
		for i, r := range got {
			if r.Outcome != c.outcome {
				t.Errorf("%d %s: event %d %+v", c.code, c.body, i, r)
			}
		}
	}
}

func TestSettings(t *testing.T) {
	cases := []struct {
		name     string
		settings map[string]any
		err      string
	}{
		{"key missing", map[string]any{}, "api_key: required"},
		{"bad region", map[string]any{"api_key": "k", "region": "mars"}, "region: expected us or eu"},
		{"bad api_url", map[string]any{"api_key": "k", "api_url": "ftp://x"}, "api_url: expected an http or https URL"},
		{"bad min_id_length", map[string]any{"api_key": "k", "min_id_length": -1}, "min_id_length: expected a positive number"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
		})
	}
}
