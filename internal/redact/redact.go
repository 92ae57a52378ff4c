// Package redact removes credentials from what fanout shows: destination
// settings, samples of the requests and responses of failed attempts, and
// failure reasons.
package redact

import (
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/fanout/fanout/destinations"
)

// Redacted replaces every secret the Redactor finds.
const Redacted = "[redacted]"

// minSecretLen is the shortest secret value replaced wherever it appears.
// Shorter ones ("1", "on") would blank out unrelated text; they are still
// redacted where they are known to be: in headers and settings.
const minSecretLen = 4

// Redactor removes credentials from what fanout shows: settings, request
// and response samples, reasons. It knows secrets two ways: by name (header
// names that carry credentials) and by value (the values of settings marked
// Secret and the sources' write keys), which it replaces wherever they
// appear, in a URL, a header or a body. The zero value redacts by name only.
type Redactor struct {
	values   []string // longest first, so a secret containing another goes whole
	replacer *strings.Replacer
}

// New returns a Redactor for the given secret values.
func New(secrets []string) *Redactor {
	seen := map[string]bool{}
	var vals []string
	for _, s := range withCredentials(secrets) {
		if len(s) >= minSecretLen && !seen[s] {
			seen[s] = true
			vals = append(vals, s)
		}
	}
	sort.Slice(vals, func(i, j int) bool { return len(vals[i]) > len(vals[j]) })
	r := &Redactor{values: vals}
	if len(vals) > 0 {
		pairs := make([]string, 0, 2*len(vals))
		for _, v := range vals {
			pairs = append(pairs, v, Redacted)
			// The same secret percent-encoded, as it appears in a URL query.
			if e := url.QueryEscape(v); e != v {
				pairs = append(pairs, e, Redacted)
			}
		}
		r.replacer = strings.NewReplacer(pairs...)
	}
	return r
}

// withCredentials adds, for each secret that is an Authorization-style value
// ("Bearer sk_live_...", "Basic ...", "Token ..."), the credential alone: a
// destination that echoes the key back in its response does so without the
// scheme.
func withCredentials(secrets []string) []string {
	out := append([]string(nil), secrets...)
	for _, s := range secrets {
		if scheme, cred, ok := strings.Cut(s, " "); ok && !strings.Contains(cred, " ") {
			switch strings.ToLower(scheme) {
			case "bearer", "basic", "token":
				out = append(out, cred)
			}
		}
	}
	return out
}

// SecretValues returns the values of the settings that schema marks
// Secret (strings, and every element of lists and maps), and the values of
// credential-named query parameters (api_key=, token=) in any URL setting:
// users put API keys in URLs whatever the schema says.
func SecretValues(schema destinations.Schema, settings map[string]any) []string {
	var out []string
	for _, f := range schema {
		if s, ok := settings[f.Name].(string); ok && !f.Secret {
			out = append(out, queryCredentials(s)...)
		}
		if !f.Secret {
			continue
		}
		switch v := settings[f.Name].(type) {
		case string:
			out = append(out, v)
		case []string:
			out = append(out, v...)
		case map[string]string:
			for _, e := range v {
				out = append(out, e)
			}
		}
	}
	return out
}

// queryCredentials returns the values of the credential-named query
// parameters of s, when s is a URL.
func queryCredentials(s string) []string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.RawQuery == "" {
		return nil
	}
	var out []string
	for k, vs := range u.Query() {
		if SecretHeader(k) {
			out = append(out, vs...)
		}
	}
	if p, ok := u.User.Password(); ok {
		out = append(out, p)
	}
	return out
}

// Settings returns a copy of settings with the fields that schema marks
// Secret replaced: a secret map keeps its keys (header names are not
// secret, and show what is configured) with each value replaced.
func Settings(schema destinations.Schema, settings map[string]any) map[string]any {
	secret := map[string]bool{}
	for _, f := range schema {
		if f.Secret {
			secret[f.Name] = true
		}
	}
	out := make(map[string]any, len(settings))
	for k, v := range settings {
		if !secret[k] {
			if s, ok := v.(string); ok {
				v = New(queryCredentials(s)).URL(s)
			}
			out[k] = v
			continue
		}
		switch v := v.(type) {
		case map[string]string:
			m := make(map[string]string, len(v))
			for mk := range v {
				m[mk] = Redacted
			}
			out[k] = m
		case string:
			if v != "" {
				out[k] = Redacted
			} else {
				out[k] = ""
			}
		default:
			out[k] = Redacted
		}
	}
	return out
}

// String returns s with every known secret value replaced.
func (r *Redactor) String(s string) string {
	if r == nil || r.replacer == nil {
		return s
	}
	return r.replacer.Replace(s)
}

// URL returns u with secret values and any user information replaced.
func (r *Redactor) URL(u string) string {
	if p, err := url.Parse(u); err == nil && p.User != nil {
		p.User = url.User(Redacted)
		u = p.String()
	}
	return r.String(u)
}

// Header returns a copy of h with the values of credential headers
// replaced and every known secret value replaced in the others.
func (r *Redactor) Header(h http.Header) http.Header {
	if h == nil {
		return nil
	}
	out := make(http.Header, len(h))
	for k, vs := range h {
		c := make([]string, len(vs))
		for i, v := range vs {
			if SecretHeader(k) {
				c[i] = Redacted
			} else {
				c[i] = r.String(v)
			}
		}
		out[k] = c
	}
	return out
}

// credentialWords are the parts of a header name that say it carries a
// credential: Authorization, X-Api-Key, Api-Key, X-Auth-Token, Cookie...
// Webhook-Signature is included: not a secret itself, but an oracle for one.
var credentialWords = []string{"auth", "key", "token", "secret", "password", "cookie", "signature", "session"}

// SecretHeader reports whether a header's name says it carries a
// credential.
func SecretHeader(name string) bool {
	n := strings.ToLower(name)
	for _, w := range credentialWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
