package config

import (
	"fmt"
	"strings"
)

// interpolate replaces each ${NAME} in s with the value lookup returns for
// NAME. "$${" stands for a literal "${", so a value can contain the sequence
// without it being read as a reference; a "$" not followed by "{" is kept as
// it is. A name lookup does not know is an error naming it: starting with a
// silently empty secret is worse than not starting.
func interpolate(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' {
			// "$${": drop one "$" and keep "${" literally.
			b.WriteString(s[:i])
			b.WriteString("{")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		rest := s[i+2:]
		end := strings.IndexByte(rest, '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s[i:])
		}
		name := rest[:end]
		if !validVarName(name) {
			return "", fmt.Errorf("invalid environment variable name %q in ${%s}", name, name)
		}
		v, ok := lookup(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		b.WriteString(v)
		s = rest[end+1:]
	}
}

// validVarName reports whether name is a POSIX shell variable name.
func validVarName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
