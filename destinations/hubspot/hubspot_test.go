package hubspot

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

var now = time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)

// settings are the tests' mappings.
var settings = map[string]any{
	"events":           map[string]any{"Signed Up": "pe1234567_signed_up"},
	"properties":       map[string]any{"plan": "plan_tier"},
	"event_properties": map[string]any{"plan": "Plan_Tier"},
}

// setup opens testdata/<name>.yaml and builds a destination whose token
// comes from the tape (HUBSPOT_ACCESS_TOKEN when recording).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
	s := map[string]any{"access_token": tp.Secret("HUBSPOT_ACCESS_TOKEN")}
	maps.Copy(s, settings)
	maps.Copy(s, extra)
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		Tape:        tp,
		Settings:    s,
		Now:         now,
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func identify(t testing.TB, id, email string) event.Event {
	return destinationstest.Event(t, `{"type":"identify","userId":"u-`+id+`","messageId":"`+id+`",`+ts+`,"traits":{"email":"`+email+`"}}`)
}

func signedUp(t testing.TB) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"u1","messageId":"m-t1",`+ts+`,
		"properties":{"plan":"pro","referrer_code":"x1"},"context":{"traits":{"email":"Ada@Example.com"}}}`)
}

func graceSignedUp(t testing.TB) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"u2","messageId":"m-t2",`+ts+`,
		"properties":{"plan":"max","email":"grace@example.com"}}`)
}

func twoSignUps(t *testing.T) []event.Event { return []event.Event{signedUp(t), graceSignedUp(t)} }

func ada(t *testing.T) []event.Event { return []event.Event{identify(t, "m-1", "ada@example.com")} }

func TestTapes(t *testing.T) {
	ok := want{Outcome: destinations.Delivered, Status: 200}
	two := func(t *testing.T) []event.Event {
		return []event.Event{identify(t, "m-1", "ada@example.com"), identify(t, "m-2", "not-an-email")}
	}
	cases := []destinationstest.TapeCase{
		{
			// Two contacts in one upsert; the second identify of Ada goes
			// in a second request, after the first.
			Tape: "identify",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					destinationstest.Event(t, `{"type":"identify","userId":"u1","messageId":"m-1",`+ts+`,"traits":{"email":"Ada@Example.com",
						"name":"Ada Lovelace","phone":"+44 20 7946 0000","company":{"name":"Analytical Engines"},"title":"CTO",
						"website":"https://ada.dev","address":{"street":"12 St James's Square","city":"London","postal_code":"SW1Y 4JH","country":"GB"},
						"birthday":"1815-12-10","plan":"pro","favorite_color":"green"}}`),
					identify(t, "m-2", "grace@example.com"),
					destinationstest.Event(t, `{"type":"identify","userId":"u1","messageId":"m-3",`+ts+`,"traits":{"email":"ada@example.com","plan":"max"}}`),
				}
			},
			Want: []want{ok, ok, ok},
		},
		{
			// Two occurrences in one batch, the mapped property only: the
			// first is delivered with a warning naming the one dropped
			// (TestDroppedWarning checks that the second has none).
			Tape:   "track",
			Events: twoSignUps,
			Want: []want{{Outcome: destinations.Delivered, Status: 204, Reason: droppedReferrer},
				{Outcome: destinations.Delivered, Status: 204}},
		},
		{
			// A 400 naming the second occurrence by uuid.
			Tape:   "event_validation",
			Events: twoSignUps,
			Want: []want{
				{Outcome: destinations.Retryable, Status: 400, Reason: "because of another event occurrence"},
				{Outcome: destinations.Rejected, Status: 400, Reason: "failed with validation error(s)"},
			},
		},
		{
			// Multi-status: the error names m-2 by objectWriteTraceId.
			Tape:   "multi_status",
			Events: two,
			Want: []want{
				{Outcome: destinations.Delivered, Status: 207},
				{Outcome: destinations.Rejected, Status: 207, Reason: "VALIDATION_ERROR: Property values were not valid"},
			},
		},
		{
			// 400 naming one input: it is rejected, the other goes again.
			Tape:   "validation_named",
			Events: two,
			Want: []want{
				{Outcome: destinations.Retryable, Status: 400, Reason: "because of another contact"},
				{Outcome: destinations.Rejected, Status: 400, Reason: "INVALID_EMAIL: Email address not-an-email is invalid"},
			},
		},
		{
			Tape:   "unauthorized",
			Events: ada,
			Want:   []want{{Outcome: destinations.Rejected, Status: 401, Reason: "check access_token"}},
		},
		{
			Tape:   "forbidden",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} },
			Want:   []want{{Outcome: destinations.Rejected, Status: 403, Reason: "needs the analytics.behavioral_events.send scope"}},
		},
		{
			Tape:   "rate_limited",
			Events: ada,
			Want:   []want{{Outcome: destinations.Retryable, Status: 429, Reason: "ten_secondly_rolling limit", RetryAfter: 10 * time.Second}},
		},
		{
			// The same uuid again: the first occurrence was accepted.
			Tape:   "duplicate",
			Events: func(t *testing.T) []event.Event { return []event.Event{signedUp(t)} },
			Want:   []want{{Outcome: destinations.Delivered, Status: 409, Reason: droppedReferrer}},
		},
		{
			Tape:   "server_error",
			Events: ada,
			Want:   []want{{Outcome: destinations.Retryable, Status: 502, Reason: "HTTP 502 Bad Gateway"}},
		},
	}
	destinationstest.RunTapes(t, setup, cases)
}

// droppedReferrer is the warning of signedUp, delivered without its
// unmapped property.
const droppedReferrer = "delivered without properties not in event_properties (or beyond HubSpot's 50 per event): referrer_code"

// An occurrence delivered without some of its properties says which in
// its reason, a warning; one without any dropped has none (Grace's email
// property is sent as the occurrence's email). A failed occurrence keeps
// its failure's reason.
func TestDroppedWarning(t *testing.T) {
	got := setup(t, "track", nil).Send(twoSignUps(t)...)
	if len(got) != 2 || got[0].Outcome != destinations.Delivered || got[0].Reason != droppedReferrer ||
		got[1].Outcome != destinations.Delivered || got[1].Reason != "" {
		t.Fatalf("got %+v, %+v; want delivered with %q, delivered with no reason", got[0].Result, got[1].Result, droppedReferrer)
	}
	got = setup(t, "forbidden", nil).Send(signedUp(t))
	if got[0].Outcome != destinations.Rejected || strings.Contains(got[0].Reason, "delivered without") {
		t.Fatalf("got %+v; want rejected with the 403's reason", got[0].Result)
	}
	if w := droppedWarning([]string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"}); !strings.HasSuffix(w, ": a, b, c, d, e, f, g, h, i, j and 2 more") {
		t.Errorf("warning of 12 dropped: %q", w)
	}
}

// TestWaits checks the answers that pause the queue or split the batch:
// destinationstest.Want does not compare Result.Quota and Result.Split.
func TestWaits(t *testing.T) {
	cases := []struct {
		tape     string
		settings map[string]any
		events   func(t *testing.T) []event.Event
		want     want
		quota    bool
		split    bool
	}{
		// 400 naming no input: halves, to find the refused one.
		{"validation", nil, func(t *testing.T) []event.Event {
			return []event.Event{identify(t, "m-1", "ada@example.com"), identify(t, "m-2", "not-an-email")}
		}, want{Outcome: destinations.Retryable, Status: 400, Reason: "names none of the 2 contacts"}, false, true},
		{"event_split", nil, twoSignUps,
			want{Outcome: destinations.Retryable, Status: 400, Reason: "names none of the 2 event occurrences"}, false, true},
		{"locked", nil, ada, want{Outcome: destinations.Retryable, Status: 423, Reason: "locks a record for 2 s", RetryAfter: 2 * time.Second}, false, false},
		{"migration", nil, ada, want{Outcome: destinations.Retryable, Status: 477, Reason: "migrated", RetryAfter: time.Hour}, false, false},
		// The daily limit without time_zone: until the next UTC midnight.
		{"daily_limit", nil, ada, want{Outcome: destinations.Retryable, Status: 429, Reason: "daily limit"}, true, false},
		// 03:05 UTC is 22:05 in New York the day before.
		{"daily_limit_time_zone", map[string]any{"time_zone": "America/New_York"}, ada,
			want{Outcome: destinations.Retryable, Status: 429, Reason: "daily limit", RetryAfter: time.Hour + 55*time.Minute}, true, false},
	}
	for _, c := range cases {
		t.Run(c.tape, func(t *testing.T) {
			got := setup(t, c.tape, c.settings).Send(c.events(t)...)
			wants := make([]want, len(got))
			for i := range wants {
				wants[i] = c.want
			}
			destinationstest.Check(t, got, wants...)
			for i, g := range got {
				if g.Quota != c.quota || g.Split != c.split {
					t.Errorf("event %d: quota %v, split %v; want %v, %v", i, g.Quota, g.Split, c.quota, c.split)
				}
			}
		})
	}
}

func TestEventProperties(t *testing.T) {
	mapping := map[string]string{"plan": "plan_tier", "Plan": "plan_tier", "items": "items"}
	props := map[string]any{"plan": "pro", "Plan": "max", "items": []any{"a"}, "referrer": "x", "none": nil}
	got, dropped := eventProperties(props, mapping)
	want := map[string]any{"plan_tier": "max", "items": `["a"]`}
	if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(dropped) != "[none plan referrer]" {
		t.Errorf("got %v, dropped %v", got, dropped)
	}
	many := map[string]any{}
	identity := map[string]string{}
	for i := range MaxEventProperties + 2 {
		k := fmt.Sprintf("p%02d", i)
		many[k], identity[k] = i, k
	}
	got, dropped = eventProperties(many, identity)
	if len(got) != MaxEventProperties || fmt.Sprint(dropped) != "[p50 p51]" {
		t.Errorf("%d properties, dropped %v", len(got), dropped)
	}
}

func newDest(t testing.TB) destinations.Destination {
	s := map[string]any{"access_token": "tok"}
	maps.Copy(s, settings)
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: s})
	return d
}

func TestClassify(t *testing.T) {
	d := newDest(t)
	p, _ := d.Transform(context.Background(), []event.Event{identify(t, "m-1", "a@example.com"), identify(t, "m-2", "b@example.com")})
	req := p.Requests[0]
	cases := []struct {
		name   string
		code   int
		header http.Header
		body   string
		want   destinations.Outcome
		reason string
		after  time.Duration
	}{
		{"retry-after wins", 429, http.Header{"Retry-After": {"4"}}, `{"policyName":"TEN_SECONDLY_ROLLING"}`, destinations.Retryable, "429", 4 * time.Second},
		{"locked with Retry-After", 423, http.Header{"Retry-After": {"5"}}, `{"message":"locked"}`, destinations.Retryable, "2 s", 5 * time.Second},
		{"migration without Retry-After", 477, nil, ``, destinations.Retryable, "migrated", migrationWait},
		{"conflict", 409, nil, `{"status":"error","message":"Contact already exists","category":"CONFLICT"}`, destinations.Rejected, "conflict: Contact already exists", 0},
		{"400 not JSON", 400, nil, `<html>`, destinations.Retryable, "HTTP 400", 0},
		{"200 not JSON", 200, nil, `<html>`, destinations.Retryable, "not a batch answer", 0},
		{"207 error naming no one", 207, nil, `{"status":"COMPLETE","errors":[{"message":"boom"}]}`, destinations.Retryable, "name no contact: boom", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := c.header
			if h == nil {
				h = http.Header{}
			}
			for i, r := range d.Classify(req, &destinations.Response{StatusCode: c.code, Header: h, Body: []byte(c.body), ReceivedAt: now}) {
				if r.Outcome != c.want || !strings.Contains(r.Reason, c.reason) || r.RetryAfter != c.after {
					t.Errorf("event %d: %+v", i, r)
				}
			}
		})
	}
}

func TestBatches(t *testing.T) {
	d := newDest(t)
	var evs []event.Event
	for i := 0; i < MaxBatchInputs+1; i++ {
		evs = append(evs, identify(t, fmt.Sprint("m-", i), fmt.Sprintf("u%d@example.com", i)))
	}
	p := destinationstest.Transform(t, d, evs...)
	if len(p.Requests) != 2 || len(p.Requests[0].Events) != MaxBatchInputs || len(p.Requests[1].Events) != 1 {
		t.Fatalf("got %d requests", len(p.Requests))
	}
}

func TestWithoutRequest(t *testing.T) {
	d := newDest(t)
	cases := []struct {
		name    string
		e       event.Event
		outcome destinations.Outcome
		reason  string
	}{
		{"identify without email", destinationstest.Event(t, `{"type":"identify","userId":"u","messageId":"m","traits":{"name":"x"}}`), destinations.Rejected, "no email"},
		{"unmapped event", destinationstest.Event(t, `{"type":"track","event":"Other","userId":"u","messageId":"m"}`), destinations.Unsupported, "no HubSpot custom event in the `events` setting"},
		{"track without email", destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"u","messageId":"m"}`), destinations.Rejected, "no email"},
		{"page", destinationstest.Event(t, `{"type":"page","userId":"u","messageId":"m"}`), destinations.Unsupported, "not page"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, c.e), c.outcome, c.reason)
		})
	}
}

func TestEventUUID(t *testing.T) {
	if got := EventUUID("123E4567-E89B-12D3-A456-426614174000"); got != "123e4567-e89b-12d3-a456-426614174000" {
		t.Errorf("UUID messageId: %s", got)
	}
	a := EventUUID("m-t1")
	if a != EventUUID("m-t1") || !isUUID(a) || a[14] != '5' || EventUUID("m-t2") == a {
		t.Errorf("EventUUID(m-t1) = %s", a)
	}
}

func TestSettings(t *testing.T) {
	cases := []struct {
		settings map[string]any
		err      string
	}{
		{map[string]any{}, "access_token: required"},
		{map[string]any{"access_token": "Bearer x"}, "without"},
		{map[string]any{"access_token": "x", "events": map[string]any{"Signed Up": "signed_up"}}, "events: \"Signed Up\" maps to \"signed_up\""},
		{map[string]any{"access_token": "x", "api_url": "api.hubapi.com"}, "api_url: expected"},
		{map[string]any{"access_token": "x", "event_properties": map[string]any{"plan": "plan-tier"}}, "event_properties: \"plan\" maps to \"plan-tier\""},
		{map[string]any{"access_token": "x", "time_zone": "Mars/Olympus"}, "time_zone: expected an IANA time zone name"},
	}
	for _, c := range cases {
		destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
	}
}

// TestRefusedAlone checks that a 400 naming no input rejects an input
// alone, which a split cannot narrow further, with HubSpot's message.
func TestRefusedAlone(t *testing.T) {
	d := newDest(t)
	for _, e := range []event.Event{identify(t, "m-1", "a@example.com"), signedUp(t)} {
		req := destinationstest.Transform(t, d, e).Requests[0]
		body := `{"status":"error","message":"Property values were not valid","errors":[{"message":"bad","in":"email"}],"category":"VALIDATION_ERROR"}`
		r := d.Classify(req, &destinations.Response{StatusCode: 400, Header: http.Header{}, Body: []byte(body), ReceivedAt: now})[0]
		if r.Outcome != destinations.Rejected || r.Split || !strings.Contains(r.Reason, "HubSpot refused the ") || !strings.Contains(r.Reason, "Property values were not valid") {
			t.Errorf("%s: %+v", req.URL, r)
		}
	}
}

// The warnings of a request never classified (a transport error) go with
// the request.
func TestWarningsForgotten(t *testing.T) {
	d := newDest(t).(*destination)
	if p, err := d.Transform(context.Background(), []event.Event{signedUp(t)}); err != nil || len(p.Requests) != 1 {
		t.Fatalf("plan %+v, %v", p, err)
	}
	d.mu.Lock()
	n := len(d.warnings)
	d.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d requests with warnings kept, want 1", n)
	}
	for range 100 {
		runtime.GC()
		time.Sleep(time.Millisecond)
		d.mu.Lock()
		n = len(d.warnings)
		d.mu.Unlock()
		if n == 0 {
			return
		}
	}
	t.Fatalf("%d requests with warnings kept after the request was collected, want 0", n)
}
