package ingest_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fanout/fanout/internal/ingest"
)

const dateTimeHint = "an ISO 8601 date-time such as 2024-05-01T12:00:00.000Z"

// fieldCases are the member type rules, each broken once: the member added
// to a valid track call, and the reason that names the field, what was
// expected and what was found.
var fieldCases = []struct {
	name   string
	member string // added to track("")
	reason string
}{
	{"properties a string", `"properties":"x"`, `expected properties to be an object, found the string "x"`},
	{"properties an array", `"properties":[1]`, "expected properties to be an object, found an array"},
	{"properties a number", `"properties":1`, "expected properties to be an object, found a number"},
	{"traits a boolean", `"traits":true`, "expected traits to be an object, found a boolean"},
	{"traits an array", `"traits":[]`, "expected traits to be an object, found an array"},
	{"context a number", `"context":3`, "expected context to be an object, found a number"},
	{"context an array", `"context":[]`, "expected context to be an object, found an array"},
	{"integrations a string", `"integrations":"all"`, `expected integrations to be an object, found the string "all"`},
	{"integrations a boolean", `"integrations":false`, "expected integrations to be an object, found a boolean"},
	{"timestamp a number", `"timestamp":1714564800`, "expected timestamp to be " + dateTimeHint + ", found a number"},
	{"timestamp not a date", `"timestamp":"yesterday"`, `expected timestamp to be ` + dateTimeHint + `, found the string "yesterday"`},
	{"timestamp an object", `"timestamp":{}`, "expected timestamp to be " + dateTimeHint + ", found an object"},
	{"sentAt a date without time", `"sentAt":"2024-05-01"`, `expected sentAt to be ` + dateTimeHint + `, found the string "2024-05-01"`},
	{"sentAt a boolean", `"sentAt":true`, "expected sentAt to be " + dateTimeHint + ", found a boolean"},
	{"originalTimestamp a number", `"originalTimestamp":1714564800000`, "expected originalTimestamp to be " + dateTimeHint + ", found a number"},
	{"originalTimestamp month 13", `"originalTimestamp":"2024-13-01T00:00:00Z"`,
		`expected originalTimestamp to be ` + dateTimeHint + `, found the string "2024-13-01T00:00:00Z"`},
	{"originalTimestamp an array", `"originalTimestamp":[]`, "expected originalTimestamp to be " + dateTimeHint + ", found an array"},
	{"messageId a boolean", `"messageId":true`, "expected messageId to be a string or a number, found a boolean"},
	{"messageId an object", `"messageId":{"id":1}`, "expected messageId to be a string or a number, found an object"},
	{"messageId an array", `"messageId":["m"]`, "expected messageId to be a string or a number, found an array"},
	{"userId a boolean", `"userId":false`, "expected userId to be a string or a number, found a boolean"},
	{"userId an array", `"userId":["u"]`, "expected userId to be a string or a number, found an array"},
	{"anonymousId an object", `"anonymousId":{}`, "expected anonymousId to be a string or a number, found an object"},
	{"anonymousId a boolean", `"anonymousId":true`, "expected anonymousId to be a string or a number, found a boolean"},
	{"last of repeated names counts", `"traits":{},"traits":7`, "expected traits to be an object, found a number"},
	{"escaped name", `"propertie\u0073":"x"`, `expected properties to be an object, found the string "x"`},
}

// TestFieldTypesRejected sends each broken rule as a single call, which
// gets a 400 with the reason, and inside a batch, where that event alone is
// rejected, listed with its index and the same reason.
func TestFieldTypesRejected(t *testing.T) {
	for _, tt := range fieldCases {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t)
			res := b.do(t, request{path: "/v1/track", key: webKey, body: track("," + tt.member)})
			if res.status != 400 || res.Message != tt.reason {
				t.Errorf("single call: %d %q\nwant 400 %q", res.status, res.Message, tt.reason)
			}
			if len(b.accepted) != 0 {
				t.Errorf("single call: %d entries accepted", len(b.accepted))
			}

			body := `{"batch":[` + track(`,"type":"track"`) + `,` + track(`,"type":"track",`+tt.member) + `]}`
			res = b.do(t, request{path: "/v1/batch", key: webKey, body: body})
			want := []ingest.Rejection{{Index: 1, Reason: tt.reason}}
			if res.status != 200 || fmt.Sprint(res.Rejected) != fmt.Sprint(want) {
				t.Errorf("batch: %d, rejected %v\nwant 200, %v", res.status, res.Rejected, want)
			}
			if len(b.accepted) != 1 {
				t.Errorf("batch: %d entries accepted, want the valid one", len(b.accepted))
			}
		})
	}
}

// TestFieldTypesAccepted holds what the rules let through: null and empty
// identifiers as absent, numbers as identifiers, date-times with offsets
// and fractions, and a broken member that a later one of the same name
// replaces.
func TestFieldTypesAccepted(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{"objects", track(`,"properties":{"a":1},"traits":{},"context":{"ip":"1"},"integrations":{"All":true}`)},
		{"nulls", track(`,"properties":null,"traits":null,"context":null,"integrations":null,"timestamp":null,"sentAt":null,"originalTimestamp":null,"messageId":null,"anonymousId":null`)},
		{"date-times", track(`,"timestamp":"2024-05-01T12:00:00.123456+02:00","sentAt":"2024-05-01T10:00:01Z","originalTimestamp":"2024-05-01T09:59:59.9-01:30"`)},
		{"numeric identifiers", `{"userId":42,"anonymousId":-7.5,"messageId":1714564800123,"event":"e"}`},
		{"empty identifiers", `{"userId":"u","anonymousId":"","messageId":"","event":"e"}`},
		{"a later member replaces a broken one", track(`,"properties":"x","properties":{}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t)
			res := b.do(t, request{path: "/v1/track", key: webKey, body: tt.body})
			if res.status != 200 {
				t.Fatalf("status %d: %s", res.status, res.raw)
			}
			for _, e := range b.accepted {
				checkEntry(t, e, "web")
			}
		})
	}
}

// TestNumericMessageID: a number sent as messageId is kept, as a string,
// and deduplicates like one.
func TestNumericMessageID(t *testing.T) {
	b := setup(t)
	body := track(`,"messageId":1714564800123`)
	for range 2 {
		if res := b.do(t, request{path: "/v1/track", key: webKey, body: body}); res.status != 200 {
			t.Fatalf("status %d: %s", res.status, res.raw)
		}
	}
	if len(b.accepted) != 1 || b.accepted[0].Event.MessageID != "1714564800123" {
		t.Fatalf("accepted %d entries, want one with MessageID 1714564800123", len(b.accepted))
	}
	checkEntry(t, b.accepted[0], "web")
	if p := string(b.accepted[0].Event.Payload); strings.Count(p, `"messageId"`) != 1 {
		t.Errorf("payload %s: want one messageId", p)
	}
}
