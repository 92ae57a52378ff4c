package durability_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/test/fanouttest"
)

// TestPostgresRestartUnderLoad takes PostgreSQL away (pg_ctl stop -m fast)
// while events stream in and deliveries are in flight, and brings it back:
// meanwhile the tracking API answers 503 with Retry-After, never a 200;
// afterwards fanout takes events and delivers again by itself, without a
// restart, and every event it acknowledged, before, during or after the
// outage, reaches the destination.
func TestPostgresRestartUnderLoad(t *testing.T) {
	pg := pgtest.Shared(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: latency})
	srv := fanouttest.Start(t, bin, fanouttest.Config{
		WriteKey: writeKey, WebhookURL: recv.URL, Postgres: pgtest.Start(t),
	})

	l := &load{url: srv.TrackingURL + "/v1/batch", client: &http.Client{Timeout: 30 * time.Second}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() { l.run(t, w, stop) })
	}
	// Some events acknowledged and some deliveries in flight, then down.
	fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= 2_000 })
	fanouttest.Eventually(t.Context(), inFlightTimeout, func() bool { return recv.InFlight() > 0 })
	if err := pg.Down(); err != nil {
		t.Fatal(err)
	}
	downAt := time.Now()
	ackedAtDown := l.acked.Load()
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.unavailable.Load() >= 20 }) {
		close(stop)
		wg.Wait()
		t.Fatalf("no 503s with PostgreSQL down: %d answered, %d other errors", l.unavailable.Load(), l.errors.Load())
	}
	// A 200 here would be an event acknowledged that no database holds; a
	// batch whose commit was under way when the server went may still get
	// one, so the check allows for what was in flight at the moment (up to
	// one batch per sender).
	if n := l.acked.Load() - ackedAtDown; n > senders*batchSize {
		t.Errorf("%d events acknowledged with PostgreSQL down", n)
	}
	if err := pg.Up(); err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL down for %v: %d requests answered 503, %d other errors",
		time.Since(downAt).Round(time.Millisecond), l.unavailable.Load(), l.errors.Load())

	// Back without a restart: new events are acknowledged again.
	ackedAtUp := l.acked.Load()
	if !fanouttest.Eventually(t.Context(), 30*time.Second, func() bool { return l.acked.Load() >= ackedAtUp+2_000 }) {
		t.Errorf("fanout took no events in the 30s after PostgreSQL came back")
	}
	close(stop)
	wg.Wait()
	if srv.Exited() {
		t.Fatalf("fanout exited while PostgreSQL was down:\n%s", srv.LogTail(20))
	}

	acked := l.ids()
	ok := fanouttest.Eventually(t.Context(), deliverTimeout, func() bool { return len(recv.Missing(acked)) == 0 })
	lost := recv.Missing(acked)
	t.Logf("%d events acknowledged, %d delivered, %d duplicates, %d 503s", len(acked), len(acked)-len(lost),
		duplicates(recv, acked), l.unavailable.Load())
	if !ok {
		t.Fatalf("%d acknowledged events not delivered %v after PostgreSQL came back; first: %v",
			len(lost), deliverTimeout, first(lost, 10))
	}
}

// load sends batches of new events until stopped, recording the messageIds
// acknowledged and counting the 503s.
type load struct {
	url    string
	client *http.Client

	acked       atomic.Int64
	unavailable atomic.Int64 // 503 with Retry-After
	errors      atomic.Int64 // anything else that is not a 200

	mu      sync.Mutex
	ackedID []string
}

func (l *load) run(t *testing.T, w int, stop <-chan struct{}) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		var ids []string
		for i := range batchSize {
			ids = append(ids, fmt.Sprintf("pg-%d-%d-%d", w, n, i))
		}
		res, err := postTracks(l.client, l.url, writeKey, "Restarted", ids)
		if err != nil {
			l.errors.Add(1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		switch {
		case res.StatusCode == http.StatusOK:
			l.mu.Lock()
			l.ackedID = append(l.ackedID, ids...)
			l.mu.Unlock()
			l.acked.Add(int64(len(ids)))
		case res.StatusCode == http.StatusServiceUnavailable && res.Header.Get("Retry-After") != "":
			l.unavailable.Add(1)
			// A client honours Retry-After; the test only needs to go on
			// asking, not to flood a server that is refusing.
			time.Sleep(20 * time.Millisecond)
		default:
			l.errors.Add(1)
			t.Errorf("status %d", res.StatusCode)
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// postTracks sends url one batch of track events named event, one per
// messageId of ids, with key, and returns the response, its body closed.
func postTracks(client *http.Client, url, key, event string, ids []string) (*http.Response, error) {
	var evs []map[string]any
	for _, id := range ids {
		evs = append(evs, map[string]any{"type": "track", "messageId": id, "userId": "u", "event": event})
	}
	body, _ := json.Marshal(map[string]any{"batch": evs})
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.SetBasicAuth(key, "")
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	res.Body.Close()
	return res, nil
}

func (l *load) ids() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ackedID...)
}
