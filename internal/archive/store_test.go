package archive

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// stores are the two archives, for the tests that run over both.
var stores = []struct {
	name string
	open func(t *testing.T) Store
}{
	{"files", func(t *testing.T) Store { return NewWriter(t.TempDir()) }},
	{"postgres", func(t *testing.T) Store {
		p, err := NewPostgres(t.Context(), pgtest.Pool(t, pgtest.Start(t)))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}},
}

// scanIDs scans q in a from from to to and returns the messageIds of the
// records, in order, run together: "abc" for records a, b and c.
func scanIDs(t *testing.T, a Store, q jobstore.Queue, from, to time.Time) string {
	t.Helper()
	recs, err := a.Scan(q, from, to)
	if err != nil {
		t.Fatal(err)
	}
	var got string
	for _, r := range recs {
		got += r.MessageID
	}
	return got
}

// openJobs opens an empty job store to replay into, closed when t ends.
func openJobs(t *testing.T) *pebble.Store {
	t.Helper()
	store, err := pebble.Open(t.TempDir(), pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// TestStoreWriteScan writes records across hours and months and reads
// ranges of them back, from each archive.
func TestStoreWriteScan(t *testing.T) {
	q := jobstore.Queue{Source: "web/app", Destination: "hook"} // a name that needs escaping
	other := jobstore.Queue{Source: "web", Destination: "hook"}
	t0 := time.Date(2026, 11, 30, 22, 30, 0, 0, time.UTC) // the last hours of a month
	rec := func(q jobstore.Queue, id string, received time.Time) Record {
		return Record{Source: q.Source, Destination: q.Destination, MessageID: id, ReceivedAt: received,
			ArchivedAt: received.Add(4 * time.Hour), Attempts: 7, LastError: "HTTP 503: \x00 and \xff",
			Event: []byte(`{"messageId":"` + id + `"}`)}
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			a := st.open(t)
			// Two writes into the same hour (for the files archive, two
			// gzip members of one file) and one into the next.
			writes := []struct {
				q    jobstore.Queue
				at   time.Time
				recs []Record
			}{
				{q, t0.Add(4 * time.Hour), []Record{rec(q, "a", t0), rec(q, "b", t0.Add(time.Minute))}},
				{q, t0.Add(4*time.Hour + time.Minute), []Record{rec(q, "c", t0.Add(20*time.Minute))}},
				{q, t0.Add(5 * time.Hour), []Record{rec(q, "d", t0.Add(2*time.Hour))}}, // December
				{other, t0.Add(4 * time.Hour), []Record{rec(other, "x", t0)}},
			}
			for _, w := range writes {
				if err := a.Write(w.q, w.at, w.recs); err != nil {
					t.Fatal(err)
				}
			}
			tests := []struct {
				from, to time.Time
				want     string
			}{
				{t0, t0.Add(3 * time.Hour), "abcd"},
				{t0.Add(time.Minute), t0.Add(time.Hour), "bc"},
				{t0.Add(time.Hour), t0.Add(3 * time.Hour), "d"},
				{t0.Add(-time.Hour), t0, ""},
			}
			for _, tt := range tests {
				if got := scanIDs(t, a, q, tt.from, tt.to); got != tt.want {
					t.Errorf("Scan(%v, %v) = %q, want %q", tt.from, tt.to, got, tt.want)
				}
			}
			recs, err := a.Scan(q, t0, t0.Add(time.Second))
			if err != nil || len(recs) != 1 {
				t.Fatalf("Scan = %v, %v", recs, err)
			}
			want := rec(q, "a", t0)
			r := recs[0]
			if r.Source != want.Source || r.Destination != want.Destination || !r.ReceivedAt.Equal(want.ReceivedAt) ||
				!r.ArchivedAt.Equal(want.ArchivedAt) || r.Attempts != 7 || string(r.Event) != string(want.Event) {
				t.Errorf("record = %+v, want %+v", r, want)
			}
			if st.name == "postgres" && r.LastError != want.LastError {
				// JSON turns invalid UTF-8 into U+FFFD; the table keeps bytes.
				t.Errorf("last error = %q, want %q", r.LastError, want.LastError)
			}
		})
	}
}

// TestStoreReplay replays archived events from each archive into a job
// store: they come back as new jobs of their queue.
func TestStoreReplay(t *testing.T) {
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	t0 := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	var recs []Record
	for i := range replayChunk + 1 { // two Appends
		recs = append(recs, Record{Source: q.Source, Destination: q.Destination, MessageID: fmt.Sprint("m", i),
			ReceivedAt: t0.Add(time.Duration(i) * time.Millisecond), Attempts: 3,
			Event: []byte(`{"type":"track","receivedAt":"2026-11-22T10:30:00Z"}`)})
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			a := st.open(t)
			if err := a.Write(q, t0.Add(4*time.Hour), recs); err != nil {
				t.Fatal(err)
			}
			store := openJobs(t)
			now := t0.Add(5 * time.Hour)
			r := &Replayer{Archive: a, Store: store, Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)}
			n, err := r.Replay(t.Context(), q.Source, q.Destination, t0, t0.Add(time.Hour))
			if err != nil || n != len(recs) {
				t.Fatalf("Replay = %d, %v; want %d", n, err, len(recs))
			}
			jobs, err := store.Pending(t.Context(), q, 0, 2*len(recs))
			if err != nil {
				t.Fatal(err)
			}
			if len(jobs) != len(recs) {
				t.Fatalf("%d jobs pending, want %d", len(jobs), len(recs))
			}
			for i, j := range jobs {
				e := j.Event
				if e.MessageID != recs[i].MessageID || e.Type != "track" || !e.ReceivedAt.Equal(now) || string(e.Payload) != string(recs[i].Event) {
					t.Fatalf("replayed job %d = %+v", i, e)
				}
			}
		})
	}
}

// TestPostgresDown: while the database is down a Write fails, so the
// engine keeps the jobs; once it is back the same Write succeeds.
func TestPostgresDown(t *testing.T) {
	dsn := pgtest.Start(t)
	pool := pgtest.Pool(t, dsn)
	a, err := NewPostgres(t.Context(), pool)
	if err != nil {
		t.Fatal(err)
	}
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	t0 := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	recs := []Record{{Source: q.Source, Destination: q.Destination, MessageID: "m", ReceivedAt: t0, Event: []byte(`{}`)}}
	down := pgtest.Outage(t, dsn)
	down(true)
	pool.Reset()
	if err := a.Write(q, t0, recs); err == nil {
		t.Fatal("Write with the database down succeeded")
	}
	if _, err := a.Scan(q, t0, t0.Add(time.Hour)); err == nil {
		t.Fatal("Scan with the database down succeeded")
	}
	down(false)
	if err := a.Write(q, t0, recs); err != nil {
		t.Fatalf("Write once the database is back: %v", err)
	}
	got, err := a.Scan(q, t0, t0.Add(time.Hour))
	if err != nil || len(got) != 1 {
		t.Fatalf("Scan = %v, %v; want the one record", got, err)
	}
}
