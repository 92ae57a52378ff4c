package debugger

import (
	"cmp"
	"slices"
	"strings"
)

// Merge joins the debuggers of a cluster's nodes into one view of a
// source. The node that takes an event in keeps it (with "pending" at the
// destinations it goes to) and the node that delivers it, often another,
// has only the outcome (Outcomes, and Seq 0 updates on its feed). Merge
// keys events by message id and keeps, per destination, the outcome of
// the latest attempt: an outcome with a time beats one without (pending),
// a later one an earlier one.
//
// It holds at most capacity events, dropping the oldest added first, and
// as many outcomes waiting for their event: outcomes that arrive before
// the event, or for an event the taking node did not sample, which never
// comes. Not safe for concurrent use.
type Merge struct {
	capacity int
	events   map[string]*Event
	order    []string // message ids, oldest added first
	waiting  map[string][]Outcome
	wOrder   []string
}

// NewMerge returns a Merge that keeps capacity events (at least one).
func NewMerge(capacity int) *Merge {
	return &Merge{capacity: max(capacity, 1), events: map[string]*Event{}, waiting: map[string][]Outcome{}}
}

// Add takes an update of node's feed and returns the update to show: the
// event as merged so far, Kind "event" the first time it is shown. It returns false when there is nothing to show
// yet (an outcome whose event has not come).
func (m *Merge) Add(node string, u Update) (Update, bool) {
	ev := u.Event
	if ev.Seq == 0 {
		cur := m.events[ev.MessageID]
		if cur == nil {
			m.wait(ev.MessageID, ev.Destinations)
			return Update{}, false
		}
		merge(cur, ev.Destinations)
		return Update{Kind: "outcome", Event: cur.copy()}, true
	}
	// "event" for an event first seen, "outcome" for a change of one
	// shown, whatever the node's feed called it.
	kind := "outcome"
	cur := m.events[ev.MessageID]
	if cur == nil {
		kind = "event"
		c := ev.copy()
		cur = &c
		cur.Node = node
		m.events[ev.MessageID] = cur
		m.order = append(m.order, ev.MessageID)
		if len(m.order) > m.capacity {
			delete(m.events, m.order[0])
			m.order = m.order[1:]
		}
	} else {
		// The taking node's newer copy; outcomes other nodes reported
		// stay unless it has later ones.
		outs := cur.Destinations
		c := ev.copy()
		*cur = c
		cur.Node = node
		merge(cur, outs)
	}
	if w, ok := m.waiting[ev.MessageID]; ok {
		delete(m.waiting, ev.MessageID)
		merge(cur, w)
	}
	return Update{Kind: kind, Event: cur.copy()}, true
}

func (m *Merge) wait(id string, outs []Outcome) {
	if _, ok := m.waiting[id]; !ok {
		m.wOrder = append(m.wOrder, id)
		if len(m.wOrder) > m.capacity {
			delete(m.waiting, m.wOrder[0])
			m.wOrder = m.wOrder[1:]
		}
	}
	m.waiting[id] = append(m.waiting[id], outs...)
}

// merge applies outs to ev's outcomes: each replaces ev's outcome at its
// destination when it is later.
func merge(ev *Event, outs []Outcome) {
	for _, o := range outs {
		for i := range ev.Destinations {
			cur := &ev.Destinations[i]
			if cur.Destination == o.Destination {
				if o.At.After(cur.At) {
					*cur = o
				}
				break
			}
		}
	}
}

// Events returns the merged events, oldest received first (ties in the
// order of the node names, then of Seq), at most n of them: the newest.
func (m *Merge) Events(n int) []Event {
	out := make([]Event, 0, len(m.events))
	for _, ev := range m.events {
		out = append(out, ev.copy())
	}
	slices.SortFunc(out, func(a, b Event) int {
		if c := a.ReceivedAt.Compare(b.ReceivedAt); c != 0 {
			return c
		}
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// NodeEvents is what one node's debugger holds of a source: Events and
// Outcomes.
type NodeEvents struct {
	Node     string  `json:"node"`
	Events   []Event `json:"events"`
	Outcomes []Event `json:"outcomes"`
}

// MergeEvents joins the nodes' kept events of a source into the last Size
// of the cluster, oldest first, with every node's outcomes applied.
func MergeEvents(nodes []NodeEvents) []Event {
	total := 0
	for _, n := range nodes {
		total += len(n.Events)
	}
	m := NewMerge(total)
	for _, n := range nodes {
		for _, ev := range n.Events {
			m.Add(n.Node, Update{Kind: "event", Event: ev})
		}
	}
	for _, n := range nodes {
		for _, o := range n.Outcomes {
			m.Add(n.Node, Update{Kind: "outcome", Event: o})
		}
	}
	return m.Events(Size)
}
