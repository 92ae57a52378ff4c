package debugger

import (
	"fmt"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/router"
)

// pair is two nodes of a cluster: a takes events in, b delivers them.
type pair struct {
	a, b *Debugger
	at   time.Time
}

func (p *pair) ingest(ids ...string) {
	rep := ingest.Report{Source: "web", Status: 200}
	for _, id := range ids {
		rep.Accepted = append(rep.Accepted, jobstore.Entry{Event: event.Event{
			Source: "web", MessageID: id, Type: event.Track, ReceivedAt: p.at, Payload: []byte(`{}`)}})
		rep.Routes = append(rep.Routes, router.Decision{To: []string{"hook", "crm"}})
	}
	p.a.ObserveIngest(rep)
}

// deliver reports an attempt on b, after seconds.
func (p *pair) deliver(id, dest string, attempts int, end delivery.End, after time.Duration) {
	q := jobstore.Queue{Source: "web", Destination: dest}
	ev := event.Event{Source: "web", MessageID: id, Type: event.Track, ReceivedAt: p.at}
	p.b.Observe(delivery.Report{Queue: q, Job: &jobstore.Job{Queue: q, Event: ev, Attempts: attempts}, End: end, At: p.at.Add(after)})
}

func (p *pair) merged() []Event {
	return MergeEvents([]NodeEvents{
		{Node: "a", Events: p.a.Events("web"), Outcomes: p.a.Outcomes("web")},
		{Node: "b", Events: p.b.Events("web"), Outcomes: p.b.Outcomes("web")},
	})
}

func statuses(ev Event) string {
	s := ""
	for _, o := range ev.Destinations {
		s += fmt.Sprintf("%s:%s/%d ", o.Destination, o.Status, o.Attempts)
	}
	return s
}

// An event taken in by one node and delivered by another shows, merged,
// the other node's outcomes, whatever the order they come in; a later
// outcome beats an earlier one, and the taking node's pending never beats
// an outcome.
func TestMergeAcrossNodes(t *testing.T) {
	cases := []struct {
		name string
		run  func(p *pair)
		want string
	}{
		{"delivered by the other node", func(p *pair) {
			p.ingest("m1")
			p.deliver("m1", "hook", 1, delivery.EndDelivered, time.Second)
		}, "hook:delivered/1 crm:pending/0 "},
		{"the outcome before the event", func(p *pair) {
			p.deliver("m1", "hook", 1, delivery.EndDelivered, time.Second)
			p.ingest("m1")
		}, "hook:delivered/1 crm:pending/0 "},
		{"a retry, then delivered", func(p *pair) {
			p.ingest("m1")
			p.deliver("m1", "hook", 1, delivery.EndRetrying, time.Second)
			p.deliver("m1", "hook", 2, delivery.EndDelivered, 3*time.Second)
			p.deliver("m1", "crm", 1, delivery.EndFailed, 2*time.Second)
		}, "hook:delivered/2 crm:failed/1 "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &pair{a: New(nil), b: New(nil), at: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
			c.run(p)
			evs := p.merged()
			if len(evs) != 1 || evs[0].MessageID != "m1" || evs[0].Node != "a" || statuses(evs[0]) != c.want {
				t.Fatalf("merged %d events; first %+v; want m1 from node a with %s", len(evs), evs, c.want)
			}

			// The same through the feeds, as the admin API's stream merges
			// them: a's updates and b's, in the order they happened.
			p = &pair{a: New(nil), b: New(nil), at: p.at}
			fa, stopA := p.a.Subscribe("web")
			defer stopA()
			fb, stopB := p.b.Subscribe("web")
			defer stopB()
			c.run(p)
			m := NewMerge(Size)
			var last Event
			for len(fa)+len(fb) > 0 {
				var u Update
				node := "a"
				select {
				case u = <-fa:
				default:
					u, node = <-fb, "b"
				}
				if out, ok := m.Add(node, u); ok {
					last = out.Event
				}
			}
			if last.MessageID != "m1" || statuses(last) != c.want {
				t.Fatalf("streamed: last update %+v, want m1 with %s", last, c.want)
			}
		})
	}
}

// The taking node's newer copy of an event keeps the outcomes other nodes
// reported; the merged view keeps the newest events received.
func TestMergeBounds(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	m := NewMerge(2)
	ev := func(id string, seq uint64, sec int, status string) Update {
		var when time.Time
		if status != StatusPending {
			when = at.Add(time.Minute)
		}
		return Update{Kind: "event", Event: Event{Seq: seq, MessageID: id, ReceivedAt: at.Add(time.Duration(sec) * time.Second),
			Destinations: []Outcome{{Destination: "hook", Status: status, At: when}}}}
	}
	m.Add("a", ev("m1", 1, 1, StatusPending))
	m.Add("b", Update{Kind: "outcome", Event: Event{MessageID: "m1", Destinations: []Outcome{{Destination: "hook", Status: StatusDelivered, At: at.Add(time.Minute)}}}})
	out, _ := m.Add("a", ev("m1", 1, 1, StatusPending)) // a's copy again, still pending there
	if out.Kind != "outcome" || out.Event.Destinations[0].Status != StatusDelivered {
		t.Fatalf("a's copy again: %+v, want the outcome b reported kept", out)
	}
	m.Add("b", ev("m2", 1, 3, StatusPending))
	m.Add("a", ev("m3", 2, 2, StatusPending)) // m1 goes: capacity 2
	got := m.Events(10)
	if len(got) != 2 || got[0].MessageID != "m3" || got[1].MessageID != "m2" || got[1].Node != "b" {
		t.Fatalf("events %+v, want m3 then m2 (by time received), m1 dropped", got)
	}
	if got := m.Events(1); len(got) != 1 || got[0].MessageID != "m2" {
		t.Fatalf("Events(1) = %+v, want the newest, m2", got)
	}
}

// A node keeps the outcomes of events it did not take in at SampleRate a
// second, the last Size of them.
func TestOutcomesSampled(t *testing.T) {
	p := &pair{a: New(nil), b: New(nil), at: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	for i := range SampleRate + 10 {
		p.deliver(fmt.Sprintf("x%d", i), "hook", 2, delivery.EndDelivered, time.Minute)
	}
	if n := len(p.b.Outcomes("web")); n != SampleRate {
		t.Fatalf("%d outcomes kept in one second, want %d", n, SampleRate)
	}
	for s := range 3 {
		for i := range SampleRate {
			p.deliver(fmt.Sprintf("y%d-%d", s, i), "hook", 2, delivery.EndDelivered, time.Duration(s+2)*time.Minute)
		}
	}
	outs := p.b.Outcomes("web")
	if len(outs) != Size || outs[len(outs)-1].MessageID != fmt.Sprintf("y2-%d", SampleRate-1) || outs[0].Seq != 0 {
		t.Fatalf("%d outcomes kept, last %q; want %d, the newest last, Seq 0", len(outs), outs[len(outs)-1].MessageID, Size)
	}
	if evs := p.b.Events("web"); len(evs) != 0 {
		t.Fatalf("b has %d events, want none: it took none in", len(evs))
	}
}
