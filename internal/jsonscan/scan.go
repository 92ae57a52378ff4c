// Package jsonscan validates JSON and finds the members of its objects and
// the elements of its arrays as slices of the input, without decoding values.
//
// It exists for fanout's hot paths. The tracking API must keep every value a
// client sent byte for byte (a 19-digit userId must not become a float64),
// and it sees tens of thousands of events a second, so it neither decodes
// events into maps nor re-marshals them: it validates the whole body once
// with Validate, then finds the top-level members of each object with the
// small scanner below, which can be simple because its input is known to be
// well formed. The benchmark sink, which shares the machine with fanout while
// it is measured, reads each delivered event's messageId and receivedAt the
// same way.
//
// Every function but Validate takes input that Validate has accepted, and
// may panic or return nonsense on anything else.
package jsonscan

import (
	"bytes"
	"encoding/json"
)

// Member is one name/value pair of a JSON object.
type Member struct {
	// Name is the decoded member name. It points into the input unless the
	// name had escape sequences.
	Name []byte
	// RawName is the name as written, quotes included, for writing it back.
	RawName []byte
	// Value is the raw value, without surrounding whitespace.
	Value []byte
}

// Is reports whether the member's decoded name is name.
func (m *Member) Is(name string) bool { return string(m.Name) == name }

// Members appends the members of the JSON object b to dst. b must be valid
// JSON with no surrounding whitespace; ok is false when it is not an object.
func Members(b []byte, dst []Member) (_ []Member, ok bool) {
	if len(b) < 2 || b[0] != '{' {
		return dst, false
	}
	dst, _ = membersAt(b, 0, dst)
	return dst, true
}

// membersAt appends the members of the object starting at b[i] (valid JSON)
// to dst and returns the index just past it.
func membersAt(b []byte, i int, dst []Member) (_ []Member, end int) {
	i = skipSpace(b, i+1)
	if b[i] == '}' {
		return dst, i + 1
	}
	for {
		var m Member
		m, i = nameAt(b, i)
		end := skipValue(b, i)
		m.Value = b[i:end]
		dst = append(dst, m)
		i = skipSpace(b, end)
		if b[i] == '}' {
			return dst, i + 1
		}
		i = skipSpace(b, i+1) // the comma
	}
}

// nameAt reads the member whose name starts at b[i] (valid JSON, the
// opening quote) up to its colon. It returns the member with its names set
// and the index where its value starts.
func nameAt(b []byte, i int) (Member, int) {
	end := skipString(b, i)
	m := Member{RawName: b[i:end]}
	m.Name = decodeName(m.RawName)
	i = skipSpace(b, end)
	return m, skipSpace(b, i+1) // past the colon
}

// Span is one element of an array: its raw bytes and, for an object, the
// range flat[Lo:Hi] of its members in the flat member list that
// BatchMembers or Elements fills.
type Span struct {
	Raw    []byte
	Lo, Hi int
	Object bool
}

// BatchMembers walks the top-level object b (valid JSON, no surrounding
// whitespace, an object) once. It returns its members in top, and for the
// last "batch" member that is an array, each element in spans with the
// members of object elements in flat. One pass over the body instead of one
// per level matters: the body is most of what a request costs to parse.
//
// A later "batch" member that is not an array leaves spans as they were: a
// caller that wants the last "batch" member to count looks for it in top.
func BatchMembers(b []byte, top []Member, spans []Span, flat []Member) ([]Member, []Span, []Member) {
	i := skipSpace(b, 1)
	if b[i] == '}' {
		return top, spans, flat
	}
	for {
		var m Member
		var end int
		m, i = nameAt(b, i)
		if m.Is("batch") && b[i] == '[' {
			// The last "batch" counts.
			spans, flat, end = spansAt(b, i, spans[:0], flat[:0])
		} else {
			end = skipValue(b, i)
		}
		m.Value = b[i:end]
		top = append(top, m)
		i = skipSpace(b, end)
		if b[i] == '}' {
			return top, spans, flat
		}
		i = skipSpace(b, i+1) // the comma
	}
}

// Elements appends each element of the JSON array b to spans, with the
// members of object elements in flat, as BatchMembers does for the elements
// of a batch. b must be valid JSON with no surrounding whitespace; ok is
// false when it is not an array.
func Elements(b []byte, spans []Span, flat []Member) (_ []Span, _ []Member, ok bool) {
	if len(b) < 2 || b[0] != '[' {
		return spans, flat, false
	}
	spans, flat, _ = spansAt(b, 0, spans, flat)
	return spans, flat, true
}

// spansAt appends the elements of the array starting at b[i] (valid JSON) to
// spans and the members of its object elements to flat, and returns the
// index just past the array.
func spansAt(b []byte, i int, spans []Span, flat []Member) ([]Span, []Member, int) {
	end := elementsAt(b, i, func(start, end int) {
		spans = append(spans, Span{Raw: b[start:end]})
	}, func(start int) int {
		lo := len(flat)
		var e int
		flat, e = membersAt(b, start, flat)
		spans = append(spans, Span{Raw: b[start:e], Lo: lo, Hi: len(flat), Object: true})
		return e
	})
	return spans, flat, end
}

// elementsAt walks the array starting at b[i] (valid JSON): it hands each
// object element's start to object, which returns its end, and every other
// element to other. It returns the index just past the array.
func elementsAt(b []byte, i int, other func(start, end int), object func(start int) int) int {
	i = skipSpace(b, i+1)
	if b[i] == ']' {
		return i + 1
	}
	for {
		var end int
		if b[i] == '{' {
			end = object(i)
		} else {
			end = skipValue(b, i)
			other(i, end)
		}
		i = skipSpace(b, end)
		if b[i] == ']' {
			return i + 1
		}
		i = skipSpace(b, i+1)
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// plain marks the bytes a string scan steps over: all but the quote and the
// backslash (control characters cannot occur in validated input).
var plain = func() (t [256]bool) {
	for c := range t {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// skipString returns the index just past the string starting at b[i]. A
// table-driven byte loop beats bytes.IndexByte on the short strings events
// are made of, and scanning forward over each escape needs no look-back for
// backslashes.
func skipString(b []byte, i int) int {
	i++
	for {
		for plain[b[i]] {
			i++
		}
		if b[i] == '"' {
			return i + 1
		}
		i += 2 // a backslash and the character it escapes
	}
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		// A number, true, false or null runs to the next delimiter.
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// decodeName returns the content of the JSON string s (quotes included),
// decoding escapes only when there are any.
func decodeName(s []byte) []byte {
	inner := s[1 : len(s)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	var out string
	if err := json.Unmarshal(s, &out); err != nil {
		// Unreachable for input that passed Validate.
		return inner
	}
	return []byte(out)
}

// StringValue decodes v, a valid JSON value such as a Member's Value, when it
// is a string; ok is false when v is not a string.
func StringValue(v []byte) (_ string, ok bool) {
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	return string(decodeName(v)), true
}
