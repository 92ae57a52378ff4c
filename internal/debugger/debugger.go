// Package debugger keeps a live sample of each source's traffic: the last
// Size events, each with what became of it at every destination so far,
// and a feed of new events and outcome changes for subscribers (the admin
// API's server-sent events and `fanout tail`).
//
// In a cluster each node keeps the events it took in, and the outcomes of
// the events other nodes took in that it delivered (Outcomes); Merge joins
// the nodes' parts into one view, which the admin API serves from any node.
package debugger

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/redact"
)

// Size is how many events the debugger keeps per source.
const Size = 500

// SampleRate is how many events per second of each source the debugger
// takes in, the most recent of each request first. A person reading the
// stream cannot follow more, and copying every event of a source sending
// 100,000 a second would cost the tracking API throughput for events that
// are overwritten milliseconds later.
const SampleRate = 200

// subscriberBuffer is how many updates a subscriber may fall behind before
// updates to it are dropped: a slow client must never slow delivery.
const subscriberBuffer = 256

// The statuses of an event at one destination.
const (
	StatusPending     = "pending"
	StatusFiltered    = "filtered"
	StatusUnsupported = "unsupported"
	StatusDelivered   = "delivered"
	StatusRetrying    = "retrying"
	StatusFailed      = "failed"
	StatusArchived    = "archived"
)

// Outcome is what has become of an event at one destination so far.
type Outcome struct {
	Destination string `json:"destination"`
	// Status is one of the Status constants.
	Status   string `json:"status"`
	Attempts int    `json:"attempts"`
	// Reason says why the event failed or is retried; on a delivered
	// event, it is a warning (properties the destination could not take,
	// say), usually "".
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at,omitzero"`
}

// Event is one accepted event.
type Event struct {
	// Seq orders the events of a source on the node that took them in; 0
	// marks an outcome alone (see Outcomes).
	Seq uint64 `json:"seq"`
	// Node names the node that took the event in, in a cluster-wide view
	// (Merge); "" in a node's own.
	Node       string    `json:"node,omitempty"`
	Source     string    `json:"source"`
	MessageID  string    `json:"message_id"`
	Type       string    `json:"type"`
	ReceivedAt time.Time `json:"received_at"`
	// Payload is the event as fanout stored it.
	Payload      json.RawMessage `json:"payload"`
	Destinations []Outcome       `json:"destinations"`
}

// Update is one item of a subscriber's feed.
type Update struct {
	// Kind is "event" for a new event, "outcome" when one of its
	// destinations' outcomes changed.
	Kind  string `json:"kind"`
	Event Event  `json:"event"`
}

// Debugger is safe for concurrent use. Its hooks cost a mutex and a map
// lookup per call, plus a copy per subscriber when someone watches.
type Debugger struct {
	redactors map[string]*redact.Redactor

	mu      sync.Mutex
	sources map[string]*ring
}

// ring is one source's last Size events.
type ring struct {
	events [Size]*Event
	next   int
	seq    uint64
	byID   map[string]*Event
	subs   map[chan Update]struct{}
	// second is the Unix second of the sampling window, taken the number
	// of events taken in it.
	second int64
	taken  int
	// early holds outcomes that arrived before their event: delivery starts
	// as soon as the store has applied a job, before the fsync that the
	// tracking API waits for, so an attempt can end before ObserveIngest
	// hears of the event. Bounded by earlyMax; cleared when full.
	early map[string][]delivery.Report
	// orphans are the last outcomes of events this node did not take in
	// (another node of a cluster did): Outcomes, and the feed, give them
	// to a cluster-wide view, which applies them to the event it got from
	// the node that took it in. Taken in at SampleRate a second, like the
	// events.
	orphans      [Size]*Event
	orphanNext   int
	orphanSecond int64
	orphanTaken  int
}

// earlyMax bounds the outcomes a source keeps for events not yet seen.
const earlyMax = 4096

// earlyAge is how long after its event was received an outcome may still
// come before the event: the tracking API reports an event as soon as the
// store has synced it, milliseconds after receivedAt, seconds when the disk
// stalls.
const earlyAge = 10 * time.Second

// budget returns how many of n events received at at may be taken in.
func (r *ring) budget(at time.Time, n int) int {
	if s := at.Unix(); s != r.second {
		r.second, r.taken = s, 0
	}
	k := max(0, min(n, SampleRate-r.taken))
	r.taken += k
	return k
}

// New returns a Debugger. redactors, by destination name, redact reasons.
func New(redactors map[string]*redact.Redactor) *Debugger {
	return &Debugger{redactors: redactors, sources: map[string]*ring{}}
}

func (d *Debugger) ring(source string) *ring {
	r := d.sources[source]
	if r == nil {
		r = &ring{byID: map[string]*Event{}, subs: map[chan Update]struct{}{}}
		d.sources[source] = r
	}
	return r
}

// ObserveIngest adds a request's accepted events. It is a tracking API
// Options.Observe hook.
func (d *Debugger) ObserveIngest(rep ingest.Report) {
	if len(rep.Accepted) == 0 {
		return
	}
	d.mu.Lock()
	k := d.ring(rep.Source).budget(rep.Accepted[0].Event.ReceivedAt, len(rep.Accepted))
	d.mu.Unlock()
	if k == 0 {
		return
	}
	accepted := rep.Accepted[len(rep.Accepted)-k:]
	routes := rep.Routes[len(rep.Routes)-k:]
	// Built outside the lock: the copies are the expensive part.
	evs := make([]*Event, len(accepted))
	for i := range accepted {
		e := &accepted[i]
		dec := &routes[i]
		outs := make([]Outcome, 0, len(dec.To)+len(dec.Filtered)+len(dec.Unsupported))
		for _, n := range dec.To {
			outs = append(outs, Outcome{Destination: n, Status: StatusPending})
		}
		for _, n := range dec.Filtered {
			outs = append(outs, Outcome{Destination: n, Status: StatusFiltered})
		}
		for _, n := range dec.Unsupported {
			outs = append(outs, Outcome{Destination: n, Status: StatusUnsupported})
		}
		// The payload is carved from the request's arena: copy it, or one
		// kept event would keep the whole request alive.
		evs[i] = &Event{
			Source: e.Event.Source, MessageID: e.Event.MessageID, Type: e.Event.Type,
			ReceivedAt: e.Event.ReceivedAt, Payload: bytes.Clone(e.Event.Payload), Destinations: outs,
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.ring(rep.Source)
	for _, ev := range evs {
		r.seq++
		ev.Seq = r.seq
		if old := r.events[r.next]; old != nil && r.byID[old.MessageID] == old {
			delete(r.byID, old.MessageID)
		}
		r.events[r.next] = ev
		r.next = (r.next + 1) % Size
		r.byID[ev.MessageID] = ev
		r.publish("event", ev)
		if early, ok := r.early[ev.MessageID]; ok {
			delete(r.early, ev.MessageID)
			for _, rep := range early {
				d.apply(r, ev, rep)
			}
		}
	}
}

// Observe records a delivery attempt's outcome. It is the delivery
// engine's Options.Observe hook.
func (d *Debugger) Observe(rep delivery.Report) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.ring(rep.Queue.Source)
	ev := r.byID[rep.Job.Event.MessageID]
	if ev == nil {
		// Keep it for ObserveIngest, unless the event cannot be taken in:
		// its second is already out of sampling budget, or it was received
		// so long ago that the tracking API reported it already (a backlog
		// draining after an outage, where keeping each outcome would cost
		// an allocation per delivered event for nothing).
		received := rep.Job.Event.ReceivedAt
		if rep.Job.Attempts == 1 && rep.At.Sub(received) < earlyAge &&
			(received.Unix() != r.second || r.taken < SampleRate) {
			if r.early == nil || len(r.early) >= earlyMax {
				r.early = map[string][]delivery.Report{}
			}
			id := rep.Job.Event.MessageID
			r.early[id] = append(r.early[id], rep)
		}
		d.orphan(r, rep)
		return
	}
	d.apply(r, ev, rep)
}

// orphan keeps and publishes the outcome of an event this node does not
// have, within the second's budget. d.mu is held.
func (d *Debugger) orphan(r *ring, rep delivery.Report) {
	if s := rep.At.Unix(); s != r.orphanSecond {
		r.orphanSecond, r.orphanTaken = s, 0
	}
	if r.orphanTaken >= SampleRate {
		return
	}
	r.orphanTaken++
	e := rep.Job.Event
	// Cloned: the report's strings may share a buffer with the job's
	// payload, which must not stay alive for a kept outcome.
	ev := &Event{Source: e.Source, MessageID: strings.Clone(e.MessageID), ReceivedAt: e.ReceivedAt,
		Destinations: []Outcome{d.outcome(rep)}}
	r.orphans[r.orphanNext] = ev
	r.orphanNext = (r.orphanNext + 1) % Size
	r.publish("outcome", ev)
}

// outcome is what rep says became of its event at its destination.
func (d *Debugger) outcome(rep delivery.Report) Outcome {
	return Outcome{
		Destination: rep.Queue.Destination, Status: statusOf(rep.End), Attempts: rep.Job.Attempts, At: rep.At,
		// A delivered event's reason is a warning: kept, like a failure's.
		Reason: d.redactors[rep.Queue.Destination].String(rep.Result.Reason),
	}
}

// apply records one attempt's outcome on its event and publishes it.
func (d *Debugger) apply(r *ring, ev *Event, rep delivery.Report) {
	for i := range ev.Destinations {
		o := &ev.Destinations[i]
		if o.Destination != rep.Queue.Destination {
			continue
		}
		*o = d.outcome(rep)
		r.publish("outcome", ev)
		return
	}
}

func statusOf(e delivery.End) string {
	switch e {
	case delivery.EndDelivered:
		return StatusDelivered
	case delivery.EndFailed:
		return StatusFailed
	case delivery.EndUnsupported:
		return StatusUnsupported
	case delivery.EndArchived:
		return StatusArchived
	}
	return StatusRetrying
}

// publish sends a copy of ev to every subscriber that has room. d.mu is
// held.
func (r *ring) publish(kind string, ev *Event) {
	if len(r.subs) == 0 {
		return
	}
	u := Update{Kind: kind, Event: ev.copy()}
	for ch := range r.subs {
		select {
		case ch <- u:
		default: // the subscriber is behind; it misses this one
		}
	}
}

func (e *Event) copy() Event {
	c := *e
	c.Destinations = append([]Outcome(nil), e.Destinations...)
	return c
}

// Events returns a copy of source's kept events, oldest first.
func (d *Debugger) Events(source string) []Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.sources[source]
	if r == nil {
		return []Event{}
	}
	return copyRing(&r.events, r.next)
}

// Outcomes returns a copy of source's kept outcomes of events this node
// did not take in, oldest first, each as an Event with Seq 0 that holds
// the message id, the time received and the one outcome. In a cluster the
// node that delivers an event is often not the one that took it in; a
// cluster-wide view applies these to the events of the other nodes
// (Merge).
func (d *Debugger) Outcomes(source string) []Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.sources[source]
	if r == nil {
		return []Event{}
	}
	return copyRing(&r.orphans, r.orphanNext)
}

// copyRing copies the events of a ring buffer whose oldest slot is next,
// oldest first.
func copyRing(slots *[Size]*Event, next int) []Event {
	out := []Event{}
	for i := range Size {
		if ev := slots[(next+i)%Size]; ev != nil {
			out = append(out, ev.copy())
		}
	}
	return out
}

// Subscribe returns a feed of source's new events and outcome changes,
// outcomes of events this node does not have included (Seq 0, see
// Outcomes), and a function that ends it. Updates a subscriber is too slow to take
// are dropped.
func (d *Debugger) Subscribe(source string) (<-chan Update, func()) {
	ch := make(chan Update, subscriberBuffer)
	d.mu.Lock()
	d.ring(source).subs[ch] = struct{}{}
	d.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			d.mu.Lock()
			delete(d.ring(source).subs, ch)
			d.mu.Unlock()
		})
	}
}
