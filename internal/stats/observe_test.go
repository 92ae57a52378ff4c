package stats

import (
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/router"
)

// TestObserveIssues: which attempts make an issue group. A delivered
// result with a reason is a warning, grouped with outcome "delivered",
// and the event still counts as delivered.
func TestObserveIssues(t *testing.T) {
	warning := "delivered without properties not in event_properties: referrer_code"
	cases := []struct {
		name      string
		end       delivery.End
		result    destinations.Result
		outcome   string // the issue group's; "" for none
		delivered int64
		failed    int64
	}{
		{"rejected", delivery.EndFailed,
			destinations.Result{Outcome: destinations.Rejected, StatusCode: 400, Reason: "HTTP 400: bad"}, "rejected", 0, 1},
		{"retryable", delivery.EndRetrying,
			destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503"}, "retryable", 0, 0},
		{"delivered", delivery.EndDelivered,
			destinations.Result{Outcome: destinations.Delivered, StatusCode: 204}, "", 1, 0},
		{"delivered with a warning", delivery.EndDelivered,
			destinations.Result{Outcome: destinations.Delivered, StatusCode: 204, Reason: warning}, "delivered", 1, 0},
	}
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(Options{Dir: t.TempDir(), Now: func() time.Time { return at }})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			q := jobstore.Queue{Source: "web", Destination: "hubspot"}
			ev := event.Event{Source: "web", MessageID: "m1", Type: event.Track, ReceivedAt: at, Payload: []byte(`{}`)}
			s.ObserveIngest(ingest.Report{Source: "web", Status: 200,
				Accepted: []jobstore.Entry{{Event: ev, Destinations: []string{"hubspot"}}},
				Routes:   []router.Decision{{To: []string{"hubspot"}}}})
			s.Observe(delivery.Report{Queue: q, Job: &jobstore.Job{Queue: q, Event: ev, Attempts: 1}, End: c.end, At: at,
				Result: destinations.SendResult{Result: c.result}})
			f := Filter{From: at.Add(-time.Hour), To: at.Add(time.Hour)}
			issues, err := s.Issues(f)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.outcome == "" && len(issues) != 0:
				t.Errorf("issues %+v, want none", issues)
			case c.outcome != "" && (len(issues) != 1 || issues[0].Outcome != c.outcome || issues[0].Count != 1 ||
				issues[0].Status != c.result.StatusCode || issues[0].Reason != Normalize(c.result.Reason) || len(issues[0].Samples) != 1):
				t.Errorf("issues %+v, want one group %q of %q", issues, c.outcome, c.result.Reason)
			}
			o, err := s.Overview(f)
			if err != nil {
				t.Fatal(err)
			}
			if o.DeliveredFirst != c.delivered || o.Failed != c.failed || o.Received != 1 {
				t.Errorf("overview: received %d, delivered %d, failed %d; want 1, %d, %d", o.Received, o.DeliveredFirst, o.Failed, c.delivered, c.failed)
			}
		})
	}
}
