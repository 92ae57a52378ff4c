package destinations

import (
	"strings"
	"testing"
)

func TestCheckURL(t *testing.T) {
	tests := []struct {
		value string
		ok    bool
	}{
		{"https://api.example.com", true},
		{"http://127.0.0.1:8080/", true},
		{"https://x.example.com/base/path?q=1", true},
		{"", false},
		{"api.example.com", false},
		{"ftp://x", false},
		{"https://", false},
		{"https:///path", false},
		{"://x", false},
		{"https://exa mple.com", false},
	}
	for _, tt := range tests {
		if got := IsHTTPURL(tt.value); got != tt.ok {
			t.Errorf("IsHTTPURL(%q) = %v, want %v", tt.value, got, tt.ok)
		}
		err := CheckURL("api_url", tt.value)
		if tt.ok && err != nil {
			t.Errorf("CheckURL(%q) = %v, want nil", tt.value, err)
		}
		if !tt.ok && (err == nil || !strings.HasPrefix(err.Error(), "api_url: expected an http or https URL, found ")) {
			t.Errorf("CheckURL(%q) = %v, want an error naming api_url", tt.value, err)
		}
	}
}

func TestValidateTrimsStrings(t *testing.T) {
	s := Schema{
		{Name: "api_key", Type: String, Required: true},
		{Name: "region", Type: String, Default: "us"},
		{Name: "batch", Type: Int},
	}
	got, err := s.Validate(map[string]any{"api_key": " k1\n", "region": "  ", "batch": 3})
	if err != nil {
		t.Fatal(err)
	}
	set := Settings(got)
	if set.String("api_key") != "k1" || set.String("region") != "" || set.Int("batch") != 3 {
		t.Errorf("Validate = %v, want api_key trimmed, a blank region blank and batch 3", got)
	}
	if set.Bool("batch") || set.StringMap("nope") != nil || set.StringList("api_key") != nil {
		t.Errorf("an accessor of another type, or of a missing key, should read the zero value")
	}
	if _, err := s.Validate(map[string]any{"api_key": " \t"}); err == nil || err.Error() != "api_key: required setting is missing" {
		t.Errorf("a blank required setting: err = %v, want it missing", err)
	}
}

func TestRegionURL(t *testing.T) {
	regions := []Region{{"us", "https://api.acme.test"}, {"eu", "https://api-eu.acme.test/"}, {"in", "https://api-in.acme.test"}}
	tests := []struct {
		settings Settings
		want     string
		err      string
	}{
		{Settings{}, "https://api.acme.test", ""},
		{Settings{"region": "eu"}, "https://api-eu.acme.test", ""},
		{Settings{"region": "eu", "api_url": "http://127.0.0.1:9/base/"}, "http://127.0.0.1:9/base", ""},
		{Settings{"region": "mars"}, "", `region: expected us, eu or in, found "mars"`},
		{Settings{"api_url": "api.acme.test"}, "", `api_url: expected an http or https URL, found "api.acme.test"`},
	}
	for _, tt := range tests {
		got, err := tt.settings.RegionURL(regions)
		if got != tt.want || (err == nil) != (tt.err == "") || err != nil && err.Error() != tt.err {
			t.Errorf("RegionURL(%v) = %q, %v; want %q, %q", tt.settings, got, err, tt.want, tt.err)
		}
	}
	if _, err := (Settings{"region": "x"}).RegionURL(regions[:2]); err == nil || err.Error() != `region: expected us or eu, found "x"` {
		t.Errorf("two regions: err = %v", err)
	}
}
