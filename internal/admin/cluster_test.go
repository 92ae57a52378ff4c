package admin

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// GET /api/v1/cluster answers 404 outside a cluster, the view inside one,
// and 503 when the view cannot be read.
func TestClusterRoute(t *testing.T) {
	get := func(h http.Handler) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/api/v1/cluster", nil))
		return w
	}
	if w := get(New(Options{})); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "storage.postgres") {
		t.Errorf("without a cluster: %d %s", w.Code, w.Body)
	}
	view := func(ctx context.Context) (any, error) { return map[string]any{"self": 7}, nil }
	if w := get(New(Options{Cluster: view})); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"self": 7`) {
		t.Errorf("in a cluster: %d %s", w.Code, w.Body)
	}
	down := func(ctx context.Context) (any, error) { return nil, errors.New("database down") }
	if w := get(New(Options{Cluster: down})); w.Code != http.StatusServiceUnavailable {
		t.Errorf("view failing: %d %s", w.Code, w.Body)
	}
}
