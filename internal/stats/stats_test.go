package stats

import (
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/latency"
)

// openAt opens stats in a new temporary directory, on a clock stopped at
// now; they are closed in t.Cleanup.
func openAt(t *testing.T, now time.Time) *Stats {
	t.Helper()
	s := openDir(t, filepath.Join(t.TempDir(), "stats"), now)
	t.Cleanup(func() { s.Close() })
	return s
}

// reopen flushes and closes s, which were opened in dir, and opens them
// again on a clock stopped at now; the caller closes them.
func reopen(t *testing.T, s *Stats, dir string, now time.Time) *Stats {
	t.Helper()
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return openDir(t, dir, now)
}

// openDir opens the stats in dir on a clock stopped at now; the caller
// closes them.
func openDir(t *testing.T, dir string, now time.Time) *Stats {
	t.Helper()
	s, err := Open(Options{Dir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestOverviewLatency feeds known reports and checks the percentiles of a
// range against the exact ones, and that a range outside sees nothing.
func TestOverviewLatency(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := openAt(t, now)
	var lat []time.Duration
	for i := range 1000 {
		recv := now.Add(-time.Duration(i%30) * time.Minute)
		d := time.Duration(i+1) * time.Millisecond
		lat = append(lat, d)
		s.Observe(delivery.Report{
			Queue: jobstore.Queue{Source: "s", Destination: "d"},
			Job:   &jobstore.Job{Attempts: 1, Event: event.Event{MessageID: "m", ReceivedAt: recv}},
			End:   delivery.EndDelivered, At: recv.Add(d),
			Result: destinations.SendResult{Result: destinations.Result{Outcome: destinations.Delivered}},
		})
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	o, err := s.Overview(Filter{From: now.Add(-time.Hour), To: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if o.DeliveredFirst != 1000 || o.Latency.Count != 1000 {
		t.Fatalf("overview = %+v", o)
	}
	for q, got := range map[float64]float64{0.5: o.Latency.P50, 0.95: o.Latency.P95, 0.99: o.Latency.P99} {
		exact := float64(lat[int(math.Ceil(q*1000))-1]) / float64(time.Millisecond)
		if math.Abs(got-exact)/exact > latency.RelativeError {
			t.Errorf("p%v = %v ms, exact %v ms", q*100, got, exact)
		}
	}
	o, _ = s.Overview(Filter{From: now.Add(-3 * time.Hour), To: now.Add(-2 * time.Hour)})
	if o.Received+o.DeliveredFirst != 0 || o.Latency.Count != 0 {
		t.Errorf("a range without traffic: %+v", o)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		`HTTP 404 Not Found: user 123 not found`:                                  `HTTP 404 Not Found: user <n> not found`,
		`HTTP 400 Bad Request: {"id":"3f2b8c1e-8f4a-4b6e-9d3c-1a2b3c4d5e6f"}`:     `HTTP 400 Bad Request: {"id":"<id>"}`,
		`request timed out after 10s`:                                             `request timed out after <n>s`,
		`connection refused: dial tcp 127.0.0.1:4567`:                             `connection refused: dial tcp <n>:<n>`,
		`HTTP 500 Internal Server Error: trace req_8a7b6c5d4e took 250.5 seconds`: `HTTP 500 Internal Server Error: trace <id> took <n> seconds`,
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

// Depth counts the jobs made and not ended per queue, through retries and
// across a reopen.
func TestDepth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "stats")
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	s := openDir(t, dir, at)
	ingestTracks(s, at, "a", "b", "c", "d")
	attempt := func(id string, attempts int, end delivery.End, expired bool) {
		job := &jobstore.Job{Queue: jobstore.Queue{Source: "web", Destination: "hook"},
			Event: event.Event{Source: "web", MessageID: id, ReceivedAt: at}, Attempts: attempts}
		s.Observe(delivery.Report{Queue: job.Queue, Job: job, End: end, At: at, Expired: expired})
	}
	steps := []struct {
		id          string
		attempts    int
		end         delivery.End
		expired     bool
		wantDepth   int64
		wantPending int64
	}{
		{"a", 1, delivery.EndDelivered, false, 3, 0},
		{"b", 1, delivery.EndRetrying, false, 3, 1}, // still waiting
		{"b", 2, delivery.EndRetrying, false, 3, 1},
		{"b", 3, delivery.EndDelivered, false, 2, 0},
		{"c", 1, delivery.EndRetrying, false, 2, 1},
		// Archived by an open circuit's sweep: no attempt, one before.
		{"c", 1, delivery.EndArchived, true, 1, 0},
		// Expired without ever being tried: never in the retry set.
		{"d", 0, delivery.EndArchived, true, 0, 0},
	}
	for i, st := range steps {
		attempt(st.id, st.attempts, st.end, st.expired)
		if got := s.Depth("hook")["web"]; got != st.wantDepth {
			t.Fatalf("step %d: depth %d, want %d", i, got, st.wantDepth)
		}
		if got := s.PendingRetry("hook")["web"]; got != st.wantPending {
			t.Fatalf("step %d: pending retry %d, want %d", i, got, st.wantPending)
		}
	}
	s.Replayed("web", "hook", 2)
	s = reopen(t, s, dir, at)
	defer s.Close()
	if got := s.Depth("hook")["web"]; got != 2 {
		t.Fatalf("after a reopen: depth %d, want 2 (the two replayed)", got)
	}
	// The store holds nothing for the queue: its depth is zero, whatever
	// the counts say.
	s.KeepDepth([]jobstore.Queue{{Source: "web", Destination: "hook"}})
	if got := s.Depth("hook")["web"]; got != 2 {
		t.Fatalf("after KeepDepth of the queue: depth %d, want 2", got)
	}
	s.KeepDepth(nil)
	if got := s.Depth("hook")["web"]; got != 0 {
		t.Fatalf("after KeepDepth of no queue: depth %d, want 0", got)
	}
}
