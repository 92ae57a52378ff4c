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
