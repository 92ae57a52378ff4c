package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzValidate checks that Validate accepts exactly what json.Valid accepts.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		``, ` `, `{}`, `[]`, `{"a":1}`, `{"a":[1,2,{"b":null}],"c":"\u00e9\n"}`, `[1,]`, `{"a":1,}`,
		`01`, `-`, `-0`, `1.`, `1.5e`, `1e+9`, `1E-9`, `"\x"`, `"\u12"`, "\"\x01\"", `tru`, `true`, `nul`, `[`, `{"a"}`,
		`{"a" 1}`, `[1 2]`, `"abc`, `  {"a" : [ true , false , null ] }  `, `{}{}`, strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		`123456789012345678901234567890`, `1e400`, "\"\xff\"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := Validate(b)
		if want := json.Valid(b); (err == nil) != want {
			t.Fatalf("Validate(%q) = %v, json.Valid = %v", b, err, want)
		}
	})
}
