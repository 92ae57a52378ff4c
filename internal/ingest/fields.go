package ingest

import (
	"fmt"

	"github.com/fanout/fanout/internal/jsonscan"
)

// The kinds of value checkFields requires of the members it knows.
const (
	kindObject   = iota // a JSON object
	kindDateTime        // an ISO 8601 (RFC 3339) date-time string
	// kindCorrected is a date-time that the clock-skew correction parses,
	// and so checks, anyway: checkFields only makes sure it is a string,
	// so as not to parse it twice.
	kindCorrected
	kindID // a string or a number
)

// fieldRules are the members of an event whose type the tracking API
// requires, when they are present and not null. fieldRule finds them.
var fieldRules = [...]struct {
	name string
	kind int
}{
	{"properties", kindObject},
	{"traits", kindObject},
	{"context", kindObject},
	{"integrations", kindObject},
	{"timestamp", kindCorrected},
	{"sentAt", kindCorrected},
	{"originalTimestamp", kindDateTime},
	{"messageId", kindID},
	{"userId", kindID},
	{"anonymousId", kindID},
}

// checkFields checks the types of an event's members against fieldRules
// and returns the reason for the first violation, "" when there is none:
//
//   - properties, traits, context and integrations: an object;
//   - timestamp, sentAt and originalTimestamp: an ISO 8601 (RFC 3339)
//     date-time string;
//   - messageId, userId and anonymousId: a string or a number.
//
// Destinations read these members without checking, so an event that broke
// a rule would fail at every one of them, on every retry, instead of once,
// here, with a message to the client. null counts as absent, and so does an
// empty identifier (the server then sets messageId; a missing identity is
// reported as such). Where a name repeats only the last member counts, the
// one that is stored and that destinations read.
//
// It is on ingest's hot path, so it reads the values as the scanner left
// them: the first byte tells an object, a string or a number, and only
// originalTimestamp is parsed here.
func checkFields(mem []jsonscan.Member) string {
	var seen uint16 // bit r: a later member had rule r
	for i := len(mem) - 1; i >= 0; i-- {
		r := fieldRule(mem[i].Name)
		if r < 0 || seen&(1<<r) != 0 {
			continue
		}
		seen |= 1 << r
		v := mem[i].Value
		if isNull(v) {
			continue
		}
		switch name := fieldRules[r].name; fieldRules[r].kind {
		case kindObject:
			if v[0] != '{' {
				return fmt.Sprintf("expected %s to be an object, found %s", name, describe(v))
			}
		case kindCorrected, kindDateTime:
			if v[0] == '"' && fieldRules[r].kind == kindCorrected {
				continue
			}
			if _, reason := parseTime(name, v); reason != "" {
				return reason
			}
		case kindID:
			if v[0] != '"' && v[0] != '-' && (v[0] < '0' || v[0] > '9') {
				return fmt.Sprintf("expected %s to be a string or a number, found %s", name, describe(v))
			}
		}
	}
	return ""
}

// fieldRule returns the index in fieldRules of the rule for a member name,
// -1 when there is none. A switch compiles to a few length and byte
// comparisons, cheaper than a map for the dozen members of a typical event.
func fieldRule(name []byte) int {
	switch string(name) {
	case "properties":
		return 0
	case "traits":
		return 1
	case "context":
		return 2
	case "integrations":
		return 3
	case "timestamp":
		return 4
	case "sentAt":
		return 5
	case "originalTimestamp":
		return 6
	case "messageId":
		return 7
	case "userId":
		return 8
	case "anonymousId":
		return 9
	}
	return -1
}
