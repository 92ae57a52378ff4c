package archive

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// Replayer puts archived events back into the job store.
type Replayer struct {
	// Archive is where the events are read from: the files or the
	// database.
	Archive Store
	// Store receives the replayed jobs; its Applied hook wakes delivery.
	Store jobstore.Store
	// Now stamps each replayed job's receivedAt.
	Now func() time.Time
	// Replayed, if set, is told of each chunk of jobs queued.
	Replayed func(source, destination string, n int)
	// Logger receives one line per replay.
	Logger *slog.Logger
}

// replayChunk is how many jobs one Append takes.
const replayChunk = 1000

// Replay queues the archived events of one (source, destination) received
// in [from, to) as new jobs for that destination alone, past deduplication.
// Each job gets a fresh receivedAt, and so a fresh retry window; the payload
// keeps the event's own receivedAt. It returns how many it queued, also
// when it fails part-way.
func (r *Replayer) Replay(ctx context.Context, source, destination string, from, to time.Time) (int, error) {
	recs, err := r.Archive.Scan(jobstore.Queue{Source: source, Destination: destination}, from, to)
	if err != nil {
		return 0, err
	}
	now := r.Now()
	queued := 0
	for len(recs) > 0 {
		chunk := recs[:min(len(recs), replayChunk)]
		recs = recs[len(chunk):]
		entries := make([]jobstore.Entry, len(chunk))
		for i, rec := range chunk {
			var head struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(rec.Event, &head); err != nil {
				return queued, fmt.Errorf("archived event %s: %w", rec.MessageID, err)
			}
			entries[i] = jobstore.Entry{
				Event:        event.Event{Source: source, MessageID: rec.MessageID, Type: head.Type, ReceivedAt: now, Payload: rec.Event},
				Destinations: []string{destination}, Replay: true,
			}
		}
		if _, err := r.Store.Append(ctx, entries); err != nil {
			return queued, err
		}
		queued += len(entries)
		if r.Replayed != nil {
			r.Replayed(source, destination, len(entries))
		}
	}
	r.Logger.Info("replayed archived events", "source", source, "destination", destination, "events", queued)
	return queued, nil
}
