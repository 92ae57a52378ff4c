package stats

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/internal/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// backend is one way to keep the stats, for the tests that run over both.
type backend struct {
	name string
	// setup returns a function that opens Stats as node, each time on the
	// same storage.
	setup func(t *testing.T) func(node string, now func() time.Time) Options
}

var backends = []backend{
	{"pebble", func(t *testing.T) func(string, func() time.Time) Options {
		dir := filepath.Join(t.TempDir(), "stats")
		return func(node string, now func() time.Time) Options {
			return Options{Dir: dir + node, Now: now}
		}
	}},
	{"postgres", func(t *testing.T) func(string, func() time.Time) Options {
		pool := pgtest.Pool(t, pgtest.Start(t))
		return func(node string, now func() time.Time) Options {
			pg, err := NewPostgres(t.Context(), pool, PostgresOptions{Node: node, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return Options{Backend: pg, Now: now}
		}
	}},
}

// traffic feeds s four events received at at: one delivered at once, one
// delivered on the second attempt after a 503, one still retrying after a
// 503, one rejected with a 400.
func traffic(s *Stats, at time.Time) {
	ingestTracks(s, at, "a", "b", "c", "d")
	attempt(s, at, "a", 1, delivery.EndDelivered, destinations.Delivered, 0, at.Add(time.Second))
	attempt(s, at, "b", 1, delivery.EndRetrying, destinations.Retryable, 503, at.Add(time.Second))
	attempt(s, at, "b", 2, delivery.EndDelivered, destinations.Delivered, 0, at.Add(time.Minute))
	attempt(s, at, "c", 1, delivery.EndRetrying, destinations.Retryable, 503, at.Add(time.Second))
	attempt(s, at, "d", 1, delivery.EndFailed, destinations.Rejected, 400, at.Add(time.Second))
}

// ingestTracks has s observe the ingest of one track event per id, from
// source web, received at at and routed to destination hook.
func ingestTracks(s *Stats, at time.Time, ids ...string) {
	rep := ingest.Report{Source: "web", Status: 200}
	for _, id := range ids {
		rep.Accepted = append(rep.Accepted, jobstore.Entry{Event: event.Event{Source: "web", MessageID: id, Type: event.Track,
			ReceivedAt: at, Payload: []byte(`{}`)}, Destinations: []string{"hook"}})
		rep.Routes = append(rep.Routes, router.Decision{To: []string{"hook"}})
	}
	s.ObserveIngest(rep)
}

func attempt(s *Stats, received time.Time, id string, attempts int, end delivery.End, o destinations.Outcome, status int, when time.Time) {
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	job := &jobstore.Job{Queue: q, Event: event.Event{Source: "web", MessageID: id, ReceivedAt: received, Payload: []byte(`{}`)}, Attempts: attempts}
	res := destinations.SendResult{Result: destinations.Result{Outcome: o, StatusCode: status}}
	if status != 0 {
		res.Reason = "HTTP " + statusText(status) + ": request 12345 failed"
	}
	s.Observe(delivery.Report{Queue: q, Job: job, End: end, At: when, Result: res})
}

func statusText(status int) string {
	if status == 503 {
		return "503 Service Unavailable"
	}
	return "400 Bad Request"
}

// TestBackendReopen: what was flushed is there after a reopen, minutes,
// issue groups and gauges, and a retry of an event older than the hot
// minutes adds to its stored minute.
func TestBackendReopen(t *testing.T) {
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
			now := at
			clock := func() time.Time { return now }
			opts := bk.setup(t)
			s, err := Open(opts("n1", clock))
			if err != nil {
				t.Fatal(err)
			}
			traffic(s, at)
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			// Seven hours on: the minute of at is no longer hot.
			now = at.Add(7 * time.Hour)
			s, err = Open(opts("n1", clock))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			f := Filter{From: at, To: at.Add(time.Minute)}
			want := Counts{Received: 4, DeliveredFirst: 1, DeliveredRetry: 1, PendingRetry: 1, Failed: 1}
			if o, err := s.Overview(f); err != nil || o.Counts != want {
				t.Fatalf("after a reopen: overview %+v, %v; want %+v", o.Counts, err, want)
			}
			if got := s.PendingRetry("hook")["web"]; got != 1 {
				t.Errorf("pending retry %d after a reopen, want 1", got)
			}
			if got := s.Depth("hook")["web"]; got != 1 {
				t.Errorf("depth %d after a reopen, want 1", got)
			}
			// c is delivered at last, on its third attempt.
			attempt(s, at, "c", 3, delivery.EndDelivered, destinations.Delivered, 0, now)
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			want.PendingRetry, want.DeliveredRetry = 0, 2
			o, err := s.Overview(f)
			if err != nil || o.Counts != want || o.Latency.Count != 3 {
				t.Fatalf("after an old retry: overview %+v (latency %+v), %v; want %+v", o.Counts, o.Latency, err, want)
			}
			if o.Ingest == nil || o.Ingest.Accepted != 4 {
				t.Errorf("ingest = %+v, want 4 accepted", o.Ingest)
			}
			issues, err := s.Issues(f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, is := range issues {
				got = append(got, is.Reason+" x"+string(rune('0'+is.Count)))
			}
			if len(issues) != 2 || issues[0].Status != 503 || issues[0].Count != 2 || issues[1].Status != 400 || len(issues[0].Samples) != 2 {
				t.Errorf("issues = %q", got)
			}
		})
	}
}

// TestPostgresNodes: two nodes count the same minute into one database,
// each in its rows; a query on either sums both.
func TestPostgresNodes(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return at }
	opts := backends[1].setup(t)
	a, err := Open(opts("a", clock))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(opts("b", clock))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	traffic(a, at)
	// Node b sees a 400 first, so its issue ids differ from a's: 400 is
	// its group 1, 503 its group 2.
	attempt(b, at, "e", 1, delivery.EndFailed, destinations.Rejected, 400, at)
	traffic(b, at)
	// Node b delivers the event a left retrying: b knows it only from the
	// report, as a node that took over the queue would.
	attempt(b, at, "c", 2, delivery.EndDelivered, destinations.Delivered, 0, at.Add(time.Minute))
	for _, s := range []*Stats{a, b} {
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	want := Counts{Received: 8, DeliveredFirst: 2, DeliveredRetry: 3, PendingRetry: 1, Failed: 3}
	for name, s := range map[string]*Stats{"a": a, "b": b} {
		f := Filter{From: at, To: at.Add(time.Minute)}
		o, err := s.Overview(f)
		if err != nil || o.Counts != want || o.Latency.Count != 5 || o.Ingest.Accepted != 8 {
			t.Errorf("node %s: overview %+v latency %+v ingest %+v, %v; want %+v", name, o.Counts, o.Latency, o.Ingest, err, want)
		}
		for _, ft := range []struct {
			source, destination string
			want                int64
		}{{"web", "hook", 8}, {"", "hook", 8}, {"web", "", 8}, {"app", "", 0}, {"", "other", 0}} {
			o, err := s.Overview(Filter{Source: ft.source, Destination: ft.destination, From: f.From, To: f.To})
			if err != nil || o.Received != ft.want {
				t.Errorf("node %s: overview of %q -> %q: %d received, %v; want %d", name, ft.source, ft.destination, o.Received, err, ft.want)
			}
		}
		issues, err := s.Issues(f)
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]int64{}
		for _, is := range issues {
			got[is.Status] = is.Count
			if want := min(int(is.Count), MaxSamples); len(is.Samples) != want {
				t.Errorf("node %s: issue %d has %d samples, want %d", name, is.Status, len(is.Samples), want)
			}
		}
		if len(issues) != 2 || got[503] != 4 || got[400] != 3 {
			t.Errorf("node %s: issue counts by status %v, want 503: 4, 400: 3", name, got)
		}
		if own := s.issues[Pair{"web", "hook"}].byKey[issues[0].key()].ID; issues[0].ID != own {
			t.Errorf("node %s: merged issue has id %d, want this node's %d", name, issues[0].ID, own)
		}
		// The gauges are running differences: b ended the job a left
		// retrying, so only their sum says one job is still pending.
		gs, err := s.ClusterGauges()
		if err != nil {
			t.Fatal(err)
		}
		if g := gs[Pair{"web", "hook"}]; g.PendingRetry != 1 {
			t.Errorf("node %s: cluster gauges of web -> hook %+v, want 1 pending retry (a's %v, b's %v)",
				name, g, a.PendingRetry("hook"), b.PendingRetry("hook"))
		}
	}
}

// TestPostgresPrune: minutes before the retention go a day partition at a
// time; the days after stay.
func TestPostgresPrune(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	now := at
	clock := func() time.Time { return now }
	dsn := pgtest.Start(t)
	pool := pgtest.Pool(t, dsn)
	pg, err := NewPostgres(t.Context(), pool, PostgresOptions{Node: "n", Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Backend: pg, Now: clock, Retention: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for d := range 4 { // four days of traffic
		now = at.Add(time.Duration(d) * 24 * time.Hour)
		traffic(s, now)
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	parts := func() int {
		var n int
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_inherits WHERE inhparent = 'stats_minutes'::regclass`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := parts(); got != 4 {
		t.Fatalf("%d partitions, want 4", got)
	}
	if err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	// The retention reaches back to the 23rd 10:00: the 22nd goes, the
	// 23rd stays though it is partly before the cut.
	if got := parts(); got != 3 {
		t.Errorf("%d partitions after Prune, want 3", got)
	}
	o, err := s.Overview(Filter{From: at, To: now.Add(time.Hour)})
	if err != nil || o.Received != 12 {
		t.Errorf("overview after prune: %+v, %v; want 12 received", o.Counts, err)
	}
}

// TestPostgresDown: while the database refuses connections, a flush fails
// and keeps what it could not write; once it is back, the next flush
// writes it, and nothing panics meanwhile.
func TestPostgresDown(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	now := at
	clock := func() time.Time { return now }
	dsn := pgtest.Start(t)
	pool := pgtest.Pool(t, dsn)
	pg, err := NewPostgres(t.Context(), pool, PostgresOptions{Node: "n", Now: clock, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Backend: pg, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	down := pgtest.Outage(t, dsn)
	down(true)
	pool.Reset()
	traffic(s, at)
	if err := s.Flush(); err == nil {
		t.Fatal("Flush with the database down succeeded")
	}
	// A retry of an event older than the hot minutes needs a read: it
	// fails, and the report is not counted rather than overwriting.
	now = at.Add(7 * time.Hour)
	attempt(s, at.Add(-time.Hour), "z", 2, delivery.EndDelivered, destinations.Delivered, 0, now)
	if _, err := s.Overview(Filter{From: at, To: at.Add(time.Minute)}); err == nil {
		t.Error("Overview with the database down succeeded")
	}
	down(false)
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush once the database is back: %v", err)
	}
	s.Close()
	s, err = Open(Options{Backend: pg, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	o, err := s.Overview(Filter{From: at, To: at.Add(time.Minute)})
	want := Counts{Received: 4, DeliveredFirst: 1, DeliveredRetry: 1, PendingRetry: 1, Failed: 1}
	if err != nil || o.Counts != want {
		t.Errorf("after the outage: overview %+v, %v; want %+v", o.Counts, err, want)
	}
	// The gauges count z's end, though its minute could not be read.
	if got := s.Depth("hook")["web"]; got != 0 {
		t.Errorf("depth %d after the outage, want 0 (c left, z ended)", got)
	}
	if is, _ := s.Issues(Filter{From: at, To: at.Add(time.Hour)}); len(is) != 2 {
		t.Errorf("%d issue groups after the outage, want 2", len(is))
	}
}
