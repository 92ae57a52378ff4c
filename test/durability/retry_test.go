package durability_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/test/fanouttest"
)

// flakyDestination is a webhook destination that answers 503 to every
// event until it is fixed, then 200. It counts both answers by messageId.
type flakyDestination struct {
	url   string
	fixed atomic.Bool

	mu        sync.Mutex
	failed    map[string]int
	delivered map[string]int
}

func newFlakyDestination(t *testing.T) *flakyDestination {
	d := &flakyDestination{failed: make(map[string]int), delivered: make(map[string]int)}
	srv := httptest.NewServer(http.HandlerFunc(d.serveHTTP))
	t.Cleanup(srv.Close)
	d.url = srv.URL + "/hook"
	return d
}

func (d *flakyDestination) serveHTTP(w http.ResponseWriter, r *http.Request) {
	var ev struct {
		MessageID string `json:"messageId"`
	}
	if err := json.NewDecoder(r.Body).Decode(&ev); err != nil || ev.MessageID == "" {
		http.Error(w, "want one event with a messageId", http.StatusBadRequest)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.fixed.Load() {
		d.failed[ev.MessageID]++
		// No Retry-After: the job is rescheduled by fanout's own backoff.
		http.Error(w, `{"error":"down for maintenance"}`, http.StatusServiceUnavailable)
		return
	}
	d.delivered[ev.MessageID]++
	io.WriteString(w, `{"ok":true}`)
}

// count returns how many of ids were answered 503 at least atLeast times, and
// how many were delivered.
func (d *flakyDestination) count(ids []string, atLeast int) (failed, delivered int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range ids {
		if d.failed[id] >= atLeast {
			failed++
		}
		if d.delivered[id] > 0 {
			delivered++
		}
	}
	return failed, delivered
}

// TestRetriesSurviveRestart puts every event's job in the retry set (the
// destination answers 503), stops fanout, restarts it on the same data dir
// with the destination fixed, and checks that every event is delivered:
// a job waiting for its retry is as durable as one never tried.
func TestRetriesSurviveRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		// events is how many events are sent. A destination's circuit
		// opens after 10 consecutive failures and then lets one probe
		// through at growing intervals, so events*failures stays below
		// 10 for every event to be tried that often in seconds.
		events int
		// failures is how many 503s each event gets before the stop.
		failures int
		stop     func(t *testing.T, srv *fanouttest.Server)
	}{
		// SIGTERM: a clean shutdown, after which every job is in the
		// retry set.
		{"sigterm", 8, 1, func(t *testing.T, srv *fanouttest.Server) {
			if err := srv.Stop(); err != nil {
				t.Fatalf("fanout serve did not exit cleanly on SIGTERM: %v", err)
			}
		}},
		// SIGKILL: the rescheduling write of the last failure may be
		// lost, so each event fails twice: its second try was taken
		// from the retry set, which the store therefore held before the
		// kill.
		{"sigkill", 4, 2, func(t *testing.T, srv *fanouttest.Server) { srv.Kill() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := newFlakyDestination(t)
			cfg := fanouttest.Config{WriteKey: writeKey, WebhookURL: dest.url, DataDir: t.TempDir()}
			srv := fanouttest.Start(t, bin, cfg)

			ids := make([]string, tc.events)
			evs := make([]string, tc.events)
			for i := range ids {
				ids[i] = fmt.Sprintf("retry-%s-%d", tc.name, i)
				evs[i] = fmt.Sprintf(`{"type":"track","messageId":%q,"userId":"u%d","event":"Retry Survived"}`, ids[i], i)
			}
			fanouttest.Post(t, srv.TrackingURL, writeKey, "/v1/batch", `{"batch":[`+strings.Join(evs, ",")+`]}`)

			if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool {
				failed, _ := dest.count(ids, tc.failures)
				return failed == len(ids)
			}) {
				failed, _ := dest.count(ids, tc.failures)
				t.Fatalf("%d of %d events answered 503 %d times within 30s", failed, len(ids), tc.failures)
			}
			tc.stop(t, srv)
			// Fixed only once the first process is gone: whatever is
			// delivered now, the restarted one delivered.
			dest.fixed.Store(true)

			srv = fanouttest.Start(t, bin, cfg)
			// The retries fall due at most 4s after the last failure
			// (see delivery.Backoff); the rest is slack for -race.
			ok := fanouttest.Eventually(t.Context(), 30*time.Second, func() bool {
				_, delivered := dest.count(ids, 0)
				return delivered == len(ids)
			})
			if _, delivered := dest.count(ids, 0); !ok {
				t.Fatalf("after the restart, %d of %d retried events delivered within 30s", delivered, len(ids))
			}
			if err := srv.Stop(); err != nil {
				t.Errorf("restarted fanout serve did not exit cleanly on SIGTERM: %v", err)
			}
		})
	}
}
