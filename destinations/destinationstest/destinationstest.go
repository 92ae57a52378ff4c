// Package destinationstest is the harness of integration tests: events
// built from JSON payloads as ingest would, a destination built from
// settings that sends through a tape with a fixed clock, and the expected
// outcome of each event with its check. Import it from _test.go files
// only.
//
// A test reads:
//
//	func setup(t *testing.T, name string) *destinationstest.Bundle {
//		t.Helper()
//		tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
//		return destinationstest.New(t, destinationstest.Config{
//			Integration: Integration,
//			Tape:        tp,
//			Settings:    map[string]any{"api_key": tp.Secret("ACME_API_KEY")},
//			Now:         now,
//		})
//	}
//
//	func TestTrack(t *testing.T) {
//		b := setup(t, "track")
//		got := b.Send(destinationstest.Event(t, `{"type":"track","event":"Signed Up","userId":"u1","messageId":"m-1"}`))
//		destinationstest.Check(t, got, destinationstest.Want{Outcome: destinations.Delivered, Status: 200})
//	}
package destinationstest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// Event builds a stored event from its JSON payload, as ingest would: Type
// and MessageID are read from the payload's "type" and "messageId", Source
// is "web". A payload that is not a JSON object fails t.
func Event(t testing.TB, payload string) event.Event {
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

// Config is what New builds a test's destination from.
type Config struct {
	// Integration is the integration under test. Its Settings validate
	// Settings, and its New builds the destination unless New is set.
	// Required.
	Integration *destinations.Integration
	// New, when set, builds the destination in place of Integration.New:
	// for an integration whose constructor also takes the test's clock.
	New func(destinations.Config) (destinations.Destination, error)
	// Tape carries every request: the destination's own (token endpoints,
	// lookups) through destinations.Config.Client, and the Sender's.
	// Required.
	Tape *tape.Tape
	// Settings are the destination's settings as a user would write them;
	// they are validated against Integration.Settings, defaults filled in.
	Settings map[string]any
	// Now is the Sender's clock: Response.ReceivedAt, from which an
	// HTTP-date Retry-After or a rate-limit reset time is measured.
	Now time.Time
}

// Bundle is a destination built for a test, with the Sender that sends
// events to it through the tape.
type Bundle struct {
	Destination destinations.Destination
	Sender      *destinations.Sender
}

// New validates cfg.Settings against the integration's schema, builds the
// destination with the tape's client, and returns it with a Sender
// through the tape whose clock stands still at cfg.Now. The configured
// destination is named after the integration's type. A setting the schema
// or the constructor refuses fails t.
func New(t testing.TB, cfg Config) *Bundle {
	t.Helper()
	d := build(t, cfg, cfg.Tape.Client())
	name := cfg.Integration.Type
	now := cfg.Now
	return &Bundle{
		Destination: d,
		Sender: &destinations.Sender{
			Client: cfg.Tape.Client(),
			Name:   name,
			Now:    func() time.Time { return now },
		},
	}
}

// Send sends events to the destination and returns one result per event,
// in order.
func (b *Bundle) Send(events ...event.Event) []destinations.SendResult {
	return b.Sender.Send(context.Background(), b.Destination, events)
}

// Want is the expected outcome of one event.
type Want struct {
	Outcome destinations.Outcome
	// Status is the HTTP status the result carries: 0 when the outcome was
	// decided without an answer. CheckIgnoringStatus does not compare it.
	Status int
	// Reason is a substring of the result's reason; "" matches any.
	Reason     string
	RetryAfter time.Duration
	// Quota, Split and Hold are the result's fields of the same names
	// (destinations.Result): a quota spent until it resets, a batch to
	// send again in halves, the key of the one user the API throttles.
	// They are compared, all three, when the Want sets any of them; a
	// Want that sets none accepts any (the tables written before these
	// fields existed do not assert them).
	Quota bool
	Split bool
	Hold  string
}

// Check compares got with wants, one Want per event in order: the
// outcome, the status, the reason (a substring), the retry-after, and
// the Quota, Split and Hold marks when the Want sets one. A
// different number of results fails t at once; each mismatch is an error
// naming the event.
func Check(t testing.TB, got []destinations.SendResult, wants ...Want) {
	t.Helper()
	check(t, got, wants, true)
}

// CheckIgnoringStatus is Check without the status: for a test whose wants
// leave Status out and which checks the statuses that matter itself.
func CheckIgnoringStatus(t testing.TB, got []destinations.SendResult, wants ...Want) {
	t.Helper()
	check(t, got, wants, false)
}

func check(t testing.TB, got []destinations.SendResult, wants []Want, status bool) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("%d results, want %d", len(got), len(wants))
		return
	}
	for i, w := range wants {
		g := got[i].Result
		if g.Outcome != w.Outcome || (status && g.StatusCode != w.Status) ||
			!strings.Contains(g.Reason, w.Reason) || g.RetryAfter != w.RetryAfter ||
			(w.marked() && (g.Quota != w.Quota || g.Split != w.Split || g.Hold != w.Hold)) {
			if status {
				t.Errorf("event %d: got %v %d %q%s; want %v %d containing %q%s",
					i, g.Outcome, g.StatusCode, g.Reason, marks(g.RetryAfter, g.Quota, g.Split, g.Hold),
					w.Outcome, w.Status, w.Reason, marks(w.RetryAfter, w.Quota, w.Split, w.Hold))
			} else {
				t.Errorf("event %d: got %v %q%s; want %v containing %q%s",
					i, g.Outcome, g.Reason, marks(g.RetryAfter, g.Quota, g.Split, g.Hold),
					w.Outcome, w.Reason, marks(w.RetryAfter, w.Quota, w.Split, w.Hold))
			}
		}
	}
}

// marked says whether w asserts the Quota, Split and Hold marks.
func (w Want) marked() bool { return w.Quota || w.Split || w.Hold != "" }

// marks describes a result's retry-after and its Quota, Split and Hold
// marks, for a mismatch's message.
func marks(after time.Duration, quota, split bool, hold string) string {
	s := fmt.Sprintf(" (retry after %v", after)
	if quota {
		s += ", quota"
	}
	if split {
		s += ", split"
	}
	if hold != "" {
		s += fmt.Sprintf(", hold %q", hold)
	}
	return s + ")"
}

// Build validates cfg.Settings and builds the destination without a tape
// (cfg.Tape and cfg.Now are not used): for tests of Transform alone,
// which make no request. A setting the schema or the constructor refuses
// fails t.
func Build(t testing.TB, cfg Config) destinations.Destination {
	t.Helper()
	return build(t, cfg, nil)
}

// build validates cfg.Settings and builds the destination with client.
func build(t testing.TB, cfg Config, client *http.Client) destinations.Destination {
	t.Helper()
	valid, err := cfg.Integration.Settings.Validate(cfg.Settings)
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
	newDest := cfg.New
	if newDest == nil {
		newDest = cfg.Integration.New
	}
	d, err := newDest(destinations.Config{Name: cfg.Integration.Type, Settings: valid, Client: client})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

// CheckSettingsError checks that settings are refused, by the schema of
// integ or by its New, with an error containing want.
func CheckSettingsError(t testing.TB, integ *destinations.Integration, settings map[string]any, want string) {
	t.Helper()
	valid, err := integ.Settings.Validate(settings)
	if err == nil {
		_, err = integ.New(destinations.Config{Settings: valid})
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%v: got %v, want %q", settings, err, want)
	}
}

// Transform runs d.Transform on events. An error fails t.
func Transform(t testing.TB, d destinations.Destination, events ...event.Event) destinations.Plan {
	t.Helper()
	p, err := d.Transform(context.Background(), events)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// CheckDecided checks that p, Transform's plan for one event, makes no
// request and gives the event outcome with a reason containing reason.
func CheckDecided(t testing.TB, p destinations.Plan, outcome destinations.Outcome, reason string) {
	t.Helper()
	if len(p.Requests) != 0 || p.Results[0].Outcome != outcome || !strings.Contains(p.Results[0].Reason, reason) {
		t.Errorf("got %d requests, %+v; want none and %v containing %q", len(p.Requests), p.Results[0], outcome, reason)
	}
}

// CheckBatches checks that p's requests carry, in order, sizes events
// each, and that none has a body over maxBytes (0: no bound).
func CheckBatches(t testing.TB, p destinations.Plan, maxBytes int, sizes ...int) {
	t.Helper()
	got := make([]int, len(p.Requests))
	for i, r := range p.Requests {
		got[i] = len(r.Events)
		if maxBytes > 0 && len(r.Body) > maxBytes {
			t.Errorf("request %d: %d bytes, over %d", i, len(r.Body), maxBytes)
		}
	}
	if !slices.Equal(got, sizes) {
		t.Errorf("requests of %v events, want %v", got, sizes)
	}
}

// TapeCase is one scenario of an integration's tape tests: the tape, the
// settings added to setup's, the events sent, and the outcome wanted for
// each.
type TapeCase struct {
	Tape     string
	Settings map[string]any
	Events   func(t *testing.T) []event.Event
	Want     []Want
}

// RunTapes runs each case as a subtest named after its tape: setup builds
// the destination on the tape, the events are sent, and Check compares
// the outcomes.
func RunTapes(t *testing.T, setup func(t *testing.T, tape string, settings map[string]any) *Bundle, cases []TapeCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Tape, func(t *testing.T) {
			b := setup(t, c.Tape, c.Settings)
			Check(t, b.Send(c.Events(t)...), c.Want...)
		})
	}
}
