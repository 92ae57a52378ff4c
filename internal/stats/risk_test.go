package stats

import (
	"testing"
	"time"

	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// Retries that risk duplicates are counted in the overview, and survive a
// reopen; a quota answer, which burns no attempt, does not count a job
// into the retry set twice.
func TestDuplicateRiskAndQuotaAnswers(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	s := openDir(t, dir, at)
	ingestTracks(s, at, "a", "b")
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	observe := func(id string, attempts int, end delivery.End, r delivery.Report) {
		r.Queue, r.End, r.At = q, end, at
		r.Job = &jobstore.Job{Queue: q, Event: event.Event{Source: "web", MessageID: id, ReceivedAt: at}, Attempts: attempts}
		s.Observe(r)
	}
	observe("a", 1, delivery.EndRetrying, delivery.Report{DuplicateRisk: true})
	observe("a", 2, delivery.EndRetrying, delivery.Report{DuplicateRisk: true})
	observe("a", 3, delivery.EndDelivered, delivery.Report{})
	observe("b", 1, delivery.EndRetrying, delivery.Report{})
	observe("b", 1, delivery.EndRetrying, delivery.Report{Unattempted: true}) // a quota answer
	if got := s.PendingRetry("hook")["web"]; got != 1 {
		t.Fatalf("pending retry %d after a quota answer to a job in the retry set, want 1", got)
	}
	s = reopen(t, s, dir, at)
	defer s.Close()
	o, err := s.Overview(Filter{From: at.Add(-time.Hour), To: at.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if o.RetriedDuplicateRisk != 2 || o.DeliveredRetry != 1 {
		t.Fatalf("after a reopen: %d retried with a risk of duplicates, %d delivered after retries; want 2 and 1", o.RetriedDuplicateRisk, o.DeliveredRetry)
	}
}
