// Package durability_test checks fanout's promise that a 200 from the
// tracking API means the event is delivered, even when the process is
// SIGKILLed while deliveries are in flight: at least once, duplicates
// allowed and counted, losses zero.
package durability_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/test/fanouttest"
)

// bin is the fanout binary TestMain builds.
var bin string

func TestMain(m *testing.M) { fanouttest.Main(m, &bin) }

const (
	writeKey = "wk_durability"
	// events is how many events each round sends, batchSize per request,
	// from senders concurrent senders.
	events    = 10_000
	batchSize = 100
	senders   = 4
	// killAt is how many events of a round are acknowledged when the
	// server is killed: mid-stream, with most of the round still to send.
	killAt = 3_000
	// rounds is how many times the server is killed.
	rounds = 2
	// latency is how long the receiver holds each delivery, so that many
	// are in flight when the server is killed.
	latency = 5 * time.Millisecond
	// deliverTimeout bounds the wait for every acknowledged event.
	deliverTimeout = 120 * time.Second
	// inFlightTimeout bounds the wait, before a kill, for the receiver to
	// hold a delivery.
	inFlightTimeout = 10 * time.Second
)

// batch is one /v1/batch request.
type batch struct {
	ids  []string
	body []byte
}

func makeBatches(t *testing.T, round int) []batch {
	t.Helper()
	var out []batch
	for start := 0; start < events; start += batchSize {
		var b batch
		evs := make([]fanouttest.Track, 0, batchSize)
		for i := start; i < start+batchSize && i < events; i++ {
			id := fmt.Sprintf("r%d-%05d", round, i)
			b.ids = append(b.ids, id)
			evs = append(evs, fanouttest.Track{
				Type: "track", MessageID: id, UserID: fmt.Sprintf("u%d", i%97), Event: "Durability Checked",
				Properties: map[string]any{"round": round, "i": i},
			})
		}
		body, err := json.Marshal(map[string]any{"batch": evs})
		if err != nil {
			t.Fatal(err)
		}
		b.body = body
		out = append(out, b)
	}
	return out
}

// sender posts batches to one server and keeps the messageIds of every
// event that was acknowledged with a 200.
type sender struct {
	url    string
	client *http.Client

	acked     atomic.Int64
	threshold int64
	crossed   chan struct{} // closed once acked reaches threshold
	once      sync.Once

	mu      sync.Mutex
	ackedID []string
}

func newSender(url string, threshold int64) *sender {
	return &sender{
		url: url + "/v1/batch",
		client: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: senders},
		},
		threshold: threshold,
		crossed:   make(chan struct{}),
	}
}

// post sends one batch and reports whether fanout acknowledged it.
func (s *sender) post(b batch) (bool, error) {
	req, err := fanouttest.NewRequest(s.url, writeKey, b.body)
	if err != nil {
		return false, err
	}
	res, err := s.client.Do(req)
	if err != nil {
		return false, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return false, err
	}
	var r struct {
		Success  bool              `json:"success"`
		Rejected []json.RawMessage `json:"rejected"`
	}
	if res.StatusCode != http.StatusOK || json.Unmarshal(body, &r) != nil || !r.Success || len(r.Rejected) > 0 {
		return false, fmt.Errorf("status %d: %s", res.StatusCode, body)
	}
	s.mu.Lock()
	s.ackedID = append(s.ackedID, b.ids...)
	s.mu.Unlock()
	if s.acked.Add(int64(len(b.ids))) >= s.threshold {
		s.once.Do(func() { close(s.crossed) })
	}
	return true, nil
}

// sendAll posts batches from `senders` goroutines and returns the batches
// that were not acknowledged, with the first error seen.
func (s *sender) sendAll(batches []batch) (failed []batch, firstErr error) {
	work := make(chan batch)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for b := range work {
				if ok, err := s.post(b); !ok {
					mu.Lock()
					failed = append(failed, b)
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, b := range batches {
		work <- b
	}
	close(work)
	wg.Wait()
	return failed, firstErr
}

func (s *sender) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ackedID...)
}

// stores are the job stores the end-to-end tests run on: each returns the
// storage.postgres of a fresh store ("" for the embedded one).
var stores = []struct {
	name     string
	postgres func(t *testing.T) string
}{
	{"pebble", func(t *testing.T) string { return "" }},
	{"postgres", func(t *testing.T) string { return pgtest.Start(t) }},
}

// TestKillDuringDelivery sends events, SIGKILLs fanout mid-stream while
// deliveries are in flight, restarts it on the same data, resends what was
// not acknowledged, and checks that every acknowledged event reaches the
// destination; it does so `rounds` times on the same data, on each store.
func TestKillDuringDelivery(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { testKillDuringDelivery(t, st.postgres(t)) })
	}
}

func testKillDuringDelivery(t *testing.T, postgres string) {
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{Latency: latency})
	cfg := fanouttest.Config{WriteKey: writeKey, WebhookURL: recv.URL, DataDir: t.TempDir(), Postgres: postgres}
	srv := fanouttest.Start(t, bin, cfg)

	var all []string   // every messageId acknowledged, over all rounds
	killsInFlight := 0 // kills with deliveries in flight
	for round := 1; round <= rounds; round++ {
		batches := makeBatches(t, round)
		var roundIDs []string
		for _, b := range batches {
			roundIDs = append(roundIDs, b.ids...)
		}
		roundStart := time.Now()

		// Before the kill: send everything; kill once killAt are acknowledged.
		before := newSender(srv.TrackingURL, killAt)
		type result struct {
			failed []batch
			err    error
		}
		done := make(chan result, 1)
		go func() {
			f, err := before.sendAll(batches)
			done <- result{f, err}
		}()
		var res result
		select {
		case <-before.crossed:
		case res = <-done:
			t.Fatalf("round %d: sending ended before %d events were acknowledged (%d were): %v",
				round, killAt, before.acked.Load(), res.err)
		}
		// Kill while the receiver holds deliveries. It holds each for
		// `latency`, far longer than the signal takes after the look, so
		// those seen are still unanswered when the process dies.
		receivedAtKill := len(roundIDs) - len(recv.Missing(roundIDs))
		var inFlight int64
		fanouttest.Eventually(t.Context(), inFlightTimeout, func() bool {
			inFlight = recv.InFlight()
			return inFlight > 0
		})
		srv.Kill()
		if inFlight > 0 {
			killsInFlight++
		}
		res = <-done
		ackedBefore := before.ids()
		t.Logf("round %d: SIGKILL after %d events acknowledged, %d received by the destination, %d deliveries in flight; %d events unacknowledged (first error: %v)",
			round, len(ackedBefore), receivedAtKill, inFlight, events-len(ackedBefore), res.err)
		if len(res.failed) == 0 {
			t.Errorf("round %d: every batch was acknowledged: the kill was not mid-stream", round)
		}

		// After the restart: the data dir is the same; resend what was
		// not acknowledged, with the same messageIds, as a client would.
		srv = fanouttest.Start(t, bin, cfg)
		after := newSender(srv.TrackingURL, 0)
		if failed, err := after.sendAll(res.failed); len(failed) > 0 {
			t.Fatalf("round %d: after the restart, %d batches were not acknowledged: %v", round, len(failed), err)
		}
		acked := append(ackedBefore, after.ids()...)
		if len(acked) != events {
			t.Fatalf("round %d: %d events acknowledged, want %d", round, len(acked), events)
		}
		all = append(all, acked...)

		ok := fanouttest.Eventually(t.Context(), deliverTimeout, func() bool {
			return len(recv.Missing(acked)) == 0
		})
		lostBefore, lost := recv.Missing(ackedBefore), recv.Missing(acked)
		dups := duplicates(recv, acked)
		t.Logf("round %d: %d of %d events acknowledged before the kill received, %d of %d in all, %d duplicates, in %v",
			round, len(ackedBefore)-len(lostBefore), len(ackedBefore), len(acked)-len(lost), len(acked), dups,
			time.Since(roundStart).Round(time.Millisecond))
		if !ok {
			t.Fatalf("round %d: %d acknowledged events lost (not received %v after the restart), %d of them acknowledged before the kill; first: %v",
				round, len(lost), deliverTimeout, len(lostBefore), first(lost, 10))
		}
	}

	// Otherwise the kills tested only acknowledged events not yet sent,
	// not the deliveries a crash interrupts.
	if killsInFlight == 0 {
		t.Errorf("none of the %d kills happened with deliveries in flight", rounds)
	}

	// A clean stop must wait for in-flight deliveries; after it, the
	// counts are final.
	if err := srv.Stop(); err != nil {
		t.Errorf("fanout serve did not exit cleanly on SIGTERM: %v", err)
	}
	if lost := recv.Missing(all); len(lost) > 0 {
		t.Errorf("%d acknowledged events lost; first: %v", len(lost), first(lost, 10))
	}
	if bad := recv.Bad(); len(bad) > 0 {
		t.Errorf("the destination received %d requests without a messageId; first: %q", len(bad), first(bad, 3))
	}
	if n := recv.Unique(); n != len(all) {
		t.Errorf("the destination received %d distinct messageIds, want the %d sent", n, len(all))
	}
	t.Logf("total: %d events acknowledged over %d kills, %d deliveries, losses 0, duplicates %d",
		len(all), rounds, recv.Total(), recv.Total()-recv.Unique())
}

// duplicates is how many extra deliveries the events of ids had.
func duplicates(recv *fanouttest.Receiver, ids []string) int {
	n := 0
	for _, id := range ids {
		if c := recv.Count(id); c > 1 {
			n += c - 1
		}
	}
	return n
}

func first[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}
