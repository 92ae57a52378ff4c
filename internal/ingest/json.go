package ingest

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// This file walks JSON that validate has already accepted. The tracking API
// must keep every value a client sent byte for byte (a 19-digit userId must
// not become a float64), and it sees tens of thousands of events a second, so
// it neither decodes events into maps nor re-marshals them: it validates the
// whole body once with validate, then finds the top-level members of each
// object with the small scanner below, which can be simple because its input
// is known to be well formed.

// member is one name/value pair of a JSON object.
type member struct {
	// name is the decoded member name. It points into the input unless the
	// name had escape sequences.
	name []byte
	// rawName is the name as written, quotes included, for writing it back.
	rawName []byte
	// value is the raw value, without surrounding whitespace.
	value []byte
}

func (m *member) is(name string) bool { return string(m.name) == name }

// members appends the members of the JSON object b to dst. b must be valid
// JSON with no surrounding whitespace; ok is false when it is not an object.
func members(b []byte, dst []member) (_ []member, ok bool) {
	if len(b) < 2 || b[0] != '{' {
		return dst, false
	}
	dst, _ = membersAt(b, 0, dst)
	return dst, true
}

// membersAt appends the members of the object starting at b[i] (valid JSON)
// to dst and returns the index just past it.
func membersAt(b []byte, i int, dst []member) (_ []member, end int) {
	i = skipSpace(b, i+1)
	if b[i] == '}' {
		return dst, i + 1
	}
	for {
		// b[i] is the opening quote of a name.
		end := skipString(b, i)
		var m member
		m.rawName = b[i:end]
		m.name = decodeName(m.rawName)
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // the colon
		end = skipValue(b, i)
		m.value = b[i:end]
		dst = append(dst, m)
		i = skipSpace(b, end)
		if b[i] == '}' {
			return dst, i + 1
		}
		i = skipSpace(b, i+1) // the comma
	}
}

// span is one element of a batch: its raw bytes and, for an object, the
// range of its members in the flat member list batchMembers fills.
type span struct {
	raw    []byte
	lo, hi int
	object bool
}

// batchMembers walks the top-level object b (valid JSON, no surrounding
// whitespace, an object) once. It returns its members in top, and for the
// last "batch" member that is an array, each element in spans with the
// members of object elements in flat. One pass over the body instead of one
// per level matters: the body is most of what a request costs to parse.
func batchMembers(b []byte, top []member, spans []span, flat []member) ([]member, []span, []member) {
	i := skipSpace(b, 1)
	if b[i] == '}' {
		return top, spans, flat
	}
	for {
		end := skipString(b, i)
		var m member
		m.rawName = b[i:end]
		m.name = decodeName(m.rawName)
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // the colon
		if m.is("batch") && b[i] == '[' {
			spans, flat = spans[:0], flat[:0] // the last "batch" counts
			end = elementsAt(b, i, func(start, end int) {
				spans = append(spans, span{raw: b[start:end]})
			}, func(start int) int {
				lo := len(flat)
				var e int
				flat, e = membersAt(b, start, flat)
				spans = append(spans, span{raw: b[start:e], lo: lo, hi: len(flat), object: true})
				return e
			})
		} else {
			end = skipValue(b, i)
		}
		m.value = b[i:end]
		top = append(top, m)
		i = skipSpace(b, end)
		if b[i] == '}' {
			return top, spans, flat
		}
		i = skipSpace(b, i+1) // the comma
	}
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
		// Unreachable for input that passed json.Valid.
		return inner
	}
	return []byte(out)
}

// stringValue decodes a JSON string value; ok is false when v is not a string.
func stringValue(v []byte) (_ string, ok bool) {
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	return string(decodeName(v)), true
}

// isNull reports whether a member value is absent or JSON null, which the
// tracking API treats alike.
func isNull(v []byte) bool { return v == nil || string(v) == "null" }

// describe names the kind of a JSON value for error messages ("found a
// number"), quoting short strings so that a user sees what was sent.
func describe(v []byte) string {
	if v == nil {
		return "nothing"
	}
	switch v[0] {
	case '"':
		if len(v) == 2 {
			return "an empty string"
		}
		if len(v) <= 42 && utf8.Valid(v) {
			return "the string " + string(v)
		}
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}
