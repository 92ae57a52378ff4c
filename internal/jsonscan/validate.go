package jsonscan

import (
	"fmt"
)

// Validate returns nil when b is one valid JSON value (surrounding
// whitespace allowed), accepting exactly what json.Valid accepts
// (FuzzValidate checks that). It exists because json.Valid, a byte-at-a-time
// state machine with an indirect call per byte, was half of the tracking
// API's parse cost; this loop checks the same grammar at several times the
// speed. Like json.Valid it does not check that strings are valid UTF-8: a
// caller that needs UTF-8 checks it with utf8.Valid.
//
// The error says where the input went wrong and what was expected there.
func Validate(b []byte) error {
	// stack holds the open containers, '{' or '['.
	var stackBuf [64]byte
	stack := stackBuf[:0]
	const (
		stateValue    = iota // a value must start at i
		stateName            // a member name must start at i
		stateEndValue        // a value just ended before i
	)
	state := stateValue
	i := skipSpace(b, 0)
	for {
		switch state {
		case stateValue:
			if i >= len(b) {
				return errEnd
			}
			switch c := b[i]; {
			case c == '{' || c == '[':
				if len(stack) >= maxDepth {
					return fmt.Errorf("at byte %d: nested deeper than %d levels", i+1, maxDepth)
				}
				i = skipSpace(b, i+1)
				if i < len(b) && b[i] == c+2 { // '}' is '{'+2, ']' is '['+2
					i++
					state = stateEndValue
					continue
				}
				stack = append(stack, c)
				if c == '{' {
					state = stateName
				}
				continue
			case c == '"':
				end, err := scanString(b, i)
				if err != nil {
					return err
				}
				i = end
			case c == '-' || (c >= '0' && c <= '9'):
				end, err := scanNumber(b, i)
				if err != nil {
					return err
				}
				i = end
			case c == 't':
				if err := literal(b, i, "true"); err != nil {
					return err
				}
				i += 4
			case c == 'f':
				if err := literal(b, i, "false"); err != nil {
					return err
				}
				i += 5
			case c == 'n':
				if err := literal(b, i, "null"); err != nil {
					return err
				}
				i += 4
			default:
				return unexpected(b, i, "the start of a value")
			}
			state = stateEndValue
		case stateName:
			if i >= len(b) {
				return errEnd
			}
			if b[i] != '"' {
				return unexpected(b, i, "a member name in double quotes")
			}
			end, err := scanString(b, i)
			if err != nil {
				return err
			}
			i = skipSpace(b, end)
			if i >= len(b) {
				return errEnd
			}
			if b[i] != ':' {
				return unexpected(b, i, "a colon after the member name")
			}
			i = skipSpace(b, i+1)
			state = stateValue
		case stateEndValue:
			i = skipSpace(b, i)
			if len(stack) == 0 {
				if i < len(b) {
					return unexpected(b, i, "nothing after the top-level value")
				}
				return nil
			}
			if i >= len(b) {
				return errEnd
			}
			top := stack[len(stack)-1]
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
				state = stateValue
				if top == '{' {
					state = stateName
				}
			case top + 2:
				stack = stack[:len(stack)-1]
				i++
			default:
				if top == '{' {
					return unexpected(b, i, "a comma or '}' after an object member")
				}
				return unexpected(b, i, "a comma or ']' after an array element")
			}
		}
	}
}

// maxDepth bounds nesting, as encoding/json does, so that an input of 500 KB
// of '[' costs a bounded stack.
const maxDepth = 10000

var errEnd = fmt.Errorf("unexpected end of input")

func unexpected(b []byte, i int, want string) error {
	return fmt.Errorf("at byte %d: found %q, expected %s", i+1, rune(b[i]), want)
}

func literal(b []byte, i int, lit string) error {
	if len(b)-i < len(lit) {
		if string(b[i:]) == lit[:len(b)-i] {
			return errEnd
		}
	} else if string(b[i:i+len(lit)]) == lit {
		return nil
	}
	return fmt.Errorf("at byte %d: expected %s", i+1, lit)
}

// stringSafe marks the bytes that may appear in a JSON string as themselves:
// everything but the quote, the backslash and control characters.
var stringSafe = func() (t [256]bool) {
	for c := range t {
		t[c] = c >= 0x20 && c != '"' && c != '\\'
	}
	return t
}()

// scanString returns the index just past the string starting at b[i].
func scanString(b []byte, i int) (int, error) {
	i++
	for {
		// The common run of plain characters, without bounds checks on
		// each byte's class.
		for i < len(b) && stringSafe[b[i]] {
			i++
		}
		if i >= len(b) {
			return 0, errEnd
		}
		switch c := b[i]; c {
		case '"':
			return i + 1, nil
		case '\\':
			if i+1 >= len(b) {
				return 0, errEnd
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := i + 2; k < i+6; k++ {
					if k >= len(b) {
						return 0, errEnd
					}
					if !isHex(b[k]) {
						return 0, fmt.Errorf("at byte %d: expected a hex digit in a \\u escape", k+1)
					}
				}
				i += 6
			default:
				return 0, fmt.Errorf("at byte %d: invalid escape \\%c in a string", i+1, rune(b[i+1]))
			}
		default:
			return 0, fmt.Errorf("at byte %d: control character %q in a string, expected it escaped", i+1, rune(c))
		}
	}
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber returns the index just past the number starting at b[i]:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) (int, error) {
	digits := func(i int) (int, error) {
		if i >= len(b) {
			return 0, errEnd
		}
		if !isDigit(b[i]) {
			return 0, unexpected(b, i, "a digit")
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
		return i, nil
	}
	if b[i] == '-' {
		i++
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else {
		var err error
		if i, err = digits(i); err != nil {
			return 0, err
		}
	}
	if i < len(b) && b[i] == '.' {
		var err error
		if i, err = digits(i + 1); err != nil {
			return 0, err
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		var err error
		if i, err = digits(i); err != nil {
			return 0, err
		}
	}
	return i, nil
}
