// Package plan helps an integration's Transform build its
// destinations.Plan: cutting events into batches that respect the API's
// limits, and recording the outcomes decided without a request. It stays a
// package of its own so that its names read at the call site (plan.Builder,
// plan.Batches, plan.Item) beside destinations.Plan, which a Builder in
// package destinations would have to be renamed around.
package plan

import (
	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/event"
)

// Builder accumulates a Plan.
type Builder struct {
	Plan destinations.Plan
}

// Reject gives event i the outcome Rejected with reason, without a request.
func (b *Builder) Reject(i int, reason string) {
	b.result(i, destinations.Result{Outcome: destinations.Rejected, Reason: reason})
}

// Retry gives event i the outcome Retryable with reason, without a request:
// for a failure before any request could be built, such as an OAuth token
// endpoint that did not answer.
func (b *Builder) Retry(i int, reason string) {
	b.result(i, destinations.Result{Outcome: destinations.Retryable, Reason: reason})
}

// Fail gives the event of each of items the outcome of a failure before
// any request, such as an OAuth token endpoint's answer: Rejected with
// reason when rejected (the credentials were refused), Retryable with
// reason otherwise.
func (b *Builder) Fail(items []Item, rejected bool, reason string) {
	for _, it := range items {
		if rejected {
			b.Reject(it.Event, reason)
		} else {
			b.Retry(it.Event, reason)
		}
	}
}

// Unsupported gives event i the outcome Unsupported with reason.
func (b *Builder) Unsupported(i int, reason string) {
	b.result(i, destinations.Result{Outcome: destinations.Unsupported, Reason: reason})
}

func (b *Builder) result(i int, r destinations.Result) {
	if b.Plan.Results == nil {
		b.Plan.Results = make(map[int]destinations.Result)
	}
	b.Plan.Results[i] = r
}

// Fields decodes e, event i, as e.Fields does. When its payload is not a
// JSON object it rejects the event and returns ok false.
func (b *Builder) Fields(i int, e *event.Event) (m map[string]any, ok bool) {
	m, err := e.Fields()
	if err != nil {
		b.Reject(i, "the event is not valid JSON: "+err.Error())
		return nil, false
	}
	return m, true
}

// Add appends a request.
func (b *Builder) Add(r *destinations.Request) { b.Plan.Requests = append(b.Plan.Requests, r) }

// Item is one event's encoded part of a batch request.
type Item struct {
	// Event is the event's index in the batch given to Transform.
	Event int
	// Body is the event's encoded record.
	Body []byte
}

// Rounds sorts items so that no two items of one round share a key: the
// n-th item added under a key goes in round n. It is for APIs that refuse
// one record twice in a request (HubSpot's batch upsert by email,
// Salesforce's upsert by external ID); sending the rounds in order, each
// cut by Batches, also writes a record's later updates later. The zero
// value is empty and ready to use.
type Rounds struct {
	// Of holds the rounds, first to last.
	Of   [][]Item
	seen map[string]int
}

// Add puts it in the first round that holds no item under key.
func (r *Rounds) Add(key string, it Item) {
	if r.seen == nil {
		r.seen = map[string]int{}
	}
	n := r.seen[key]
	r.seen[key] = n + 1
	if n == len(r.Of) {
		r.Of = append(r.Of, nil)
	}
	r.Of[n] = append(r.Of[n], it)
}

// Batches cuts items into runs of at most maxItems items whose bodies,
// plus overhead bytes per item (separators) and envelope bytes per run,
// sum to at most maxBytes. 0 means no bound. An item too big on its own
// still makes a run of one: the API's answer to it is the truth, and a
// 413 is classified like any other.
func Batches(items []Item, maxItems, maxBytes, overhead, envelope int) [][]Item {
	var runs [][]Item
	var run []Item
	size := envelope
	for _, it := range items {
		n := len(it.Body) + overhead
		if len(run) > 0 && ((maxItems > 0 && len(run) >= maxItems) || (maxBytes > 0 && size+n > maxBytes)) {
			runs = append(runs, run)
			run, size = nil, envelope
		}
		run = append(run, it)
		size += n
	}
	if len(run) > 0 {
		runs = append(runs, run)
	}
	return runs
}

// JSONArray joins the bodies of run into a JSON array, and returns it with
// the event indexes the run carries.
func JSONArray(run []Item) (body []byte, events []int) {
	n := 2
	for _, it := range run {
		n += len(it.Body) + 1
	}
	body = make([]byte, 0, n)
	body = append(body, '[')
	events = make([]int, len(run))
	for j, it := range run {
		if j > 0 {
			body = append(body, ',')
		}
		body = append(body, it.Body...)
		events[j] = it.Event
	}
	return append(body, ']'), events
}
