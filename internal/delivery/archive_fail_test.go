package delivery_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
)

// TestArchiveFailureKeepsTheJob: while the archive cannot be written (a
// full disk, a database that is down: the engine sees only the error of
// archive.Store.Write) a job past its window stays, retrying; once the
// archive takes writes again it is archived.
func TestArchiveFailureKeepsTheJob(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", window: time.Minute, decide: func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 500, Reason: "HTTP 500"}
	}})
	// A file where the archive's directory goes: every Write fails.
	block := filepath.Join(b.dataDir, "archive")
	if err := os.WriteFile(block, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b.send(t, "web", 1, "hook")
	last := b.await(t, 1)[0]
	// A minute between attempts is past every backoff of the first few
	// attempts, and each attempt after the first is past the window.
	for range 3 {
		b.clk.Advance(time.Minute)
		last = b.await(t, 1)[0]
		if last.End != delivery.EndRetrying {
			t.Fatalf("attempt %d past the window with the archive failing ended %v, want retrying", last.Job.Attempts, last.End)
		}
	}
	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	b.clk.Advance(time.Minute)
	last = b.await(t, 1)[0]
	if last.End != delivery.EndArchived {
		t.Fatalf("job ended %v once the archive works, want archived", last.End)
	}
	recs, err := archive.NewWriter(block).Scan(last.Queue, start, start.Add(time.Hour))
	if err != nil || len(recs) != 1 || recs[0].Attempts != 5 {
		t.Fatalf("archived %+v, %v; want the one job after 5 attempts", recs, err)
	}
}
