package registry

import (
	"regexp"
	"testing"
)

// TestAll checks what every integration must declare, so that a new one
// missing a piece fails here rather than at a user's start-up.
func TestAll(t *testing.T) {
	all := All()
	// The integrations fanout ships: one dropped from the list fails here.
	for _, name := range []string{
		"mixpanel", "amplitude", "ga4", "intercom", "hubspot", "braze",
		"customerio", "slack", "salesforce", "marketo", "webhook",
	} {
		if _, ok := all[name]; !ok {
			t.Errorf("%s is not registered", name)
		}
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
