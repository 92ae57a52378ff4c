package destinations

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// FieldType is the type of a setting's value.
type FieldType string

// The types a setting can have.
const (
	String     FieldType = "string"
	Int        FieldType = "int"
	Bool       FieldType = "bool"
	StringList FieldType = "string_list"
	StringMap  FieldType = "string_map"
)

// Field is one setting of an integration.
type Field struct {
	Name        string    `json:"name"`
	Type        FieldType `json:"type"`
	Required    bool      `json:"required"`
	Secret      bool      `json:"secret"`
	Default     any       `json:"default,omitempty"`
	Description string    `json:"description"`
}

// Schema is the list of settings an integration takes.
type Schema []Field

// Validate checks settings against the schema and returns them normalized:
// defaults filled in, strings trimmed of surrounding space (a value pasted
// with a trailing newline is the value without it; a blank one is missing
// when required, else an explicit ""), integers as int, lists as []string, maps as map[string]string.
// The error names the offending key.
func (s Schema) Validate(settings map[string]any) (map[string]any, error) {
	out := make(map[string]any, len(s))
	known := make(map[string]bool, len(s))
	for _, f := range s {
		known[f.Name] = true
		v, ok := settings[f.Name]
		blank := false
		if str, isString := v.(string); isString && str != "" {
			v = strings.TrimSpace(str)
			blank = v == ""
		}
		if !ok || v == nil || v == "" && !blank || blank && f.Required {
			if f.Required {
				return nil, fmt.Errorf("%s: required setting is missing", f.Name)
			}
			if f.Default != nil {
				out[f.Name] = f.Default
			}
			continue
		}
		nv, err := f.Type.convert(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
		out[f.Name] = nv
	}
	var unknown []string
	for k := range settings {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("%s: unknown setting", strings.Join(unknown, ", "))
	}
	return out, nil
}

func (t FieldType) convert(v any) (any, error) {
	switch t {
	case String:
		if s, ok := v.(string); ok {
			return s, nil
		}
	case Int:
		switch n := v.(type) {
		case int:
			return n, nil
		case int64:
			return int(n), nil
		case float64:
			if n == float64(int(n)) {
				return int(n), nil
			}
		}
	case Bool:
		if b, ok := v.(bool); ok {
			return b, nil
		}
	case StringList:
		if l, ok := v.([]any); ok {
			out := make([]string, 0, len(l))
			for _, e := range l {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("expected a list of strings, found %T in it", e)
				}
				out = append(out, s)
			}
			return out, nil
		}
		if l, ok := v.([]string); ok {
			return l, nil
		}
	case StringMap:
		if m, ok := v.(map[string]any); ok {
			out := make(map[string]string, len(m))
			for k, e := range m {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("expected a map of strings, found %T under %q", e, k)
				}
				out[k] = s
			}
			return out, nil
		}
		if m, ok := v.(map[string]string); ok {
			return m, nil
		}
	}
	return nil, fmt.Errorf("expected %s, found %T", t, v)
}

// IsHTTPURL reports whether s is an absolute http or https URL with a
// host, as a setting naming an endpoint must be. An integration whose
// setting has a more specific form (an instance URL without a path, a
// credential that must not be quoted) checks that too and says what it
// expects in its own words; the others use CheckURL.
func IsHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// CheckURL returns an error naming the setting key unless value is an
// absolute http or https URL with a host (IsHTTPURL): for an API base URL
// override (`api_url`) or an endpoint the user picks (the webhook's `url`).
func CheckURL(key, value string) error {
	if !IsHTTPURL(value) {
		return fmt.Errorf("%s: expected an http or https URL, found %q", key, value)
	}
	return nil
}

// Settings are a destination's validated settings (Config.Settings), keyed
// by field name. Validate has given each value its field's Go type, so the
// accessors only read it: a missing key, or one of another type, reads as
// the zero value.
type Settings map[string]any

// String returns the string setting key, "" when unset.
func (s Settings) String(key string) string { v, _ := s[key].(string); return v }

// Int returns the int setting key, 0 when unset.
func (s Settings) Int(key string) int { v, _ := s[key].(int); return v }

// Bool returns the bool setting key, false when unset.
func (s Settings) Bool(key string) bool { v, _ := s[key].(bool); return v }

// StringList returns the string_list setting key, nil when unset.
func (s Settings) StringList(key string) []string { v, _ := s[key].([]string); return v }

// StringMap returns the string_map setting key, nil when unset.
func (s Settings) StringMap(key string) map[string]string {
	v, _ := s[key].(map[string]string)
	return v
}

// Region is a data center an API is reached at, picked by a `region`
// setting.
type Region struct {
	Name string // the setting's value: us, eu, ...
	URL  string // the API base URL
}

// RegionURL returns the API base URL of a destination whose `region`
// setting picks one of regions (the first when unset) and whose `api_url`
// setting overrides it, without a trailing slash. The error names the
// setting that is wrong and says what it takes.
func (s Settings) RegionURL(regions []Region) (string, error) {
	if base := s.String("api_url"); base != "" {
		if err := CheckURL("api_url", base); err != nil {
			return "", err
		}
		return strings.TrimRight(base, "/"), nil
	}
	region := s.String("region")
	if region == "" {
		region = regions[0].Name
	}
	names := make([]string, len(regions))
	for i, r := range regions {
		if r.Name == region {
			return strings.TrimRight(r.URL, "/"), nil
		}
		names[i] = r.Name
	}
	expected := names[0]
	if n := len(names); n > 1 {
		expected = strings.Join(names[:n-1], ", ") + " or " + names[n-1]
	}
	return "", fmt.Errorf("region: expected %s, found %q", expected, region)
}

// Registry maps an integration's type name to its description.
type Registry map[string]*Integration
