package config

import (
	"net/url"
	"strings"
)

// validatePublic checks the keys of a source that concern browsers and
// phones, and normalizes its allowed origins to the form browsers send in
// the Origin header: lower case, no trailing slash.
func (d *decoder) validatePublic(s *Source, path string) error {
	for j, o := range s.AllowedOrigins {
		key := path + ".allowed_origins"
		if o == "*" {
			continue
		}
		norm, ok := origin(o)
		if !ok {
			return d.invalid(key, "expected an origin such as https://shop.example.com (scheme and host, no path) or \"*\", found %q at index %d", o, j)
		}
		s.AllowedOrigins[j] = norm
	}
	if s.RateLimit < 0 {
		return d.invalid(path+".rate_limit", "must be 0 (no limit) or more events per second, found %g", s.RateLimit)
	}
	if s.RateBurst < 0 {
		return d.invalid(path+".rate_burst", "must be 0 (the default) or more events, found %d", s.RateBurst)
	}
	if s.RateBurst > 0 && s.RateLimit == 0 {
		return d.invalid(path+".rate_burst", "is set to %d but rate_limit is 0 (no limit): set rate_limit too", s.RateBurst)
	}
	return nil
}

// origin returns o as a browser's Origin header spells it, and whether o is
// an http or https origin at all.
func origin(o string) (string, bool) {
	u, err := url.Parse(strings.TrimSuffix(o, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", false
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), true
}

// publicURL checks public_url, and defaults it to the listen address, which
// is right when the tracking API is reached directly.
func (d *decoder) publicURL(c *Config) error {
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.Listen
		return nil
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return d.invalid("public_url", "expected an http or https URL such as https://t.example.com, found %q", c.PublicURL)
	}
	c.PublicURL = strings.TrimSuffix(c.PublicURL, "/")
	return nil
}
