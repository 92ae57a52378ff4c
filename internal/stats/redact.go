package stats

import (
	"net/http"
	"net/url"
	"regexp"
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

// NewRedactor returns a Redactor for the given secret values.
func NewRedactor(secrets []string) *Redactor {
	seen := map[string]bool{}
	var vals []string
	for _, s := range secrets {
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

// SecretValues returns the values of the settings that schema marks
// Secret: strings, and every element of lists and maps.
func SecretValues(schema destinations.Schema, settings map[string]any) []string {
	var out []string
	for _, f := range schema {
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

var (
	uuidRE = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)
	// idRE matches tokens that hold a digit and are long or mixed enough
	// to be identifiers: hex strings, ids like usr_12ab, request ids.
	idRE  = regexp.MustCompile(`\b[A-Za-z_\-]*[0-9][A-Za-z0-9_\-]{5,}\b|\b[0-9a-fA-F]{12,}\b`)
	numRE = regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)
)

// Normalize turns a failure reason into the key of its issue group: ids and
// numbers are replaced, so that "user 123 not found" and "user 456 not
// found" are one issue. The "HTTP <code> <text>" prefix that StatusReason
// writes is kept as it is; the status code is part of the key anyway.
func Normalize(reason string) string {
	prefix, rest := "", reason
	if strings.HasPrefix(reason, "HTTP ") {
		if i := strings.Index(reason, ": "); i > 0 {
			prefix, rest = reason[:i+2], reason[i+2:]
		} else {
			return reason
		}
	}
	rest = uuidRE.ReplaceAllString(rest, "<id>")
	rest = idRE.ReplaceAllString(rest, "<id>")
	rest = numRE.ReplaceAllString(rest, "<n>")
	return prefix + rest
}
