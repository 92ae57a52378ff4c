package destinations

import (
	"sync"
	"time"
)

// TokenCache holds the OAuth access token that a destination's requests
// share: it fetches one when there is none or it has expired, and forgets
// it when the API refuses it, so that the next request fetches another.
// The zero value is empty and ready to use. A TokenCache is safe for
// concurrent use.
type TokenCache struct {
	mu      sync.Mutex
	token   string
	expires time.Time // the zero time: until Failed drops it
	proven  bool      // a request with token got an answer other than 401
}

// Get returns the cached token unless there is none or now is past its
// expiry; then it calls fetch and caches the token fetch returns until
// expires, the zero time meaning until Failed drops it. Concurrent callers
// wait for the one fetch rather than each fetching a token. An error from
// fetch is returned as is, and nothing is cached.
func (c *TokenCache) Get(now time.Time, fetch func() (token string, expires time.Time, err error)) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && (c.expires.IsZero() || now.Before(c.expires)) {
		return c.token, nil
	}
	token, expires, err := fetch()
	if err != nil {
		return "", err
	}
	c.token, c.expires, c.proven = token, expires, false
	return token, nil
}

// Worked records that a request whose Authorization header was auth
// ("Bearer <token>") got an answer other than a refusal of the token.
func (c *TokenCache) Worked(auth string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && auth == "Bearer "+c.token {
		c.proven = true
	}
}

// Failed records that the API refused the token a request carried in its
// Authorization header auth ("Bearer <token>"). That token is dropped, so
// that the next Get fetches another; a newer token stays. It reports
// whether the token had worked before (Worked), which tells a token that
// expired from one the API never accepted (credentials for another
// instance). A token already replaced counts as having worked: another
// request saw it fail first, and the retry will use the new one.
func (c *TokenCache) Failed(auth string) (hadWorked bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == "" || auth != "Bearer "+c.token {
		return true
	}
	hadWorked = c.proven
	c.token, c.expires, c.proven = "", time.Time{}, false
	return hadWorked
}
