package destinations

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTokenCache(t *testing.T) {
	t0 := time.Unix(1767323100, 0)
	type step struct {
		op      string // get, worked, failed
		now     time.Time
		fetch   string // the token fetch returns; "" means fetch must not be called; "!" an error
		expires time.Time
		auth    string
		want    string // get: the token; failed: "true" or "false"
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"cached until dropped", []step{
			{op: "get", now: t0, fetch: "a", want: "a"},
			{op: "get", now: t0.Add(24 * time.Hour), want: "a"},
		}},
		{"cached until expiry", []step{
			{op: "get", now: t0, fetch: "a", expires: t0.Add(time.Hour), want: "a"},
			{op: "get", now: t0.Add(59 * time.Minute), want: "a"},
			{op: "get", now: t0.Add(time.Hour), fetch: "b", expires: t0.Add(2 * time.Hour), want: "b"},
		}},
		{"expired at once", []step{
			{op: "get", now: t0, fetch: "a", expires: t0.Add(-time.Minute), want: "a"},
			{op: "get", now: t0, fetch: "b", want: "b"},
		}},
		{"error caches nothing", []step{
			{op: "get", now: t0, fetch: "!", want: ""},
			{op: "get", now: t0, fetch: "a", want: "a"},
		}},
		{"failed drops a token that never worked", []step{
			{op: "get", now: t0, fetch: "a", want: "a"},
			{op: "failed", auth: "Bearer a", want: "false"},
			{op: "get", now: t0, fetch: "b", want: "b"},
		}},
		{"failed drops a token that had worked", []step{
			{op: "get", now: t0, fetch: "a", want: "a"},
			{op: "worked", auth: "Bearer a"},
			{op: "failed", auth: "Bearer a", want: "true"},
			{op: "get", now: t0, fetch: "b", want: "b"},
		}},
		{"a new token starts unproven", []step{
			{op: "get", now: t0, fetch: "a", want: "a"},
			{op: "worked", auth: "Bearer a"},
			{op: "failed", auth: "Bearer a", want: "true"},
			{op: "get", now: t0, fetch: "b", want: "b"},
			{op: "failed", auth: "Bearer b", want: "false"},
		}},
		{"an older token's failure keeps the newer", []step{
			{op: "get", now: t0, fetch: "b", want: "b"},
			{op: "failed", auth: "Bearer a", want: "true"},
			{op: "worked", auth: "Bearer a"},
			{op: "failed", auth: "Bearer b", want: "false"},
		}},
		{"failed on an empty cache", []step{
			{op: "failed", auth: "Bearer a", want: "true"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c TokenCache
			for i, s := range tt.steps {
				switch s.op {
				case "get":
					called := false
					got, err := c.Get(s.now, func() (string, time.Time, error) {
						called = true
						if s.fetch == "!" {
							return "", time.Time{}, errors.New("token endpoint down")
						}
						return s.fetch, s.expires, nil
					})
					if called != (s.fetch != "") {
						t.Errorf("step %d: fetch called %v, want %v", i, called, s.fetch != "")
					}
					if got != s.want || (err != nil) != (s.fetch == "!") {
						t.Errorf("step %d: Get = %q, %v; want %q", i, got, err, s.want)
					}
				case "worked":
					c.Worked(s.auth)
				case "failed":
					if got := c.Failed(s.auth); (got && s.want != "true") || (!got && s.want != "false") {
						t.Errorf("step %d: Failed(%q) = %v, want %s", i, s.auth, got, s.want)
					}
				}
			}
		})
	}
}

// TestTokenCacheOneFetch checks that concurrent callers share one fetch.
func TestTokenCacheOneFetch(t *testing.T) {
	var c TokenCache
	var fetches atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			tok, err := c.Get(time.Unix(0, 0), func() (string, time.Time, error) {
				fetches.Add(1)
				return "a", time.Time{}, nil
			})
			if tok != "a" || err != nil {
				t.Errorf("Get = %q, %v", tok, err)
			}
		})
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}
