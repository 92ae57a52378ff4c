package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
)

// testRegistry stands in for the real integrations: one type shaped like
// the webhook, so these tests do not depend on any integration package.
func testRegistry() destinations.Registry {
	return destinations.Registry{
		"hook": {
			Type: "hook",
			Settings: destinations.Schema{
				{Name: "url", Type: destinations.String, Required: true},
				{Name: "secret", Type: destinations.String, Secret: true},
				{Name: "headers", Type: destinations.StringMap},
				{Name: "batch", Type: destinations.Int, Default: 1},
			},
		},
		"other": {Type: "other"},
		// regional checks a setting beyond its schema, in New.
		"regional": {
			Type:     "regional",
			Settings: destinations.Schema{{Name: "region", Type: destinations.String, Default: "us"}},
			New: func(cfg destinations.Config) (destinations.Destination, error) {
				if r := cfg.Settings["region"]; r != "us" && r != "eu" {
					return nil, fmt.Errorf("region: expected us or eu, found %q", r)
				}
				return nil, nil
			},
		},
	}
}

// env is a fixed environment for parse.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// minimal is a valid file the error cases below start from.
const minimal = `
sources:
  - name: web
    write_key: wk_web
destinations:
  - name: hooks
    type: hook
    sources: [web]
    settings:
      url: https://example.com/hook
`

func TestLoadValid(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fanout.yaml")
	file := `
listen: 0.0.0.0:9000
public_url: https://t.example.com/
admin_listen: 0.0.0.0:9001
admin_token: ${TOKEN}
dedupe_window: 1h
network:
  allow_private: true
sources:
  - name: web
    write_key: wk_web
    allowed_origins: ["https://Shop.example.com/", "http://localhost:3000"]
    rate_limit: 50
    rate_burst: 100
  - name: ios
    write_key: "$${literal}"
destinations:
  - name: hooks
    type: hook
    sources: [web, ios]
    settings:
      url: https://example.com/hook
      secret: ${SECRET}
      headers:
        X-Team: ${TEAM}
      batch: ${BATCH}
    delivery:
      concurrency: ${CONCURRENCY}
      rate_limit: 2.5
      retry_window: 30m
      timeout: 5s
  - name: bare
    type: other
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"TOKEN": "tok", "SECRET": "s: #not a comment", "TEAM": "growth", "BATCH": "50", "CONCURRENCY": "8"} {
		t.Setenv(k, v)
	}
	cfg, err := Load(path, testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Path:         path,
		Listen:       "0.0.0.0:9000",
		PublicURL:    "https://t.example.com",
		AdminListen:  "0.0.0.0:9001",
		AdminToken:   "tok",
		DataDir:      filepath.Join(dir, "fanout-data"),
		Network:      Network{AllowPrivate: true},
		DedupeWindow: time.Hour,
		Sources: []Source{
			{Name: "web", WriteKey: "wk_web", AllowedOrigins: []string{"https://shop.example.com", "http://localhost:3000"}, RateLimit: 50, RateBurst: 100},
			{Name: "ios", WriteKey: "${literal}"},
		},
		Destinations: []Destination{
			{
				Name:    "hooks",
				Type:    "hook",
				Sources: []string{"web", "ios"},
				Settings: map[string]any{
					"url":     "https://example.com/hook",
					"secret":  "s: #not a comment",
					"headers": map[string]string{"X-Team": "growth"},
					"batch":   50,
				},
				Delivery: delivery.Limits{Concurrency: 8, RateLimit: 2.5, RetryWindow: 30 * time.Minute, Timeout: 5 * time.Second},
			},
			{
				Name:     "bare",
				Type:     "other",
				Settings: map[string]any{},
				Delivery: delivery.Limits{Concurrency: 64, RetryWindow: 4 * time.Hour, Timeout: 10 * time.Second},
			},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Load:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := parse("conf/fanout.yaml", []byte(minimal), testRegistry(), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:8080" || cfg.AdminListen != "127.0.0.1:8081" || cfg.DedupeWindow != 24*time.Hour {
		t.Errorf("defaults: %+v", cfg)
	}
	if want := filepath.Join("conf", "fanout-data"); cfg.DataDir != want {
		t.Errorf("DataDir = %q, want %q", cfg.DataDir, want)
	}
	d := cfg.Destinations[0]
	if d.Delivery != (delivery.Limits{Concurrency: 64, RateLimit: 0, RetryWindow: 4 * time.Hour, Timeout: 10 * time.Second}) {
		t.Errorf("delivery defaults: %+v", d.Delivery)
	}
	if d.Settings["batch"] != 1 {
		t.Errorf("settings default batch = %v, want 1", d.Settings["batch"])
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), testRegistry())
	if !os.IsNotExist(err) {
		t.Errorf("err = %v, want not exist", err)
	}
}

func TestLoadErrors(t *testing.T) {
	// replace edits minimal, so each case shows only what it changes.
	replace := func(old, new string) string {
		if !strings.Contains(minimal, old) {
			panic("minimal has no " + old)
		}
		return strings.Replace(minimal, old, new, 1)
	}
	tests := []struct {
		name string
		file string
		env  map[string]string
		want string
	}{
		{"integration's own check", replace("    type: hook\n    sources: [web]\n    settings:\n      url: https://example.com/hook", "    type: regional\n    sources: [web]\n    settings:\n      region: mars"), nil,
			`fanout.yaml:10: destinations[0].settings.region: expected us or eu, found "mars"`},
		{"empty file", "", nil,
			"fanout.yaml: the file is empty"},
		{"syntax", "sources: [web\n", nil,
			"fanout.yaml:1: did not find expected ',' or ']'"},
		{"two documents", minimal + "---\nlisten: x\n", nil,
			"fanout.yaml:11: the file holds more than one YAML document"},
		{"top level not a mapping", "- a\n", nil,
			`fanout.yaml:1: expected a mapping, found a list`},
		{"unknown top-level key", "lisen: 1\n" + minimal, nil,
			"fanout.yaml:1: lisen: unknown key (known keys: admin_listen, admin_token, cluster, data_dir, dedupe_window, destinations, listen, network, public_url, sources, storage)"},
		{"unknown nested key", replace("    sources: [web]", "    sources: [web]\n    delivery:\n      timeuot: 1s"), nil,
			"fanout.yaml:10: destinations[0].delivery.timeuot: unknown key (known keys: concurrency, rate_limit, retry_window, timeout)"},
		{"bad DSN in a list of servers", "storage:\n  postgres:\n    - host=a dbname=f\n    - postgres://fanout:pw-secret@b:notaport/f\n" + minimal, nil,
			"fanout.yaml:4: storage.postgres[1]: cannot parse `postgres://fanout:xxxxx@b:notaport/f`: invalid port"},
		{"bad DSN alone", "storage:\n  postgres: \"host=a port=x password=pw-secret\"\n" + minimal, nil,
			"fanout.yaml:2: storage.postgres: cannot parse `host=a port=x password=xxxxx`: invalid port"},
		{"empty DSN in a list", "storage:\n  postgres: [\"host=a\", \"\"]\n" + minimal, nil,
			"fanout.yaml:2: storage.postgres[1]: expected a DSN, found an empty string"},
		{"one database listed twice", "storage:\n  postgres:\n    - host=a dbname=f password=one\n    - postgres://u:two@a:5432/f\n" + minimal, nil,
			"fanout.yaml:4: storage.postgres[1]: names the same database as storage.postgres[0]: list each server once"},
		{"postgres as a mapping", "storage:\n  postgres:\n    host: a\n" + minimal, nil,
			"fanout.yaml:3: storage.postgres: expected a single value, found a mapping"},
		{"repeated key", "listen: a:1\nlisten: b:2\n" + minimal, nil,
			"fanout.yaml:2: listen: key is repeated (first at line 1)"},
		{"missing variable", "admin_token: ${FANOUT_ADMIN_TOKEN}\n" + minimal, nil,
			"fanout.yaml:1: admin_token: environment variable FANOUT_ADMIN_TOKEN is not set"},
		{"missing variable in settings", replace("      url: https://example.com/hook", "      url: https://example.com/hook\n      headers:\n        Authorization: Bearer ${API_TOKEN}"), nil,
			"fanout.yaml:12: destinations[0].settings.headers.Authorization: environment variable API_TOKEN is not set"},
		{"unterminated variable", "admin_token: ${TOKEN\n" + minimal, nil,
			`fanout.yaml:1: admin_token: unterminated ${ in "${TOKEN"`},
		{"bad variable name", "admin_token: ${1X}\n" + minimal, nil,
			`fanout.yaml:1: admin_token: invalid environment variable name "1X" in ${1X}`},
		{"no sources", "listen: 127.0.0.1:1\n", nil,
			"fanout.yaml: sources: at least one source is required"},
		{"source name missing", replace("  - name: web\n", "  -\n"), nil,
			"fanout.yaml:4: sources[0].name: required key is missing"},
		{"write key missing", replace("    write_key: wk_web\n", ""), nil,
			"fanout.yaml:3: sources[0].write_key: required key is missing"},
		{"duplicate source", replace("    write_key: wk_web\n", "    write_key: wk_web\n  - name: web\n    write_key: wk_2\n"), nil,
			`fanout.yaml:5: sources[1].name: source "web" is already defined at sources[0]`},
		{"duplicate write key", replace("    write_key: wk_web\n", "    write_key: wk_web\n  - name: ios\n    write_key: wk_web\n"), nil,
			"fanout.yaml:6: sources[1].write_key: same write key as sources[0] (web)"},
		{"destination name missing", replace("  - name: hooks\n", "  -\n"), nil,
			"fanout.yaml:7: destinations[0].name: required key is missing"},
		{"duplicate destination", minimal + "  - name: hooks\n    type: other\n", nil,
			`fanout.yaml:11: destinations[1].name: destination "hooks" is already defined at destinations[0]`},
		{"type missing", replace("    type: hook\n", ""), nil,
			"fanout.yaml:6: destinations[0].type: required key is missing"},
		{"unknown type", replace("type: hook", "type: hookz"), nil,
			`fanout.yaml:7: destinations[0].type: unknown destination type "hookz" (known types: hook, other, regional)`},
		{"unknown source", replace("[web]", "[web, ios]"), nil,
			`fanout.yaml:8: destinations[0].sources[1]: unknown source "ios"`},
		{"source listed twice", replace("[web]", "[web, web]"), nil,
			`fanout.yaml:8: destinations[0].sources[1]: source "web" is listed twice`},
		{"required setting missing", replace("      url: https://example.com/hook\n", "      secret: s\n"), nil,
			"fanout.yaml:9: destinations[0].settings.url: required setting is missing"},
		{"no settings at all", replace("    settings:\n      url: https://example.com/hook\n", ""), nil,
			"fanout.yaml:6: destinations[0].settings.url: required setting is missing"},
		{"setting of the wrong type", replace("      url: https://example.com/hook", "      url: https://example.com/hook\n      batch: many"), nil,
			"fanout.yaml:11: destinations[0].settings.batch: expected int, found string"},
		{"unknown setting", replace("      url: https://example.com/hook", "      url: https://example.com/hook\n      colour: red"), nil,
			"fanout.yaml:11: destinations[0].settings.colour: unknown setting (known settings: url, secret, headers, batch)"},
		{"unknown settings", replace("      url: https://example.com/hook", "      url: https://example.com/hook\n      size: 1\n      colour: red"), nil,
			"fanout.yaml:12: destinations[0].settings: unknown settings colour, size (known settings: url, secret, headers, batch)"},
		{"settings not a mapping", replace("    settings:\n      url: https://example.com/hook\n", "    settings: [url]\n"), nil,
			`fanout.yaml:9: destinations[0].settings: expected a mapping, found a list`},
		{"zero timeout", minimal + "    delivery:\n      timeout: 0s\n", nil,
			"fanout.yaml:12: destinations[0].delivery.timeout: must be greater than zero, found 0s"},
		{"negative retry window", minimal + "    delivery:\n      retry_window: -1h\n", nil,
			"fanout.yaml:12: destinations[0].delivery.retry_window: must be greater than zero, found -1h0m0s"},
		{"zero concurrency", minimal + "    delivery:\n      concurrency: 0\n", nil,
			"fanout.yaml:12: destinations[0].delivery.concurrency: must be greater than zero, found 0"},
		{"negative rate limit", minimal + "    delivery:\n      rate_limit: -5\n", nil,
			"fanout.yaml:12: destinations[0].delivery.rate_limit: must not be negative (0 means no limit), found -5"},
		{"concurrency not a number", minimal + "    delivery:\n      concurrency: lots\n", nil,
			`fanout.yaml:12: destinations[0].delivery.concurrency: expected an integer, found "lots"`},
		{"interpolated concurrency not a number", minimal + "    delivery:\n      concurrency: ${C}\n", map[string]string{"C": "8x"},
			`fanout.yaml:12: destinations[0].delivery.concurrency: expected an integer, found "8x"`},
		{"duration without unit", minimal + "    delivery:\n      timeout: 10\n", nil,
			`fanout.yaml:12: destinations[0].delivery.timeout: expected a duration such as 10s or 4h, found "10"`},
		{"zero dedupe window", "dedupe_window: 0s\n" + minimal, nil,
			"fanout.yaml:1: dedupe_window: must be greater than zero, found 0s"},
		{"bad listen", "listen: 8080\n" + minimal, nil,
			`fanout.yaml:1: listen: expected host:port, found "8080"`},
		{"public admin without token", "admin_listen: 0.0.0.0:8081\n" + minimal, nil,
			`fanout.yaml:1: admin_listen: "0.0.0.0:8081" is not a loopback address, so admin_token is required`},
		{"all interfaces admin without token", "admin_listen: :8081\n" + minimal, nil,
			`fanout.yaml:1: admin_listen: ":8081" is not a loopback address, so admin_token is required`},
		{"empty variable token", "admin_listen: 10.0.0.1:8081\nadmin_token: ${T}\n" + minimal, map[string]string{"T": ""},
			`fanout.yaml:1: admin_listen: "10.0.0.1:8081" is not a loopback address, so admin_token is required`},
		{"bool of the wrong type", "network:\n  allow_private: maybe\n" + minimal, nil,
			`fanout.yaml:2: network.allow_private: expected true or false, found "maybe"`},
		{"list where a value belongs", "listen: [a]\n" + minimal, nil,
			`fanout.yaml:1: listen: expected a single value, found a list`},
		{"sources not a list", "sources: web\n", nil,
			`fanout.yaml:1: sources: expected a list, found "web"`},
		{"size without a number", "storage:\n  min_free: lots\n" + minimal, nil,
			`fanout.yaml:2: storage.min_free: expected a size such as 256MB or 1GB, found "lots"`},
		{"negative size", "storage:\n  min_free: -1MB\n" + minimal, nil,
			`fanout.yaml:2: storage.min_free: expected a size such as 256MB or 1GB, found "-1MB"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse("fanout.yaml", []byte(tt.file), testRegistry(), env(tt.env))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n got %q\nwant %q", err.Error(), tt.want)
			}
		})
	}
}

func TestInterpolate(t *testing.T) {
	lookup := env(map[string]string{"A": "1", "B_2": "two", "EMPTY": ""})
	tests := []struct{ in, want, err string }{
		{in: "plain", want: "plain"},
		{in: "${A}", want: "1"},
		{in: "x${A}y${B_2}z", want: "x1ytwoz"},
		{in: "${EMPTY}", want: ""},
		{in: "$${A}", want: "${A}"},
		{in: "cost $5 and $${not}", want: "cost $5 and ${not}"},
		{in: "${NOPE}", err: "environment variable NOPE is not set"},
		{in: "${}", err: `invalid environment variable name "" in ${}`},
		{in: "a ${A", err: `unterminated ${ in "${A"`},
	}
	for _, tt := range tests {
		got, err := interpolate(tt.in, lookup)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("interpolate(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("interpolate(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestExampleFile keeps fanout.example.yaml loadable. The registry is a
// stand-in with the webhook's settings, so this package need not import it.
func TestExampleFile(t *testing.T) {
	reg := testRegistry()
	reg["webhook"] = reg["hook"]
	cfg, err := Load(filepath.Join("..", "..", "fanout.example.yaml"), reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Sources) != 1 || cfg.Sources[0].WriteKey != "wk_web_example" {
		t.Errorf("sources = %+v", cfg.Sources)
	}
	if got := cfg.Destinations[0].Settings["url"]; got != "http://127.0.0.1:9090/hook" {
		t.Errorf("url = %v", got)
	}
	if !cfg.Network.AllowPrivate {
		t.Error("allow_private is false; the example delivers to a local sink")
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"256MB", 256 << 20, true},
		{"1GB", 1 << 30, true},
		{"1.5 GB", 3 << 29, true},
		{"512kb", 512 << 10, true},
		{"1048576", 1 << 20, true},
		{"100B", 100, true},
		{"0", 0, true},
		{"MB", 0, false},
		{"-5MB", 0, false},
		{"5PB", 0, false},
	} {
		got, ok := parseSize(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseSize(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// storage.postgres takes one DSN, as it always has, or a list of them.
func TestPostgresServers(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"absent", "", nil},
		{"empty string: the embedded store", "storage:\n  postgres: \"\"\n", nil},
		{"one DSN", "storage:\n  postgres: host=a dbname=f\n", []string{"host=a dbname=f"}},
		{"a list of one", "storage:\n  postgres: [\"host=a dbname=f\"]\n", []string{"host=a dbname=f"}},
		{"a list of two", "storage:\n  postgres:\n    - host=a dbname=f\n    - postgres://u:${PW}@b/f\n",
			[]string{"host=a dbname=f", "postgres://u:pw@b/f"}},
		{"same database name on two hosts", "storage:\n  postgres: [\"host=a dbname=f\", \"host=b dbname=f\"]\n",
			[]string{"host=a dbname=f", "host=b dbname=f"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parse("fanout.yaml", []byte(tt.yaml+minimal), testRegistry(), env(map[string]string{"PW": "pw"}))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.Storage.Postgres, tt.want) {
				t.Errorf("Storage.Postgres = %q, want %q", cfg.Storage.Postgres, tt.want)
			}
		})
	}
}
