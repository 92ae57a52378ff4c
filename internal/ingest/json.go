package ingest

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// This file walks JSON that json.Valid has already accepted. The tracking API
// must keep every value a client sent byte for byte (a 19-digit userId must
// not become a float64), and it sees tens of thousands of events a second, so
// it neither decodes events into maps nor re-marshals them: it validates the
// whole body once with json.Valid, then finds the top-level members of each
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
	i := skipSpace(b, 1)
	if b[i] == '}' {
		return dst, true
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
			return dst, true
		}
		i = skipSpace(b, i+1) // the comma
	}
}

// elements appends the elements of the JSON array b to dst, with the same
// preconditions as members.
func elements(b []byte, dst [][]byte) (_ [][]byte, ok bool) {
	if len(b) < 2 || b[0] != '[' {
		return dst, false
	}
	i := skipSpace(b, 1)
	if b[i] == ']' {
		return dst, true
	}
	for {
		end := skipValue(b, i)
		dst = append(dst, b[i:end])
		i = skipSpace(b, end)
		if b[i] == ']' {
			return dst, true
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

// skipString returns the index just past the string starting at b[i].
func skipString(b []byte, i int) int {
	i++
	for {
		// IndexAny would also work; this loop stays in the fast path of
		// the common unescaped string.
		j := bytes.IndexByte(b[i:], '"')
		i += j
		// Count the backslashes before the quote: an odd number escapes it.
		n := 0
		for k := i - 1; b[k] == '\\'; k-- {
			n++
		}
		i++
		if n%2 == 0 {
			return i
		}
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
