package registry

import (
	"regexp"
	"testing"
)

// TestAll checks what every integration must declare, so that a new one
// missing a piece fails here rather than at a user's start-up.
func TestAll(t *testing.T) {
	all := All()
	if len(all) == 0 {
		t.Fatal("no integrations")
	}
	if _, ok := all["webhook"]; !ok {
		t.Error("webhook missing")
	}
	typeName := regexp.MustCompile(`^[a-z0-9_]+$`)
	for name, in := range all {
		if name != in.Type {
			t.Errorf("%s listed under %q", in.Type, name)
		}
		if !typeName.MatchString(in.Type) {
			t.Errorf("type %q: want lower case letters, digits and underscores", in.Type)
		}
		if in.New == nil {
			t.Errorf("%s: no New", in.Type)
		}
		seen := map[string]bool{}
		for _, f := range in.Settings {
			if f.Description == "" {
				t.Errorf("%s: setting %s has no description", in.Type, f.Name)
			}
			if seen[f.Name] {
				t.Errorf("%s: setting %s declared twice", in.Type, f.Name)
			}
			seen[f.Name] = true
		}
	}
	if len(All()) != len(integrations) {
		t.Error("two integrations share a type name")
	}
}
