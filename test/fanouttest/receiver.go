package fanouttest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Delivery is one webhook request as the Receiver got it.
type Delivery struct {
	// WebhookID is the request's webhook-id header.
	WebhookID string
	// MessageID is the messageId of the event in the body.
	MessageID string
	// Body is the request body: the event's JSON.
	Body []byte
}

// Receiver is the webhook destination of a test: an httptest server that
// answers 200 to every POST after Latency, and records each request.
type Receiver struct {
	// URL is where the webhook destination should deliver.
	URL string

	latency  time.Duration
	keep     bool
	inFlight atomic.Int64

	mu         sync.Mutex
	counts     map[string]int // by messageId
	total      int
	deliveries []Delivery
	bad        []string // requests that were not a single event
}

// ReceiverOptions configures a Receiver.
type ReceiverOptions struct {
	// Latency is how long each request is held before its 200, so that
	// deliveries are in flight when a test looks.
	Latency time.Duration
	// KeepBodies records every Delivery (with its body); otherwise only the
	// count per messageId is kept.
	KeepBodies bool
}

// NewReceiver starts a Receiver; it is closed in t.Cleanup.
func NewReceiver(t testing.TB, o ReceiverOptions) *Receiver {
	r := &Receiver{latency: o.Latency, keep: o.KeepBodies, counts: make(map[string]int)}
	srv := httptest.NewServer(http.HandlerFunc(r.serveHTTP))
	t.Cleanup(srv.Close)
	r.URL = srv.URL + "/hook"
	return r
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	r.inFlight.Add(1)
	defer r.inFlight.Add(-1)
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.latency > 0 {
		// Simulated destination latency, not a wait for a condition.
		time.Sleep(r.latency)
	}
	var ev struct {
		MessageID string `json:"messageId"`
	}
	err = json.Unmarshal(body, &ev)
	r.mu.Lock()
	if err != nil || ev.MessageID == "" {
		r.bad = append(r.bad, string(body))
	} else {
		r.counts[ev.MessageID]++
		r.total++
		if r.keep {
			r.deliveries = append(r.deliveries, Delivery{
				WebhookID: req.Header.Get("webhook-id"), MessageID: ev.MessageID, Body: body,
			})
		}
	}
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"success":true}`)
}

// Count is how many times the event with this messageId arrived.
func (r *Receiver) Count(messageID string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[messageID]
}

// Total is how many events arrived, duplicates included.
func (r *Receiver) Total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// Unique is how many distinct messageIds arrived.
func (r *Receiver) Unique() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counts)
}

// Missing returns the messageIds of ids that have not arrived yet.
func (r *Receiver) Missing(ids []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var missing []string
	for _, id := range ids {
		if r.counts[id] == 0 {
			missing = append(missing, id)
		}
	}
	return missing
}

// Deliveries returns the requests recorded with KeepBodies, in arrival order.
func (r *Receiver) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.deliveries...)
}

// Bad returns the bodies of requests that did not hold one event with a
// messageId.
func (r *Receiver) Bad() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}

// InFlight is how many requests the receiver is holding right now.
func (r *Receiver) InFlight() int64 { return r.inFlight.Load() }
