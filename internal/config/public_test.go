package config

import (
	"strings"
	"testing"
)

// TestPublicKeys checks the keys of the browser and mobile libraries:
// public_url and each source's allowed_origins, rate_limit and rate_burst.
func TestPublicKeys(t *testing.T) {
	cfg, err := parse("fanout.yaml", []byte(minimal), testRegistry(), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PublicURL != "http://127.0.0.1:8080" {
		t.Errorf("default public_url %q, want the listen address", cfg.PublicURL)
	}
	if s := cfg.Sources[0]; s.AllowedOrigins != nil || s.RateLimit != 0 || s.RateBurst != 0 {
		t.Errorf("source defaults: %+v", s)
	}

	source := "    write_key: wk_web\n"
	tests := []struct {
		name, old, new, want string
	}{
		{"origin with a path", source, source + "    allowed_origins: [https://shop.example.com/cart]\n",
			`fanout.yaml:5: sources[0].allowed_origins: expected an origin such as https://shop.example.com (scheme and host, no path) or "*", found "https://shop.example.com/cart" at index 0`},
		{"origin without scheme", source, source + "    allowed_origins: [\"*\", shop.example.com]\n",
			`found "shop.example.com" at index 1`},
		{"negative rate_limit", source, source + "    rate_limit: -1\n",
			"fanout.yaml:5: sources[0].rate_limit: must be 0 (no limit) or more events per second, found -1"},
		{"burst without limit", source, source + "    rate_burst: 10\n",
			"fanout.yaml:5: sources[0].rate_burst: is set to 10 but rate_limit is 0 (no limit): set rate_limit too"},
		{"public_url without scheme", "sources:\n", "public_url: t.example.com\nsources:\n",
			`public_url: expected an http or https URL such as https://t.example.com, found "t.example.com"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := strings.Replace(minimal, tt.old, tt.new, 1)
			_, err := parse("fanout.yaml", []byte(file), testRegistry(), env(nil))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
