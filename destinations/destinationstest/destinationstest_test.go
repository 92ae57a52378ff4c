package destinationstest

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

func TestEvent(t *testing.T) {
	e := Event(t, `{"type":"identify","messageId":"m-7","userId":"u1"}`)
	if e.Type != event.Identify || e.MessageID != "m-7" || e.Source != "web" || string(e.Payload) != `{"type":"identify","messageId":"m-7","userId":"u1"}` {
		t.Errorf("got %+v", e)
	}
}

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	fatal, errors []string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = append(r.fatal, fmt.Sprintf(format, args...))
}
func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func TestCheck(t *testing.T) {
	got := []destinations.SendResult{
		{Result: destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}},
		{Result: destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, Reason: "HTTP 429 Too Many Requests: slow down", RetryAfter: 30 * time.Second}},
	}
	marked := []destinations.SendResult{
		{Result: destinations.Result{Outcome: destinations.Retryable, StatusCode: 403, Reason: "daily limit", Quota: true}},
		{Result: destinations.Result{Outcome: destinations.Retryable, StatusCode: 400, Reason: "bad batch", Split: true}},
		{Result: destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, Reason: "user throttled", RetryAfter: time.Second, Hold: "u1"}},
	}
	quota := Want{Outcome: destinations.Retryable, Status: 403, Reason: "daily limit", Quota: true}
	split := Want{Outcome: destinations.Retryable, Status: 400, Reason: "bad batch", Split: true}
	hold := Want{Outcome: destinations.Retryable, Status: 429, Reason: "user throttled", RetryAfter: time.Second, Hold: "u1"}
	delivered := Want{Outcome: destinations.Delivered, Status: 200}
	limited := Want{Outcome: destinations.Retryable, Status: 429, Reason: "slow down", RetryAfter: 30 * time.Second}
	cases := []struct {
		name           string
		got            []destinations.SendResult
		ignoreStatus   bool
		wants          []Want
		fatals, errors int
	}{
		{name: "match", wants: []Want{delivered, limited}},
		{name: "reason is a substring", wants: []Want{delivered, {Outcome: destinations.Retryable, Status: 429, RetryAfter: 30 * time.Second}}},
		{name: "count", wants: []Want{delivered}, fatals: 1},
		{name: "outcome", wants: []Want{{Outcome: destinations.Rejected, Status: 200}, limited}, errors: 1},
		{name: "status", wants: []Want{delivered, {Outcome: destinations.Retryable, Status: 503, Reason: "slow down", RetryAfter: 30 * time.Second}}, errors: 1},
		{name: "status ignored", ignoreStatus: true, wants: []Want{{Outcome: destinations.Delivered}, {Outcome: destinations.Retryable, Reason: "slow down", RetryAfter: 30 * time.Second}}},
		{name: "reason", wants: []Want{delivered, {Outcome: destinations.Retryable, Status: 429, Reason: "quota", RetryAfter: 30 * time.Second}}, errors: 1},
		{name: "retry after", wants: []Want{delivered, {Outcome: destinations.Retryable, Status: 429, Reason: "slow down"}}, errors: 1},
		{name: "both events", ignoreStatus: true, wants: []Want{{Outcome: destinations.Rejected}, {Outcome: destinations.Delivered}}, errors: 2},
		{name: "marks", got: marked, wants: []Want{quota, split, hold}},
		{name: "quota", got: marked, wants: []Want{{Outcome: destinations.Retryable, Status: 403, Reason: "daily limit", Hold: "u1"}, split, hold}, errors: 1},
		{name: "split", got: marked, wants: []Want{quota, {Outcome: destinations.Retryable, Status: 400, Reason: "bad batch", Quota: true}, hold}, errors: 1},
		{name: "hold", got: marked, wants: []Want{quota, split, {Outcome: destinations.Retryable, Status: 429, Reason: "user throttled", RetryAfter: time.Second, Hold: "u2"}}, errors: 1},
		{name: "marks not asserted", ignoreStatus: true, got: marked, wants: []Want{{Outcome: destinations.Retryable}, {Outcome: destinations.Retryable}, {Outcome: destinations.Retryable, RetryAfter: time.Second}}},
		{name: "one mark asserts all", got: marked, wants: []Want{{Outcome: destinations.Retryable, Status: 403, Reason: "daily limit", Quota: true, Split: true}, {Outcome: destinations.Retryable, Status: 400, Split: true, Hold: "u1"}, hold}, errors: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{TB: t}
			results := got
			if c.got != nil {
				results = c.got
			}
			if c.ignoreStatus {
				CheckIgnoringStatus(r, results, c.wants...)
			} else {
				Check(r, results, c.wants...)
			}
			if len(r.fatal) != c.fatals || len(r.errors) != c.errors {
				t.Errorf("fatal %q, errors %q; want %d and %d", r.fatal, r.errors, c.fatals, c.errors)
			}
		})
	}
}

// poster posts each event's payload to url, and classifies by status.
type poster struct{ url string }

func (p poster) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var plan destinations.Plan
	for i, e := range events {
		plan.Requests = append(plan.Requests, &destinations.Request{
			Method: http.MethodPost,
			URL:    p.url,
			Header: http.Header{"Content-Type": {"application/json"}},
			Body:   e.Payload,
			Events: []int{i},
		})
	}
	return plan, nil
}

func (p poster) Classify(_ *destinations.Request, resp *destinations.Response) []destinations.Result {
	return []destinations.Result{destinations.ClassifyStatus(resp, resp.ReceivedAt)}
}

var posterIntegration = &destinations.Integration{
	Type:     "poster",
	Settings: destinations.Schema{{Name: "api_url", Type: destinations.String, Default: "https://api.example.com"}},
	New: func(cfg destinations.Config) (destinations.Destination, error) {
		return poster{url: cfg.Settings["api_url"].(string) + "/v1/events"}, nil
	},
}

// TestNew sends through a destination built by New: the settings' default
// filled in, the request through the tape, the Retry-After date measured
// from Now.
func TestNew(t *testing.T) {
	b := New(t, Config{
		Integration: posterIntegration,
		Tape:        tape.New(t, "rate_limited"),
		Now:         time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC),
	})
	got := b.Send(Event(t, `{"type": "track", "event": "Signed Up", "messageId": "m-1"}`))
	Check(t, got, Want{Outcome: destinations.Retryable, Status: 429, Reason: "slow down", RetryAfter: 30 * time.Second})
	if b.Sender.Name != "poster" {
		t.Errorf("sender named %q, want the integration's type", b.Sender.Name)
	}
}
