package ingest_test

import (
	"io"
	"log"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"
)

// callback records what the Segment library says became of each message.
type callback struct {
	mu       sync.Mutex
	ok       int
	failures []error
}

func (c *callback) Success(analytics.Message) { c.mu.Lock(); c.ok++; c.mu.Unlock() }
func (c *callback) Failure(_ analytics.Message, err error) {
	c.mu.Lock()
	c.failures = append(c.failures, err)
	c.mu.Unlock()
}

// TestSegmentLibrary sends every call type through Segment's official Go
// library, pointed at fanout, the one change a user makes.
func TestSegmentLibrary(t *testing.T) {
	b := setup(t)
	srv := httptest.NewServer(b.h)
	defer srv.Close()
	cb := &callback{}
	client, err := analytics.NewWithConfig(webKey, analytics.Config{
		Endpoint:  srv.URL,
		Interval:  time.Hour, // flushed by Close
		BatchSize: 100,
		Callback:  cb,
		Logger:    analytics.StdLogger(log.New(io.Discard, "", 0)),
		DefaultContext: &analytics.Context{
			IP: []byte{203, 0, 113, 7},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []analytics.Message{
		analytics.Identify{UserId: "u1", Traits: analytics.NewTraits().SetEmail("a@example.com")},
		analytics.Track{UserId: "u1", Event: "Signed Up", Properties: analytics.NewProperties().Set("plan", "pro").Set("seats", 12)},
		analytics.Page{AnonymousId: "a1", Name: "Home"},
		analytics.Screen{UserId: "u1", Name: "Main"},
		analytics.Group{UserId: "u1", GroupId: "g1"},
		analytics.Alias{UserId: "u1", PreviousId: "a1"},
	}
	for _, m := range msgs {
		if err := client.Enqueue(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if cb.ok != len(msgs) || len(cb.failures) > 0 {
		t.Fatalf("library reports %d sent, failures %v; want %d sent", cb.ok, cb.failures, len(msgs))
	}
	if len(b.accepted) != len(msgs) {
		t.Fatalf("the store announced %d entries, want %d", len(b.accepted), len(msgs))
	}
	wantTypes := []string{"identify", "track", "page", "screen", "group", "alias"}
	for i, e := range b.accepted {
		checkEntry(t, e, "web")
		if e.Event.Type != wantTypes[i] {
			t.Errorf("event %d: type %q, want %q", i, e.Event.Type, wantTypes[i])
		}
		m, _ := e.Event.Fields()
		ctx, _ := m["context"].(map[string]any)
		lib, _ := ctx["library"].(map[string]any)
		if lib["name"] != "analytics-go" || ctx["ip"] != "203.0.113.7" {
			t.Errorf("event %d: context %v, want the batch's library and ip merged in", i, m["context"])
		}
		if _, ok := m["sentAt"]; !ok {
			t.Errorf("event %d: no sentAt from the batch", i)
		}
	}
}
