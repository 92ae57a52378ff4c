package jsonscan

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// show renders members as name=value, the decoded name and the raw value.
func show(ms []Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, string(m.Name)+"="+string(m.Value))
	}
	return out
}

// showSpans renders spans as their raw bytes, followed for an object by its
// members.
func showSpans(spans []Span, flat []Member) []string {
	var out []string
	for _, s := range spans {
		line := string(s.Raw)
		if s.Object {
			line += " -> " + strings.Join(show(flat[s.Lo:s.Hi]), " ")
		}
		out = append(out, line)
	}
	return out
}

func TestMembers(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		ok   bool
	}{
		{`{}`, nil, true},
		{`{"a":1}`, []string{"a=1"}, true},
		{`{ "a" : [1, {"b":"}"}] , "c":"x\"}y" ,"d":{"e":[]}}`, []string{`a=[1, {"b":"}"}]`, `c="x\"}y"`, `d={"e":[]}`}, true},
		// An escaped name is decoded; a repeated name is kept, in order.
		{`{"\u0061\t":null,"a":true,"a":-1.5e3}`, []string{"a\t=null", "a=true", "a=-1.5e3"}, true},
		{`[{"a":1}]`, nil, false},
		{`"{}"`, nil, false},
		{`null`, nil, false},
	}
	for _, tt := range tests {
		ms, ok := Members([]byte(tt.in), nil)
		if ok != tt.ok || !slices.Equal(show(ms), tt.want) {
			t.Errorf("Members(%s) = %q, %v; want %q, %v", tt.in, show(ms), ok, tt.want, tt.ok)
		}
	}
}

func TestBatchMembers(t *testing.T) {
	tests := []struct {
		in    string
		top   []string
		spans []string
	}{
		{`{}`, nil, nil},
		{`{"batch":[]}`, []string{"batch=[]"}, nil},
		{`{"batch":[{"messageId":"a"}, 7 ,{"x":{"y":[1]}},"s",[{"z":1}]],"sentAt":"t"}`,
			[]string{`batch=[{"messageId":"a"}, 7 ,{"x":{"y":[1]}},"s",[{"z":1}]]`, `sentAt="t"`},
			[]string{`{"messageId":"a"} -> messageId="a"`, `7`, `{"x":{"y":[1]}} -> x={"y":[1]}`, `"s"`, `[{"z":1}]`}},
		// The last "batch" that is an array counts.
		{`{"batch":[{"a":1}],"b\u0061tch":[{"b":2},{}]}`,
			[]string{`batch=[{"a":1}]`, `batch=[{"b":2},{}]`},
			[]string{`{"b":2} -> b=2`, `{} -> `}},
		{`{"batch":[{"a":1}],"batch":null}`,
			[]string{`batch=[{"a":1}]`, `batch=null`},
			[]string{`{"a":1} -> a=1`}},
		{`{"batch":{"a":[1]}}`, []string{`batch={"a":[1]}`}, nil},
	}
	for _, tt := range tests {
		top, spans, flat := BatchMembers([]byte(tt.in), nil, nil, nil)
		if !slices.Equal(show(top), tt.top) || !slices.Equal(showSpans(spans, flat), tt.spans) {
			t.Errorf("BatchMembers(%s) = %q, %q; want %q, %q", tt.in, show(top), showSpans(spans, flat), tt.top, tt.spans)
		}
	}
}

func TestElements(t *testing.T) {
	tests := []struct {
		in    string
		spans []string
		ok    bool
	}{
		{`[]`, nil, true},
		{`[ {"a":1} , "s" ,[1,{"b":2}], null,{ }]`, []string{`{"a":1} -> a=1`, `"s"`, `[1,{"b":2}]`, `null`, `{ } -> `}, true},
		{`{"a":[1]}`, nil, false},
		{`1`, nil, false},
	}
	for _, tt := range tests {
		spans, flat, ok := Elements([]byte(tt.in), nil, nil)
		if ok != tt.ok || !slices.Equal(showSpans(spans, flat), tt.spans) {
			t.Errorf("Elements(%s) = %q, %v; want %q, %v", tt.in, showSpans(spans, flat), ok, tt.spans, tt.ok)
		}
	}
}

func TestStringValue(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{`""`, "", true},
		{`"fanout-0123"`, "fanout-0123", true},
		{`"a\u00e9\n\"\\\/\ud83c\udf89"`, "aé\n\"\\/🎉", true},
		{`1`, "", false},
		{`null`, "", false},
		{`{"a":"b"}`, "", false},
	}
	for _, tt := range tests {
		got, ok := StringValue([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("StringValue(%s) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzScan checks the scanner against encoding/json on every valid input:
// the members of an object are what json.Unmarshal finds (the last of
// repeated names), the elements of an array are its elements byte for byte,
// a batch's elements are those of its last "batch" array, and a string
// decodes as json.Unmarshal decodes it.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `{"a":1,"b":[1,{"c":"}"}],"a":"x\"y"}`, `{"\u0061":1,"a":2}`, ` [ {"a" : 1} , 2 , "s" ] `,
		`{"batch":[{"messageId":"m1","receivedAt":"2026-03-01T12:00:00Z"},7,[{}]],"batch":null,"sentAt":"t"}`,
		`{"batch":[{"a":1}],"batch":[{"b":2}]}`, `"a\u00e9\n\ud800"`, `-0.5e+3`, `null`, `{"a":{"b":{"c":[[],{}]}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = bytes.Trim(b, " \t\n\r")
		// encoding/json decodes invalid UTF-8 in a string as U+FFFD; the
		// scanner hands strings on as they are.
		if Validate(b) != nil || !utf8.Valid(b) {
			return
		}
		ms, isObject := Members(b, nil)
		spans, flat, isArray := Elements(b, nil, nil)
		s, isString := StringValue(b)
		if isObject != (b[0] == '{') || isArray != (b[0] == '[') || isString != (b[0] == '"') {
			t.Fatalf("%s: object %v, array %v, string %v", b, isObject, isArray, isString)
		}
		switch b[0] {
		case '{':
			checkObject(t, b, ms)
			top, spans, flat := BatchMembers(b, nil, nil, nil)
			if !slices.Equal(show(top), show(ms)) {
				t.Fatalf("%s: BatchMembers found %q, Members %q", b, show(top), show(ms))
			}
			var batch []byte
			for _, m := range top {
				if m.Is("batch") && m.Value[0] == '[' {
					batch = m.Value
				}
			}
			if batch == nil {
				if len(spans) > 0 {
					t.Fatalf("%s: spans %q without a batch array", b, showSpans(spans, flat))
				}
				return
			}
			checkArray(t, batch, spans, flat)
		case '[':
			checkArray(t, b, spans, flat)
		case '"':
			var want string
			if err := json.Unmarshal(b, &want); err != nil || s != want {
				t.Fatalf("StringValue(%s) = %q, json.Unmarshal %q, %v", b, s, want, err)
			}
		}
	})
}

// checkObject compares the members of the object b with what json.Unmarshal
// finds.
func checkObject(t *testing.T, b []byte, ms []Member) {
	t.Helper()
	var want map[string]json.RawMessage
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	last := map[string][]byte{}
	for _, m := range ms {
		var name string
		if err := json.Unmarshal(m.RawName, &name); err != nil || name != string(m.Name) {
			t.Fatalf("%s: name %s decoded as %q, json.Unmarshal %q, %v", b, m.RawName, m.Name, name, err)
		}
		last[string(m.Name)] = m.Value
	}
	if len(last) != len(want) {
		t.Fatalf("%s: members %q, json.Unmarshal found %d names", b, show(ms), len(want))
	}
	for name, v := range want {
		if !bytes.Equal(last[name], v) {
			t.Fatalf("%s: member %q is %s, json.Unmarshal %s", b, name, last[name], v)
		}
	}
}

// checkArray compares the elements of the array b, found with the members
// of its objects, with what json.Unmarshal finds.
func checkArray(t *testing.T, b []byte, spans []Span, flat []Member) {
	t.Helper()
	var want []json.RawMessage
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if len(spans) != len(want) {
		t.Fatalf("%s: elements %q, json.Unmarshal found %d", b, showSpans(spans, flat), len(want))
	}
	for i, s := range spans {
		if !bytes.Equal(s.Raw, want[i]) || s.Object != (s.Raw[0] == '{') {
			t.Fatalf("%s: element %d is %s (object %v), json.Unmarshal %s", b, i, s.Raw, s.Object, want[i])
		}
		if s.Object {
			checkObject(t, s.Raw, flat[s.Lo:s.Hi])
		}
	}
}
