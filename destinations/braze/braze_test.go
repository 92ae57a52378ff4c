package braze

import (
	"context"
	"fmt"
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

// now is the tests' clock: Unix 1767323100.
var now = time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination whose key and
// instance come from the tape (BRAZE_API_KEY and BRAZE_REST_ENDPOINT when
// recording).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
	settings := map[string]any{
		"rest_endpoint": tp.Var("BRAZE_REST_ENDPOINT", "rest.iad-01.braze.com"),
		"api_key":       tp.Secret("BRAZE_API_KEY"),
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

const ts = `"timestamp":"2026-01-02T03:04:05.678Z"`

func track(t testing.TB, user, name string) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"`+name+`","userId":"`+user+`","messageId":"m-`+name+`",`+ts+`,"properties":{"plan":"pro"}}`)
}

func identify(t testing.TB, user string) event.Event {
	return destinationstest.Event(t, `{"type":"identify","userId":"`+user+`","messageId":"m-id-`+user+`",`+ts+`,"traits":{"email":"`+user+`@example.com"}}`)
}

func identifyAnon(t testing.TB, user, anon string) event.Event {
	return destinationstest.Event(t, `{"type":"identify","userId":"`+user+`","anonymousId":"`+anon+`","messageId":"m-id-`+user+`",`+ts+`,"traits":{"email":"`+user+`@example.com"}}`)
}

func order(t testing.TB, id string) event.Event {
	return destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u1","messageId":"m-`+id+`",`+ts+`,
		"properties":{"order_id":"`+id+`","currency":"eur","products":[
			{"product_id":"sku-1","name":"Socks","price":4.99,"quantity":2},
			{"sku":"sku-2","price":"19.90"}]}}`)
}

// TestTapes runs each event type's request and each documented answer.
func TestTapes(t *testing.T) {
	delivered := want{Outcome: destinations.Delivered, Status: 201}
	one := func(t *testing.T) []event.Event { return []event.Event{track(t, "u1", "Signed Up")} }
	cases := []destinationstest.TapeCase{
		{
			// Every kind of object in one request: attributes, an event,
			// an anonymous event (user alias) and an order's purchases.
			Tape:     "track",
			Settings: map[string]any{"app_id": "app-1"},
			Events: func(t *testing.T) []event.Event {
				return []event.Event{
					order(t, "o-1"),
					destinationstest.Event(t, `{"type":"identify","userId":"u1","messageId":"m-id-1",`+ts+`,
						"traits":{"email":"ada@example.com","name":"Ada Lovelace","gender":"female","birthday":"1815-12-10",
						"phone":"+44 20 7946 0000","address":{"city":"London","country":"GB"},"plan":"pro","logins":3}}`),
					track(t, "u1", "Signed Up"),
					destinationstest.Event(t, `{"type":"track","event":"Viewed Product","anonymousId":"a1","messageId":"m-anon",`+ts+`}`),
				}
			},
			Want: []want{delivered, delivered, delivered, delivered},
		},
		{
			// The 201 that means failure for some: errors name objects
			// by array and index, the others were processed.
			Tape: "partial",
			Events: func(t *testing.T) []event.Event {
				return []event.Event{track(t, "u1", "Signed Up"), track(t, "u2", "$bad"), identify(t, "u3"), order(t, "o-2")}
			},
			Want: []want{
				delivered,
				{Outcome: destinations.Rejected, Status: 201, Reason: "Braze refused the event object: Event name '$bad' is invalid"},
				delivered,
				{Outcome: destinations.Rejected, Status: 201, Reason: "Braze refused the purchase object: 'currency' is invalid"},
			},
		},
		{
			Tape:   "unauthorized",
			Events: one,
			Want:   []want{{Outcome: destinations.Rejected, Status: 401, Reason: "check api_key"}},
		},
		{
			Tape:   "bad_request",
			Events: one,
			Want:   []want{{Outcome: destinations.Rejected, Status: 400, Reason: "Braze refused the request: Valid data must be provided"}},
		},
		{
			Tape:   "rate_limited",
			Events: one,
			Want:   []want{{Outcome: destinations.Retryable, Status: 429, Reason: "HTTP 429 Too Many Requests", RetryAfter: 3 * time.Second}},
		},
		{
			Tape:   "server_error",
			Events: one,
			Want:   []want{{Outcome: destinations.Retryable, Status: 500, Reason: "HTTP 500 Internal Server Error"}},
		},
	}
	destinationstest.RunTapes(t, setup, cases)
}

func newDest(t testing.TB) destinations.Destination {
	return destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{"rest_endpoint": "rest.iad-01.braze.com", "api_key": "k"}})
}

// split is a result whose batch the engine sends again in halves.
func checkSplit(t *testing.T, got []destinations.SendResult, want ...bool) {
	t.Helper()
	for i, w := range want {
		if got[i].Split != w {
			t.Errorf("event %d: split %v, want %v (%+v)", i, got[i].Split, w, got[i].Result)
		}
	}
}

// TestPartialFailures covers the answers that resend only what Braze did
// not take.
func TestPartialFailures(t *testing.T) {
	t.Run("error naming no object", func(t *testing.T) {
		// attributes_processed accounts for the attribute; which event
		// failed is unknown: the two are split.
		got := setup(t, "partial_unplaced", nil).Send(track(t, "u1", "Signed Up"), track(t, "u2", "Upgraded"), identify(t, "u3"))
		doubt := want{Outcome: destinations.Retryable, Status: 201, Reason: "sent again in halves"}
		destinationstest.Check(t, got, doubt, doubt, want{Outcome: destinations.Delivered, Status: 201})
		checkSplit(t, got, true, true, false)
	})
	t.Run("fatal error naming no object", func(t *testing.T) {
		got := setup(t, "bad_request_batch", nil).Send(track(t, "u1", "Signed Up"), track(t, "u2", "Upgraded"))
		split := want{Outcome: destinations.Retryable, Status: 400, Reason: "without naming an object (Bad Request)"}
		destinationstest.Check(t, got, split, split)
		checkSplit(t, got, true, true)
	})
	t.Run("fatal error alone", func(t *testing.T) {
		got := setup(t, "bad_request", nil).Send(track(t, "u1", "Signed Up"))
		destinationstest.Check(t, got, want{Outcome: destinations.Rejected, Status: 400, Reason: "Braze refused the request: Valid data must be provided"})
		checkSplit(t, got, false)
	})
}

// TestQuantity checks that a product bought more than 100 times becomes
// several purchase objects.
func TestQuantity(t *testing.T) {
	got := setup(t, "quantity", nil).Send(destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u1","messageId":"m-o-3",`+ts+`,
		"properties":{"order_id":"o-3","currency":"eur","products":[{"product_id":"sku-1","price":4.99,"quantity":250}]}}`))
	destinationstest.Check(t, got, want{Outcome: destinations.Delivered, Status: 201})
}

// TestIdentifyAliases checks /users/identify before the attributes of an
// identify call with both ids.
func TestIdentifyAliases(t *testing.T) {
	t.Run("merged", func(t *testing.T) {
		got := setup(t, "identify_alias", nil).Send(identifyAnon(t, "u1", "a-1"))
		destinationstest.Check(t, got, want{Outcome: destinations.Delivered, Status: 201})
	})
	t.Run("forbidden", func(t *testing.T) {
		got := setup(t, "identify_alias_forbidden", nil).Send(identifyAnon(t, "u1", "a-1"), track(t, "u1", "Signed Up"))
		destinationstest.Check(t, got,
			want{Outcome: destinations.Rejected, Status: 403, Reason: "users.identify permission"},
			want{Outcome: destinations.Delivered, Status: 201})
	})
	t.Run("off", func(t *testing.T) {
		// identify_aliases false: no /users/identify; the tape's attributes
		// request is the one of "merged".
		d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{
			"rest_endpoint": "rest.iad-01.braze.com", "api_key": "k", "identify_aliases": false}})
		p := destinationstest.Transform(t, d, identifyAnon(t, "u1", "a-1"))
		if len(p.Requests) != 1 || !strings.HasSuffix(p.Requests[0].URL, "/users/track") {
			t.Errorf("requests %+v", p.Requests)
		}
	})
	if Integration.Deduplicates {
		t.Error("Braze records a repeated event again: Deduplicates must be false")
	}
}

// TestObjectsPerRequest checks the objects_per_request setting: the
// engine's batches and the cut.
func TestObjectsPerRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{
		"rest_endpoint": "rest.iad-01.braze.com", "api_key": "k", "objects_per_request": SmallObjects}})
	if got := d.(destinations.Batcher).BatchLimits(); got.MaxEvents != SmallObjects || got.MaxBytes != MaxBytes {
		t.Errorf("BatchLimits %+v", got)
	}
	var evs []event.Event
	for i := 0; i < SmallObjects+1; i++ {
		evs = append(evs, identify(t, fmt.Sprint("u", i)))
	}
	destinationstest.CheckBatches(t, destinationstest.Transform(t, d, evs...), MaxBytes, SmallObjects, 1)
	if got := newDest(t).(destinations.Batcher).BatchLimits().MaxEvents; got != MaxObjects {
		t.Errorf("default objects_per_request %d, want %d", got, MaxObjects)
	}
	for _, n := range []int{0, 76} {
		destinationstest.CheckSettingsError(t, Integration, map[string]any{"rest_endpoint": "x", "api_key": "k", "objects_per_request": n}, "objects_per_request: expected 1 to 75")
	}
}

// TestBatches checks the cut: 75 objects in all, one order per request,
// and Events ordered so that Classify can count.
func TestBatches(t *testing.T) {
	d := newDest(t)
	var evs []event.Event
	for i := 0; i < 74; i++ {
		evs = append(evs, identify(t, fmt.Sprint("u", i)))
	}
	// The order's two purchases would make 76: it starts a new request,
	// and the second order another.
	evs = append(evs, order(t, "o-1"), track(t, "u1", "Signed Up"), order(t, "o-2"))
	p := destinationstest.Transform(t, d, evs...)
	if len(p.Results) != 0 || len(p.Requests) != 3 {
		t.Fatalf("%d requests, results %v", len(p.Requests), p.Results)
	}
	if n := len(p.Requests[0].Events); n != 74 {
		t.Errorf("first request carries %d events, want 74", n)
	}
	// Events: the track call's events object before the order's purchases.
	if got := p.Requests[1].Events; len(got) != 2 || got[0] != 75 || got[1] != 74 {
		t.Errorf("second request's events %v, want [75 74]", got)
	}
	if got := p.Requests[2].Events; len(got) != 1 || got[0] != 76 {
		t.Errorf("third request's events %v, want [76]", got)
	}
}

// TestClassify covers answers no tape shows.
func TestClassify(t *testing.T) {
	d := newDest(t)
	p, err := d.Transform(context.Background(), []event.Event{track(t, "u1", "A"), track(t, "u2", "B")})
	if err != nil || len(p.Requests) != 1 {
		t.Fatalf("transform: %v %d", err, len(p.Requests))
	}
	req := p.Requests[0]
	cases := []struct {
		name   string
		code   int
		header http.Header
		body   string
		want   []destinations.Outcome
		reason string
		after  time.Duration
	}{
		{"queued", 202, nil, `{"message":"queued"}`, []destinations.Outcome{destinations.Delivered, destinations.Delivered}, "", 0},
		{"fatal in a 2xx", 201, nil, `{"message":"Invalid request"}`, []destinations.Outcome{destinations.Rejected, destinations.Rejected}, "fatal error: Invalid request", 0},
		{"not JSON", 201, nil, `<html>`, []destinations.Outcome{destinations.Retryable, destinations.Retryable}, "not its JSON answer", 0},
		{"error without index", 201, nil, `{"message":"success","errors":[{"type":"something"}]}`, []destinations.Outcome{destinations.Retryable, destinations.Retryable}, "name no object", 0},
		{"index out of range", 201, nil, `{"message":"success","errors":[{"type":"x","input_array":"events","index":5}]}`, []destinations.Outcome{destinations.Retryable, destinations.Retryable}, "name no object", 0},
		{"forbidden", 403, nil, `{"message":"Access Denied"}`, []destinations.Outcome{destinations.Rejected, destinations.Rejected}, "users.track permission", 0},
		{"retry after header", 429, http.Header{"X-Ratelimit-Retry-After": {"7"}}, `{"message":"rate limited"}`, []destinations.Outcome{destinations.Retryable, destinations.Retryable}, "429", 7 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := c.header
			if h == nil {
				h = http.Header{}
			}
			got := d.Classify(req, &destinations.Response{StatusCode: c.code, Header: h, Body: []byte(c.body), ReceivedAt: now})
			for i, r := range got {
				if r.Outcome != c.want[i] || !strings.Contains(r.Reason, c.reason) || r.RetryAfter != c.after {
					t.Errorf("event %d: %+v", i, r)
				}
			}
		})
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
		{"no user", destinationstest.Event(t, `{"type":"track","event":"x","messageId":"m",`+ts+`}`), destinations.Rejected, "neither userId nor anonymousId"},
		{"no name", destinationstest.Event(t, `{"type":"track","userId":"u","messageId":"m",`+ts+`}`), destinations.Rejected, "no event name"},
		{"no timestamp", destinationstest.Event(t, `{"type":"track","event":"x","userId":"u","messageId":"m"}`), destinations.Rejected, "no readable timestamp"},
		{"quantity beyond any request", destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u","messageId":"m",`+ts+`,"properties":{"products":[{"product_id":"p","price":1,"quantity":100000}]}}`), destinations.Rejected, "quantity of 100000"},
		{"quantity beyond the setting", destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u","messageId":"m",`+ts+`,"properties":{"products":[{"product_id":"p","price":1,"quantity":7450},{"product_id":"q","price":1}]}}`), destinations.Rejected, "makes 76 Braze objects"},
		{"product without price", destinationstest.Event(t, `{"type":"track","event":"Order Completed","userId":"u","messageId":"m",`+ts+`,"properties":{"products":[{"product_id":"p"}]}}`), destinations.Rejected, "product 0 of the order"},
		{"page", destinationstest.Event(t, `{"type":"page","userId":"u","messageId":"m",`+ts+`}`), destinations.Unsupported, "not page"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			destinationstest.CheckDecided(t, destinationstest.Transform(t, d, c.e), c.outcome, c.reason)
		})
	}
}

func TestSettings(t *testing.T) {
	for _, c := range []struct{ endpoint, url, err string }{
		{"rest.iad-01.braze.com", "https://rest.iad-01.braze.com/users/track", ""},
		{"https://rest.fra-01.braze.eu/", "https://rest.fra-01.braze.eu/users/track", ""},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080/users/track", ""},
		{"dashboard-01.braze.com", "", "found the dashboard's address"},
		{"ftp://x", "", "rest_endpoint: expected"},
	} {
		valid, err := Integration.Settings.Validate(map[string]any{"rest_endpoint": c.endpoint, "api_key": "k"})
		if err != nil {
			t.Fatal(err)
		}
		d, err := New(destinations.Config{Settings: valid})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v, want %q", c.endpoint, err, c.err)
			}
			continue
		}
		if err != nil || d.(*destination).url != c.url {
			t.Errorf("%s: got %v", c.endpoint, err)
		}
	}
	if _, err := Integration.Settings.Validate(map[string]any{"rest_endpoint": "x"}); err == nil || !strings.Contains(err.Error(), "api_key: required") {
		t.Errorf("missing api_key: %v", err)
	}
}
