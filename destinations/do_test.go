package destinations

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// TestConfigSenderDo checks the path of an integration's own requests: the
// answer read like Send's, the rate limit taken from, and errors that name
// no URL.
func TestConfigSenderDo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Key") != "k" || r.URL.Query().Get("secret") != "s3" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error":"slow down"}`))
	}))
	defer srv.Close()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	lim := rate.NewLimiter(rate.Every(time.Hour), 1)
	cfg := Config{Name: "d", Client: srv.Client(), Limiter: lim}
	s := cfg.Sender(func() time.Time { return at })

	resp, err := s.Do(context.Background(), &Request{Method: http.MethodGet, URL: srv.URL + "?secret=s3", Header: http.Header{"X-Key": {"k"}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 429 || string(resp.Body) != `{"error":"slow down"}` || !resp.ReceivedAt.Equal(at) {
		t.Errorf("Do = %d %q at %v, want the 429, its body, stamped by the Config's clock", resp.StatusCode, resp.Body, resp.ReceivedAt)
	}
	if r := ClassifyStatus(resp, resp.ReceivedAt); r.RetryAfter != 7*time.Second {
		t.Errorf("RetryAfter = %v, want 7s", r.RetryAfter)
	}
	if lim.Tokens() >= 1 {
		t.Errorf("the request took no token of the destination's limiter")
	}

	// The limiter is empty for an hour: the next request cannot go.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := s.Do(ctx, &Request{URL: srv.URL}); err == nil || !strings.Contains(err.Error(), "rate_limit") {
		t.Errorf("Do beyond the rate limit: err = %v, want one naming rate_limit", err)
	}

	free := Config{Client: srv.Client()}.Sender(nil)
	srv.Close()
	_, err = free.Do(context.Background(), &Request{URL: srv.URL + "/?secret=s3"})
	if err == nil || strings.Contains(err.Error(), "s3") || errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Do to a closed server: err = %v, want a transport error without the URL", err)
	}
	_, err = free.Do(context.Background(), &Request{URL: "http://a b/"})
	if !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Do with a bad URL: err = %v, want ErrInvalidRequest", err)
	}
	if NewLimiter(0) != nil || NewLimiter(50).Burst() != 5 || NewLimiter(2).Burst() != 1 {
		t.Errorf("NewLimiter: want nil for no limit, a tenth of a second's burst, at least 1")
	}
}
