package redact

import (
	"testing"

	"github.com/fanout/fanout/destinations"
)

func TestRedactor(t *testing.T) {
	schema := destinations.Schema{{Name: "url", Type: destinations.String}, {Name: "key", Type: destinations.String, Secret: true},
		{Name: "headers", Type: destinations.StringMap, Secret: true}}
	settings := map[string]any{"url": "https://api.example.com/v1?token=tok123456&x=1", "key": "k-secret-1",
		"headers": map[string]string{"X-Custom": "hdr-secret-2", "Authorization": "Bearer sk_live_echoed"}}
	r := New(SecretValues(schema, settings))
	// The bearer credential alone is redacted too: APIs echo keys back
	// without the scheme.
	got := r.String("a k-secret-1 b hdr-secret-2 c tok123456 d sk_live_echoed")
	if got != "a [redacted] b [redacted] c [redacted] d [redacted]" {
		t.Errorf("String = %q", got)
	}
	red := Settings(schema, settings)
	if red["key"] != Redacted || red["headers"].(map[string]string)["X-Custom"] != Redacted ||
		red["url"] != "https://api.example.com/v1?token=[redacted]&x=1" {
		t.Errorf("Settings = %v", red)
	}
	h := r.Header(map[string][]string{"Authorization": {"Bearer x"}, "X-Custom": {"hdr-secret-2"}, "Accept": {"json"}})
	if h.Get("Authorization") != Redacted || h.Get("X-Custom") != Redacted || h.Get("Accept") != "json" {
		t.Errorf("Header = %v", h)
	}
}
