package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/webhook"
	"github.com/fanout/fanout/internal/event"
)

// Example delivers one event to a receiver the way the delivery engine
// does: settings validated against the schema, the destination built, the
// event sent through the guarded client.
func Example() {
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("received", r.Header.Get("webhook-id"), "from", r.Header.Get("Fanout-Source"))
	}))
	defer receiver.Close()

	settings, err := webhook.Integration.Settings.Validate(map[string]any{
		"url":    receiver.URL,
		"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	dest, err := webhook.Integration.New(destinations.Config{Name: "hooks", Settings: settings})
	if err != nil {
		fmt.Println(err)
		return
	}
	// The receiver listens on loopback: allow private addresses, as a
	// configuration with network.allow_private: true would.
	client := destinations.NewClient(5*time.Second, true)
	results := destinations.Send(context.Background(), dest, client, []event.Event{{
		Source:    "web",
		MessageID: "m-1",
		Type:      event.Track,
		Payload:   json.RawMessage(`{"type":"track","event":"Signed Up","userId":"u1","messageId":"m-1"}`),
	}})
	fmt.Println(results[0].Outcome)
	// Output:
	// received m-1 from web
	// delivered
}
