// Package integrations_test runs fanout end to end with real integrations:
// fanout serve delivers to Mixpanel and Amplitude destinations whose API base
// URL points at loopback servers replaying tapes (testdata/, in the format of
// destinations/tape), and the test checks that events sent through the
// tracking API arrive transformed and that the admin API reports what
// became of them.
package integrations_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/test/fanouttest"
)

var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

// serveTape starts a loopback server that answers as the API at base does,
// from testdata/<name>.yaml, and returns its URL. Every request must match
// an interaction of the tape (method, URL, Content-Type, the headers in
// opts, and the JSON body by value), or the test fails with how the
// closest interaction differs; an interaction no request used fails it
// when it ends.
//
// The tapes are written by hand: a live API cannot be made to answer 429
// on demand, so recording would replace the answers this test is about.
// With FANOUT_RECORD=1 the test is skipped; the integrations' own tapes
// under destinations/ are the recorded ones.
func serveTape(t *testing.T, name, base string, opts ...tape.Option) string {
	t.Helper()
	opts = append(opts, tape.NotRecorded("it scripts the APIs' answers to this test, a 429 among them"))
	tp := tape.New(t, name, opts...)
	// Registered after the tape's own cleanup, so it runs first: the server
	// stops taking requests before the tape checks what was used.
	api := httptest.NewServer(tp.Handler(base))
	t.Cleanup(api.Close)
	return api.URL
}

// The test's events, one of each call type, sent in one batch. Their
// timestamps and messageIds are fixed, and no sentAt is sent (which would
// have fanout correct the timestamp for clock skew), so the time and
// insert ids of what fanout sends are known and the tapes match them
// exactly. The alias is taken by neither integration.
const batch = `{"batch": [
	{"type": "track", "messageId": "e2e-track-1", "userId": "user-00042", "anonymousId": "anon-00042",
	 "event": "Order Completed", "properties": {"revenue": 19.99, "currency": "USD"},
	 "context": {"ip": "203.0.113.7", "page": {"url": "https://shop.example/checkout"}},
	 "timestamp": "2026-11-22T10:00:00.000Z"},
	{"type": "page", "messageId": "e2e-page-1", "anonymousId": "anon-00042", "name": "Pricing",
	 "properties": {"path": "/pricing"}, "timestamp": "2026-11-22T10:00:00.000Z"},
	{"type": "screen", "messageId": "e2e-screen-1", "userId": "user-00042", "name": "Home",
	 "context": {"os": {"name": "iOS", "version": "17.2"}, "device": {"model": "iPhone15,2"}},
	 "timestamp": "2026-11-22T10:00:00.000Z"},
	{"type": "identify", "messageId": "e2e-identify-1", "userId": "user-00042",
	 "traits": {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "pro"},
	 "context": {"ip": "203.0.113.7"}, "timestamp": "2026-11-22T10:00:00.000Z"},
	{"type": "alias", "messageId": "e2e-alias-1", "userId": "user-00042", "previousId": "anon-00042",
	 "timestamp": "2026-11-22T10:00:00.000Z"}
]}`

// counts are the overview's counts of one (source, destination).
type counts struct {
	Received       int `json:"received"`
	Unsupported    int `json:"unsupported"`
	DeliveredFirst int `json:"delivered_first_attempt"`
	DeliveredRetry int `json:"delivered_after_retries"`
	PendingRetry   int `json:"pending_retry"`
	Failed         int `json:"failed"`
	Archived       int `json:"archived"`
}

type issue struct {
	Destination string `json:"destination"`
	Outcome     string `json:"outcome"`
	Status      int    `json:"status"`
	Reason      string `json:"reason"`
	Count       int    `json:"count"`
}

func TestMixpanelAndAmplitudeEndToEnd(t *testing.T) {
	mixpanel := serveTape(t, "mixpanel", "https://api.mixpanel.com", tape.MatchHeaders("Authorization"))
	amplitude := serveTape(t, "amplitude", "https://api2.amplitude.com")
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
`, mixpanel, amplitude)})

	// One batch, so that each destination's queue gets every event at once
	// and the integrations' batches hold what the tapes say.
	fanouttest.Post(t, srv.TrackingURL, "wk_e2e", "/v1/batch", batch)

	// Mixpanel's /import answers 429 first: fanout pauses the queue for a
	// second (no Retry-After) and sends the same batch again, which the
	// tape answers 200. The identify went to engage, delivered at once;
	// Amplitude took all four in one request. Neither sends the alias.
	want := map[string]counts{
		"product-analytics": {Received: 5, Unsupported: 1, DeliveredFirst: 1, DeliveredRetry: 3},
		"amplitude":         {Received: 5, Unsupported: 1, DeliveredFirst: 4},
	}
	var got map[string]counts
	settled := fanouttest.Eventually(context.Background(), 20*time.Second, func() bool {
		got = overview(t, srv.AdminURL)
		// A request the tapes do not hold has failed the test already.
		return t.Failed() || fmt.Sprint(got) == fmt.Sprint(want)
	})
	if t.Failed() {
		return
	}
	if !settled {
		t.Fatalf("overview of source web:\n%+v\nwant\n%+v", got, want)
	}

	// The 429 is reported as a retryable issue with Mixpanel's own words,
	// one failed attempt per event of the batch.
	wantIssues := []issue{{Destination: "product-analytics", Outcome: "retryable", Status: 429, Count: 3,
		Reason: "Project exceeded rate limits"}}
	issues := issuesOf(t, srv.AdminURL)
	if len(issues) != len(wantIssues) {
		t.Fatalf("issues %+v, want %+v", issues, wantIssues)
	}
	for i, w := range wantIssues {
		g := issues[i]
		if g.Destination != w.Destination || g.Outcome != w.Outcome || g.Status != w.Status || g.Count != w.Count ||
			!strings.Contains(g.Reason, w.Reason) {
			t.Errorf("issue %+v, want %+v with the reason containing %q", g, w, w.Reason)
		}
	}
}

// overview returns the admin API's counts of the last hour by destination.
func overview(t *testing.T, adminURL string) map[string]counts {
	t.Helper()
	var o struct {
		Pairs []struct {
			Source      string `json:"source"`
			Destination string `json:"destination"`
			counts
		} `json:"pairs"`
	}
	adminGet(t, adminURL+"/api/v1/overview?range=1h", &o)
	out := map[string]counts{}
	for _, p := range o.Pairs {
		if p.Source == "web" {
			out[p.Destination] = p.counts
		}
	}
	return out
}

// issuesOf returns the admin API's delivery issues of source web in the
// last hour.
func issuesOf(t *testing.T, adminURL string) []issue {
	t.Helper()
	var is struct {
		Issues []issue `json:"issues"`
	}
	adminGet(t, adminURL+"/api/v1/issues?source=web&range=1h", &is)
	return is.Issues
}

func adminGet(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
