// Package integrations_test runs fanout end to end with real integrations:
// fanout serve delivers to Mixpanel and Amplitude destinations whose API base
// URL points at loopback servers that answer as the APIs do, and the test
// checks that events sent through the tracking API arrive transformed.
package integrations_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/test/fanouttest"
)

var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

// api stands in for a third-party API: it records each request and answers
// with the success body its documentation shows.
type api struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path, auth string
	body               []byte
}

func newAPI(t *testing.T, answer string) *api {
	a := &api{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.reqs = append(a.reqs, recorded{r.Method, r.URL.Path, r.Header.Get("Authorization"), body})
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *api) requests() []recorded {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]recorded(nil), a.reqs...)
}

func TestMixpanelAndAmplitudeEndToEnd(t *testing.T) {
	mixpanel := newAPI(t, `{"code": 200, "num_records_imported": 1, "status": "OK"}`)
	amplitude := newAPI(t, `{"code": 200, "events_ingested": 1, "payload_size_bytes": 300, "server_upload_time": 1767323100123}`)
	srv := fanouttest.Start(t, bin, fanouttest.Config{YAML: fmt.Sprintf(`sources:
  - name: web
    write_key: wk_e2e
destinations:
  - name: product-analytics
    type: mixpanel
    sources: [web]
    settings:
      project_token: mp_token_e2e
      api_url: %s
  - name: amplitude
    type: amplitude
    sources: [web]
    settings:
      api_key: amp_key_e2e
      api_url: %s
`, mixpanel.URL, amplitude.URL)})

	body := `{"type":"track","messageId":"e2e-track-1","userId":"user-00042","event":"Order Completed",
		"properties":{"revenue":19.99,"currency":"USD"},"timestamp":"2026-11-22T10:00:00.000Z"}`
	req, _ := http.NewRequest("POST", srv.TrackingURL+"/v1/track", bytes.NewBufferString(body))
	req.SetBasicAuth("wk_e2e", "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("tracking API answered %d", resp.StatusCode)
	}

	ctx := context.Background()
	if !fanouttest.Eventually(ctx, 30*time.Second, func() bool {
		return len(mixpanel.requests()) > 0 && len(amplitude.requests()) > 0
	}) {
		t.Fatalf("requests: mixpanel %d, amplitude %d; want one each", len(mixpanel.requests()), len(amplitude.requests()))
	}

	mp := mixpanel.requests()[0]
	if mp.method != "POST" || mp.path != "/import" {
		t.Errorf("mixpanel request %s %s, want POST /import", mp.method, mp.path)
	}
	var mpEvents []struct {
		Event      string         `json:"event"`
		Properties map[string]any `json:"properties"`
	}
	if err := json.Unmarshal(mp.body, &mpEvents); err != nil || len(mpEvents) != 1 {
		t.Fatalf("mixpanel body %s: %v", mp.body, err)
	}
	p := mpEvents[0].Properties
	if mpEvents[0].Event != "Order Completed" || p["distinct_id"] != "user-00042" || p["$insert_id"] != "e2e-track-1" ||
		p["revenue"] != 19.99 || p["token"] != "mp_token_e2e" {
		t.Errorf("mixpanel event %s: want Order Completed for user-00042 with $insert_id e2e-track-1, revenue and token", mp.body)
	}

	amp := amplitude.requests()[0]
	if amp.method != "POST" || amp.path != "/2/httpapi" {
		t.Errorf("amplitude request %s %s, want POST /2/httpapi", amp.method, amp.path)
	}
	var upload struct {
		APIKey string           `json:"api_key"`
		Events []map[string]any `json:"events"`
	}
	if err := json.Unmarshal(amp.body, &upload); err != nil || len(upload.Events) != 1 {
		t.Fatalf("amplitude body %s: %v", amp.body, err)
	}
	e := upload.Events[0]
	if upload.APIKey != "amp_key_e2e" || e["event_type"] != "Order Completed" || e["user_id"] != "user-00042" ||
		e["insert_id"] != "e2e-track-1" || e["time"] != float64(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).UnixMilli()) {
		t.Errorf("amplitude upload %s: want the api key and Order Completed for user-00042 with insert_id e2e-track-1 at the event's time", amp.body)
	}
}
