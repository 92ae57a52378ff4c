package ingest

import "testing"

// TestFieldRule keeps fieldRule's switch and the fieldRules table in step.
func TestFieldRule(t *testing.T) {
	if len(fieldRules) > 16 {
		t.Fatalf("%d rules do not fit checkFields' 16-bit set", len(fieldRules))
	}
	for i, r := range fieldRules {
		if got := fieldRule([]byte(r.name)); got != i {
			t.Errorf("fieldRule(%q) = %d, want %d", r.name, got, i)
		}
	}
	if got := fieldRule([]byte("event")); got != -1 {
		t.Errorf(`fieldRule("event") = %d, want -1`, got)
	}
}
