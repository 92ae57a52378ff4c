// Package event holds fanout's event model: one accepted tracking call, in the
// Segment spec shape, as it is stored and handed to destinations.
package event

import (
	"bytes"
	"encoding/json"
	"time"
)

// The call types of the tracking API.
const (
	Identify = "identify"
	Track    = "track"
	Page     = "page"
	Screen   = "screen"
	Group    = "group"
	Alias    = "alias"
)

// Event is one accepted call. The fields beside Payload are copies of values
// inside it, kept so that routing, storage and delivery never re-parse JSON.
type Event struct {
	// Source is the configured name of the source that sent the event.
	Source string
	// MessageID is the event's messageId, set by the server when the client
	// sent none. Destinations use it as their idempotency key.
	MessageID string
	// Type is one of the call types above.
	Type string
	// ReceivedAt is when fanout accepted the event.
	ReceivedAt time.Time
	// Payload is the event as JSON in the Segment spec shape: what the client
	// sent, with batch-level context and integrations merged in and the
	// server-set fields (messageId, receivedAt, timestamp) filled in.
	Payload json.RawMessage
}

// Fields decodes the payload into a map, numbers kept as json.Number so that
// integer IDs survive the round trip.
func (e *Event) Fields() (map[string]any, error) {
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(e.Payload))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}
