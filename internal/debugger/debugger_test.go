package debugger

import (
	"fmt"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/router"
)

// A source sending more than SampleRate events a second is sampled: the
// debugger takes the most recent SampleRate of each second.
func TestSampling(t *testing.T) {
	d := New(nil)
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	send := func(at time.Time, n int, prefix string) {
		rep := ingest.Report{Source: "web", Status: 200}
		for i := range n {
			rep.Accepted = append(rep.Accepted, jobstore.Entry{Event: event.Event{
				Source: "web", MessageID: fmt.Sprintf("%s-%d", prefix, i), Type: event.Track,
				ReceivedAt: at, Payload: []byte(`{}`)}})
			rep.Routes = append(rep.Routes, router.Decision{})
		}
		d.ObserveIngest(rep)
	}
	cases := []struct {
		at        time.Time
		n         int
		prefix    string
		wantTotal int
		wantLast  string
	}{
		{at, 150, "a", 150, "a-149"},
		{at.Add(500 * time.Millisecond), 100, "b", 200, "b-99"}, // 50 of b's 100 fit in the second
		{at.Add(900 * time.Millisecond), 10, "c", 200, "b-99"},  // the second's budget is spent
		{at.Add(time.Second), 1000, "d", 400, "d-999"},          // a new second: the last 200 of d
	}
	for i, c := range cases {
		send(c.at, c.n, c.prefix)
		evs := d.Events("web")
		if len(evs) != c.wantTotal || evs[len(evs)-1].MessageID != c.wantLast {
			t.Fatalf("step %d: %d events, last %q; want %d, last %q", i, len(evs), evs[len(evs)-1].MessageID, c.wantTotal, c.wantLast)
		}
	}
	if evs := d.Events("web"); evs[200].MessageID != "d-800" {
		t.Fatalf("first kept of d is %q, want d-800 (the most recent 200)", evs[200].MessageID)
	}
	// Two more seconds take 400 more: the ring keeps the last Size, the
	// oldest dropped first.
	send(at.Add(2*time.Second), SampleRate, "e")
	send(at.Add(3*time.Second), SampleRate, "f")
	evs := d.Events("web")
	if len(evs) != Size || evs[0].MessageID != "d-900" || evs[len(evs)-1].MessageID != "f-199" {
		t.Fatalf("after 800 events: %d kept, from %q to %q; want %d, from d-900 to f-199",
			len(evs), evs[0].MessageID, evs[len(evs)-1].MessageID, Size)
	}
}

// An attempt can end before the tracking API reports its event (delivery
// starts before the fsync the API waits for): the outcome is kept and
// applied when the event arrives. An outcome for an event received long
// before is not kept: its report came long ago.
func TestOutcomeBeforeEvent(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		after    time.Duration // from receivedAt to the attempt's end
		attempts int
		kept     bool
	}{
		{"first attempt, just after", time.Millisecond, 1, true},
		{"first attempt, disk stalled", 5 * time.Second, 1, true},
		{"first attempt, a backlog draining", time.Minute, 1, false},
		{"a retry", time.Millisecond, 2, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := New(nil)
			e := jobstore.Entry{
				Event:        event.Event{Source: "web", MessageID: "m1", Type: event.Track, ReceivedAt: at, Payload: []byte(`{}`)},
				Destinations: []string{"hook"},
			}
			job := &jobstore.Job{Queue: jobstore.Queue{Source: "web", Destination: "hook"}, Event: e.Event, Attempts: c.attempts}
			d.Observe(delivery.Report{Queue: job.Queue, Job: job, End: delivery.EndDelivered, At: at.Add(c.after)})
			if n := len(d.sources["web"].early); n != map[bool]int{true: 1, false: 0}[c.kept] {
				t.Fatalf("%d outcomes kept for later, want kept=%v", n, c.kept)
			}
			d.ObserveIngest(ingest.Report{Source: "web", Status: 200, Accepted: []jobstore.Entry{e},
				Routes: []router.Decision{{To: []string{"hook"}}}})
			evs := d.Events("web")
			want := StatusPending
			if c.kept {
				want = StatusDelivered
			}
			if len(evs) != 1 || len(evs[0].Destinations) != 1 || evs[0].Destinations[0].Status != want {
				t.Fatalf("events %+v, want m1 %s at hook", evs, want)
			}
		})
	}
}

// A delivered outcome keeps its result's reason, a warning; one without
// clears the reason of the attempt before.
func TestDeliveredWarning(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	warning := "delivered without properties not in event_properties: referrer_code"
	d := New(nil)
	e := jobstore.Entry{
		Event:        event.Event{Source: "web", MessageID: "m1", Type: event.Track, ReceivedAt: at, Payload: []byte(`{}`)},
		Destinations: []string{"hubspot", "hook"},
	}
	d.ObserveIngest(ingest.Report{Source: "web", Status: 200, Accepted: []jobstore.Entry{e},
		Routes: []router.Decision{{To: []string{"hubspot", "hook"}}}})
	attempt := func(dest string, n int, end delivery.End, r destinations.Result) {
		q := jobstore.Queue{Source: "web", Destination: dest}
		d.Observe(delivery.Report{Queue: q, Job: &jobstore.Job{Queue: q, Event: e.Event, Attempts: n}, End: end,
			At: at.Add(time.Duration(n) * time.Second), Result: destinations.SendResult{Result: r}})
	}
	for _, dest := range []string{"hubspot", "hook"} {
		attempt(dest, 1, delivery.EndRetrying, destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503"})
	}
	attempt("hubspot", 2, delivery.EndDelivered, destinations.Result{Outcome: destinations.Delivered, StatusCode: 204, Reason: warning})
	attempt("hook", 2, delivery.EndDelivered, destinations.Result{Outcome: destinations.Delivered, StatusCode: 200})
	evs := d.Events("web")
	if len(evs) != 1 || len(evs[0].Destinations) != 2 {
		t.Fatalf("events %+v, want m1 at two destinations", evs)
	}
	want := map[string]string{"hubspot": warning, "hook": ""}
	for _, o := range evs[0].Destinations {
		if o.Status != StatusDelivered || o.Attempts != 2 || o.Reason != want[o.Destination] {
			t.Errorf("%s: %s after %d attempts, reason %q; want delivered after 2, reason %q",
				o.Destination, o.Status, o.Attempts, o.Reason, want[o.Destination])
		}
	}
}
