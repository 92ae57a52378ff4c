package plan

import (
	"reflect"
	"strings"
	"testing"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/event"
)

func items(sizes ...int) []Item {
	out := make([]Item, len(sizes))
	for i, n := range sizes {
		out[i] = Item{Event: i, Body: []byte(strings.Repeat("x", n))}
	}
	return out
}

func TestBatches(t *testing.T) {
	cases := []struct {
		name                               string
		sizes                              []int
		maxItems, maxBytes, over, envelope int
		want                               [][]int
	}{
		{"no bounds", []int{1, 2, 3}, 0, 0, 0, 0, [][]int{{0, 1, 2}}},
		{"by count", []int{1, 1, 1, 1, 1}, 2, 0, 0, 0, [][]int{{0, 1}, {2, 3}, {4}}},
		{"by bytes", []int{4, 4, 4}, 0, 10, 1, 0, [][]int{{0, 1}, {2}}},
		{"envelope counts", []int{4, 4}, 0, 10, 0, 3, [][]int{{0}, {1}}},
		{"too big alone", []int{1, 50, 1}, 0, 10, 0, 0, [][]int{{0}, {1}, {2}}},
		{"empty", nil, 2, 10, 0, 0, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got [][]int
			for _, run := range Batches(items(c.sizes...), c.maxItems, c.maxBytes, c.over, c.envelope) {
				var idx []int
				for _, it := range run {
					idx = append(idx, it.Event)
				}
				got = append(got, idx)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestJSONArray(t *testing.T) {
	body, events := JSONArray([]Item{{Event: 3, Body: []byte(`{"a":1}`)}, {Event: 5, Body: []byte(`2`)}})
	if string(body) != `[{"a":1},2]` || !reflect.DeepEqual(events, []int{3, 5}) {
		t.Errorf("got %s %v", body, events)
	}
}

func TestBuilder(t *testing.T) {
	var b Builder
	b.Reject(0, "no email")
	b.Retry(1, "token endpoint down")
	b.Unsupported(2, "alias")
	b.Add(&destinations.Request{Events: []int{3}})
	want := map[int]destinations.Outcome{0: destinations.Rejected, 1: destinations.Retryable, 2: destinations.Unsupported}
	for i, o := range want {
		if b.Plan.Results[i].Outcome != o {
			t.Errorf("event %d: %v, want %v", i, b.Plan.Results[i].Outcome, o)
		}
	}
	if len(b.Plan.Requests) != 1 {
		t.Errorf("%d requests", len(b.Plan.Requests))
	}
}

func TestRounds(t *testing.T) {
	var r Rounds
	for i, key := range []string{"a", "b", "a", "c", "a", "b"} {
		r.Add(key, Item{Event: i})
	}
	var got [][]int
	for _, round := range r.Of {
		var evs []int
		for _, it := range round {
			evs = append(evs, it.Event)
		}
		got = append(got, evs)
	}
	if want := [][]int{{0, 1, 3}, {2, 5}, {4}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("rounds %v, want %v", got, want)
	}
}

func TestBuilderFields(t *testing.T) {
	var b Builder
	if m, ok := b.Fields(0, &event.Event{Payload: []byte(`{"type":"track"}`)}); !ok || m["type"] != "track" {
		t.Errorf("Fields of a JSON object = %v, %v", m, ok)
	}
	if _, ok := b.Fields(1, &event.Event{Payload: []byte(`{"type":`)}); ok {
		t.Errorf("Fields of a broken payload: ok")
	}
	if r, found := b.Plan.Results[1]; !found || r.Outcome != destinations.Rejected || !strings.HasPrefix(r.Reason, "the event is not valid JSON: ") {
		t.Errorf("a broken payload's result = %+v, want it rejected as not valid JSON", r)
	}
	if _, found := b.Plan.Results[0]; found {
		t.Errorf("a decoded event got a result")
	}
}
