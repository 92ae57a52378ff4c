package fanouttest

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Track is a track call as the tests send it to the tracking API.
type Track struct {
	Type       string         `json:"type"` // "track"
	MessageID  string         `json:"messageId"`
	UserID     string         `json:"userId"`
	Event      string         `json:"event"`
	Properties map[string]any `json:"properties"`
}

// NewRequest is a POST of body as JSON to url, a path of the tracking API,
// with writeKey as the Basic auth user name, as the Segment SDKs send it.
func NewRequest(url, writeKey string, body []byte) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(writeKey, "")
	return req, nil
}

// Post sends body as JSON to path (such as "/v1/batch") of the tracking API
// at trackingURL, with writeKey as the Basic auth user name, and fails the
// test unless fanout answers 200.
func Post(t testing.TB, trackingURL, writeKey, path, body string) {
	t.Helper()
	req, err := NewRequest(trackingURL+path, writeKey, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: status %d: %s", path, res.StatusCode, b)
	}
}

// Metrics returns the lines of the server's admin /metrics (the Prometheus
// text format) that start with prefix, and fails the test if it cannot
// read them.
func (s *Server) Metrics(t testing.TB, prefix string) []string {
	t.Helper()
	res, err := http.Get(s.AdminURL + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("metrics: status %d", res.StatusCode)
	}
	var lines []string
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			lines = append(lines, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return lines
}
