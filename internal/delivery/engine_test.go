package delivery_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/pgtest"
)

var start = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

// scripted holds the script of a test destination: the outcome of each
// event per attempt. Its requests go over real HTTP to a loopback server that
// always answers 200; Classify then returns what the script says, so tests
// control every outcome (429, 5xx) without timing games.
type scripted struct {
	url string

	mu      sync.Mutex
	sent    []string // "source/messageId" in the order requests were built
	batches [][]string
	decide  func(ev event.Event, attempt int) destinations.Result
	tries   map[string]int
	// gate, when set, blocks every Transform until a value is received.
	gate chan struct{}
}

func (s *scripted) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return destinations.Plan{}, ctx.Err()
		}
	}
	req := &destinations.Request{Method: "POST", URL: s.url, Body: []byte("{}")}
	s.mu.Lock()
	var batch []string
	for i, ev := range events {
		id := ev.Source + "/" + ev.MessageID
		s.sent = append(s.sent, id)
		batch = append(batch, id)
		req.Events = append(req.Events, i)
	}
	s.batches = append(s.batches, batch)
	s.mu.Unlock()
	return destinations.Plan{Requests: []*destinations.Request{req}}, nil
}

// decider is the Destination over a script: Transform records the events in
// a request header so that Classify, which is not given the events, can
// decide each one's outcome.
type decider struct{ *scripted }

func (d decider) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	p, err := d.scripted.Transform(ctx, events)
	if err != nil {
		return p, err
	}
	h := http.Header{}
	for _, ev := range events {
		h.Add("X-Event", ev.Source+"/"+ev.MessageID)
	}
	p.Requests[0].Header = h
	return p, nil
}

func (d decider) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	ids := req.Header.Values("X-Event")
	out := make([]destinations.Result, len(ids))
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, id := range ids {
		d.tries[id]++
		if d.decide == nil {
			out[i] = destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
			continue
		}
		var src, mid string
		for j := range id {
			if id[j] == '/' {
				src, mid = id[:j], id[j+1:]
				break
			}
		}
		out[i] = d.decide(event.Event{Source: src, MessageID: mid}, d.tries[id])
	}
	return out
}

// keyedDecider is a decider whose API throttles single users, named by
// key.
type keyedDecider struct {
	decider
	key func(event.Event) string
}

func (k keyedDecider) HoldKey(e event.Event) string { return k.key(e) }

type bundle struct {
	store   jobstore.Store
	clk     *clock.Fake
	engine  *delivery.Engine
	listen  atomic.Pointer[delivery.Engine]
	reports chan delivery.Report
	dests   map[string]*scripted
	dataDir string
	stop    func()
}

type targetSpec struct {
	name        string
	concurrency int
	batch       int
	window      time.Duration
	rateLimit   float64
	decide      func(ev event.Event, attempt int) destinations.Result
	gate        chan struct{}
	// dest, when set, is the destination instead of the script's.
	dest destinations.Destination
	// holdKey, when set, makes the script's destination a HoldKeyer.
	holdKey func(event.Event) string
	dedup   bool
}

func setup(t *testing.T, specs ...targetSpec) *bundle {
	t.Helper()
	return setupIn(t, t.TempDir(), clock.NewFake(start), specs...)
}

// setupIn is setup on a data directory that may already hold jobs.
func setupIn(t *testing.T, dir string, clk *clock.Fake, specs ...targetSpec) *bundle {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	b := &bundle{clk: clk, reports: make(chan delivery.Report, 1<<20), dests: map[string]*scripted{}, dataDir: dir}
	// The store announces appended jobs to the engine as the server wires
	// it, to whichever engine the test listens with.
	store, err := pebble.Open(filepath.Join(dir, "jobs"), pebble.Options{Now: clk.Now, Logger: quiet,
		Applied: func(a jobstore.Appended) {
			if e := b.listen.Load(); e != nil {
				e.Notify(a)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	b.store = store
	var targets []delivery.Target
	for _, sp := range specs {
		s := &scripted{url: srv.URL, decide: sp.decide, tries: map[string]int{}, gate: sp.gate}
		b.dests[sp.name] = s
		var dest destinations.Destination = decider{s}
		switch {
		case sp.dest != nil:
			dest = sp.dest
		case sp.holdKey != nil:
			dest = keyedDecider{decider{s}, sp.holdKey}
		}
		targets = append(targets, delivery.Target{
			Name: sp.name, Type: "test", Destination: dest, Client: srv.Client(),
			Limits:       delivery.Limits{Concurrency: sp.concurrency, RetryWindow: sp.window, RateLimit: sp.rateLimit},
			Batch:        destinations.BatchLimits{MaxEvents: sp.batch},
			Deduplicates: sp.dedup,
		})
	}
	eng, err := delivery.New(delivery.Options{
		Store: store, Targets: targets, Clock: clk, Seed: 1,
		Archive: archive.NewWriter(filepath.Join(dir, "archive")), Logger: quiet,
		Observe: func(r delivery.Report) { b.reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	b.engine = eng
	b.listen.Store(eng)
	stopEngine := run(eng)
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			stopEngine()
			store.Close()
		})
	}
	t.Cleanup(b.stop)
	return b
}

// run runs eng in its own goroutine until the returned stop is called;
// stop cancels Run's context and waits for Run to return.
// openStore opens the job store of dir (in dir/jobs) on clk's time.
func openStore(t *testing.T, dir string, clk *clock.Fake) *pebble.Store {
	t.Helper()
	store, err := pebble.Open(filepath.Join(dir, "jobs"), pebble.Options{Now: clk.Now, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func run(eng *delivery.Engine) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		eng.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// send appends n events from source to the destinations.
func (b *bundle) send(t *testing.T, source string, n int, dests ...string) {
	t.Helper()
	entries := make([]jobstore.Entry, n)
	for i := range entries {
		id := fmt.Sprintf("%s-%d", source, i)
		entries[i] = jobstore.Entry{
			Event: event.Event{Source: source, MessageID: id, Type: event.Track, ReceivedAt: b.clk.Now(),
				Payload: []byte(fmt.Sprintf(`{"type":"track","messageId":%q}`, id))},
			Destinations: dests,
		}
	}
	if _, err := b.store.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
}

// await collects n reports, failing after a generous bound.
func (b *bundle) await(t *testing.T, n int) []delivery.Report {
	t.Helper()
	var out []delivery.Report
	timeout := time.After(20 * time.Second)
	for len(out) < n {
		select {
		case r := <-b.reports:
			out = append(out, r)
		case <-timeout:
			t.Fatalf("got %d reports, want %d", len(out), n)
		}
	}
	return out
}

func count(rs []delivery.Report, source string, end delivery.End) int {
	n := 0
	for _, r := range rs {
		if r.Queue.Source == source && r.End == end {
			n++
		}
	}
	return n
}

func (b *bundle) state(t *testing.T, dest, source string) (delivery.DestinationState, delivery.QueueState) {
	t.Helper()
	for _, d := range b.engine.State(context.Background()) {
		if d.Name != dest {
			continue
		}
		for _, q := range d.Queues {
			if q.Queue.Source == source {
				return d, q
			}
		}
		return d, delivery.QueueState{}
	}
	t.Fatalf("no destination %q", dest)
	return delivery.DestinationState{}, delivery.QueueState{}
}

func TestDeliversEverythingAndEmptiesTheStore(t *testing.T) {
	b := setup(t, targetSpec{name: "hook"}, targetSpec{name: "other"})
	b.send(t, "web", 500, "hook", "other")
	rs := b.await(t, 1000)
	if n := count(rs, "web", delivery.EndDelivered); n != 1000 {
		t.Fatalf("delivered %d, want 1000", n)
	}
	b.stop()
	store, err := pebble.Open(filepath.Join(b.dataDir, "jobs"), pebble.Options{Now: b.clk.Now, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	qs, err := store.Queues(context.Background())
	if err != nil || len(qs) != 0 {
		t.Fatalf("queues after draining: %v, %v; want none", qs, err)
	}
}

// With one slot, a source with a backlog and a source with a few events
// alternate: the small source never waits behind the big one's backlog.
func TestRoundRobinAcrossSources(t *testing.T) {
	gate := make(chan struct{})
	b := setup(t, targetSpec{name: "hook", concurrency: 1, gate: gate})
	b.send(t, "big", 200, "hook")
	gate <- struct{}{} // big's first request is built; the rest wait
	b.send(t, "small", 5, "hook")
	for range 204 {
		gate <- struct{}{}
	}
	b.await(t, 205)
	s := b.dests["hook"]
	s.mu.Lock()
	defer s.mu.Unlock()
	// Once small has jobs, it gets every other turn: its 5 jobs are all out
	// within the first 2*5+2 requests.
	last := -1
	for i, id := range s.sent {
		if id[:5] == "small" {
			last = i
		}
	}
	if last < 0 || last > 11 {
		t.Fatalf("small's last job went out as request %d of %d; want within the first 12: %v", last, len(s.sent), s.sent[:12])
	}
}

func TestRetryableIsRescheduledWithBackoff(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", decide: func(ev event.Event, attempt int) destinations.Result {
		if attempt < 3 {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: 500, Reason: "HTTP 500"}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}})
	// Fewer events than CircuitThreshold, so the circuit stays closed.
	b.send(t, "web", 5, "hook")
	rs := b.await(t, 5)
	if n := count(rs, "web", delivery.EndRetrying); n != 5 {
		t.Fatalf("retrying %d, want 5", n)
	}
	_, q := b.state(t, "hook", "web")
	lo, hi := start.Add(delivery.BackoffBase/2), start.Add(delivery.BackoffBase)
	if q.RetryNext.Before(lo) || !q.RetryNext.Before(hi) {
		t.Fatalf("next retry at %v, want in [%v, %v)", q.RetryNext, lo, hi)
	}
	b.clk.Advance(delivery.BackoffBase)
	rs = b.await(t, 5)
	if n := count(rs, "web", delivery.EndRetrying); n != 5 {
		t.Fatalf("second attempt: retrying %d, want 5", n)
	}
	b.clk.Advance(2 * delivery.BackoffBase)
	rs = b.await(t, 5)
	for _, r := range rs {
		if r.End != delivery.EndDelivered || r.Job.Attempts != 3 {
			t.Fatalf("third attempt: %v after %d attempts, want delivered after 3", r.End, r.Job.Attempts)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	for attempts := 1; attempts <= 30; attempts++ {
		d := min(delivery.BackoffBase<<min(attempts-1, 20), delivery.BackoffCap)
		for _, r := range []float64{0, 0.5, 0.999999} {
			got := delivery.Backoff(attempts, r)
			if got < d/2 || got >= d {
				t.Fatalf("Backoff(%d, %v) = %v, want in [%v, %v)", attempts, r, got, d/2, d)
			}
		}
	}
}

// A 429 pauses its own queue for Retry-After and halves its concurrency;
// other queues of the destination carry on.
func TestRateLimitPausesOnlyItsQueue(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", concurrency: 8, decide: func(ev event.Event, attempt int) destinations.Result {
		if ev.MessageID == "noisy-0" && attempt == 1 {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, RetryAfter: 30 * time.Second, Reason: "HTTP 429"}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}})
	b.send(t, "noisy", 1, "hook")
	rs := b.await(t, 1)
	if rs[0].End != delivery.EndRetrying {
		t.Fatalf("noisy's first attempt: %v, want retrying", rs[0].End)
	}
	b.sendOne(t, "noisy", "noisy-1") // held by the pause
	b.send(t, "quiet", 20, "hook")
	rs = b.await(t, 20)
	if n := count(rs, "quiet", delivery.EndDelivered); n != 20 {
		t.Fatalf("quiet delivered %d of 20 while noisy is paused", n)
	}
	_, q := b.state(t, "hook", "noisy")
	if want := start.Add(30 * time.Second); !q.PausedUntil.Equal(want) || q.InFlight != 0 || q.Buffered+btoi(q.Backlog) == 0 {
		t.Fatalf("noisy paused until %v with %d in flight, %d buffered; want %v, 0 in flight, jobs waiting", q.PausedUntil, q.InFlight, q.Buffered, want)
	}
	if q.Limit != 4 {
		t.Fatalf("noisy's concurrency limit %v after a 429, want 8/2 = 4", q.Limit)
	}
	b.clk.Advance(30 * time.Second)
	rs = b.await(t, 2)
	for _, r := range rs {
		want := map[string]int{"noisy-0": 2, "noisy-1": 1}[r.Job.Event.MessageID]
		if r.End != delivery.EndDelivered || r.Job.Attempts != want {
			t.Fatalf("after the pause: %s %v on attempt %d, want delivered on attempt %d", r.Job.Event.MessageID, r.End, r.Job.Attempts, want)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestAIMD(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", concurrency: 16, decide: func(ev event.Event, attempt int) destinations.Result {
		if attempt <= 1 && ev.MessageID < "web-3" {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, Reason: "HTTP 429"}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}})
	for i := range 3 {
		b.sendOne(t, "web", fmt.Sprintf("web-%d", i))
		b.await(t, 1)
		b.clk.Advance(delivery.ThrottleBackoffBase)
		b.await(t, 1) // delivered after the pause
	}
	_, q := b.state(t, "hook", "web")
	// 16 -> 8 (429) -> +1/8 -> 4.0625 (429) ... each 429 halves, each success adds 1/limit.
	limit := 16.0
	for range 3 {
		limit = max(limit/2, 1)
		limit += 1 / limit
	}
	if diff := q.Limit - limit; diff > 1e-9 || diff < -1e-9 {
		t.Fatalf("limit %v, want %v", q.Limit, limit)
	}
}

// Jobs in the store when the engine starts, pending or waiting for a
// retry, are delivered without a new event for their queue.
func TestDeliversWhatTheStoreHoldsAtStart(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(start)
	store := openStore(t, dir, clk)
	var entries []jobstore.Entry
	for i := range 6 {
		id := fmt.Sprintf("web-%d", i)
		entries = append(entries, jobstore.Entry{Event: event.Event{Source: "web", MessageID: id, Type: event.Track,
			ReceivedAt: start, Payload: []byte(`{}`)}, Destinations: []string{"hook"}})
	}
	if _, err := store.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	// Half of them wait in the retry set, due now.
	jobs, err := store.Pending(context.Background(), jobstore.Queue{Source: "web", Destination: "hook"}, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	var u jobstore.Update
	for _, j := range jobs {
		u.Reschedule = append(u.Reschedule, jobstore.Reschedule{Job: j, DueAt: start, Attempts: 1, LastError: "HTTP 503"})
	}
	if err := store.Apply(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	b := setupIn(t, dir, clk, targetSpec{name: "hook"})
	rs := b.await(t, 6)
	if n := count(rs, "web", delivery.EndDelivered); n != 6 {
		t.Fatalf("%d of the 6 stored jobs delivered", n)
	}
}

// A 5xx or a timeout halves the queue's concurrency as a 429 does, without
// pausing it; successes then add back 1/limit each.
func TestAIMDOnServerErrors(t *testing.T) {
	for _, c := range []struct {
		name   string
		result destinations.Result
	}{
		{"503", destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503"}},
		{"timeout", destinations.Result{Outcome: destinations.Retryable, Reason: "timeout after 10s"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := setup(t, targetSpec{name: "hook", concurrency: 16, decide: func(ev event.Event, attempt int) destinations.Result {
				if ev.MessageID == "web-0" && attempt == 1 {
					return c.result
				}
				return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
			}})
			b.sendOne(t, "web", "web-0")
			b.await(t, 1)
			_, q := b.state(t, "hook", "web")
			if q.Limit != 8 || !q.PausedUntil.IsZero() {
				t.Fatalf("after a %s: limit %v, paused until %v; want 16/2 = 8, not paused", c.name, q.Limit, q.PausedUntil)
			}
			b.sendOne(t, "web", "web-1")
			b.await(t, 1)
			if _, q = b.state(t, "hook", "web"); q.Limit != 8+1.0/8 {
				t.Fatalf("after a success: limit %v, want 8 + 1/8", q.Limit)
			}
		})
	}
}

func (b *bundle) sendOne(t *testing.T, source, id string) {
	t.Helper()
	e := jobstore.Entry{
		Event: event.Event{Source: source, MessageID: id, Type: event.Track, ReceivedAt: b.clk.Now(),
			Payload: []byte(fmt.Sprintf(`{"messageId":%q}`, id))},
		Destinations: []string{"hook"},
	}
	if _, err := b.store.Append(context.Background(), []jobstore.Entry{e}); err != nil {
		t.Fatal(err)
	}
}

func TestCircuitOpensProbesAndCloses(t *testing.T) {
	var mu sync.Mutex
	up := false
	b := setup(t, targetSpec{name: "hook", concurrency: 1, decide: func(ev event.Event, attempt int) destinations.Result {
		mu.Lock()
		defer mu.Unlock()
		if up {
			return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
		}
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503"}
	}})
	b.send(t, "web", 100, "hook")
	b.await(t, delivery.CircuitThreshold)
	d, _ := b.state(t, "hook", "web")
	if !d.CircuitOpen || !d.ProbeAt.Equal(start.Add(delivery.CircuitProbeMin)) {
		t.Fatalf("after %d failures: open=%v probe at %v, want open, probe at +%v", delivery.CircuitThreshold, d.CircuitOpen, d.ProbeAt, delivery.CircuitProbeMin)
	}
	if n := len(b.dests["hook"].sent); n != delivery.CircuitThreshold {
		t.Fatalf("%d requests sent, want %d: an open circuit burns no attempts", n, delivery.CircuitThreshold)
	}
	b.clk.Advance(delivery.CircuitProbeMin) // one probe, fails
	b.await(t, 1)
	d, _ = b.state(t, "hook", "web")
	probed := start.Add(delivery.CircuitProbeMin)
	if lo, hi := probed.Add(delivery.CircuitProbeMin), probed.Add(2*delivery.CircuitProbeMin); !d.CircuitOpen || d.ProbeAt.Before(lo) || !d.ProbeAt.Before(hi) {
		t.Fatalf("after a failed probe: open=%v probe at %v, want open, probe in [%v, %v): the interval doubled, randomized", d.CircuitOpen, d.ProbeAt, lo, hi)
	}
	// A destination down for long is probed, one request at a time, at
	// most CircuitProbeMax apart, so that its return is noticed in seconds.
	for range 20 {
		sent := len(b.dests["hook"].sent)
		prev := b.clk.Now()
		b.clk.Advance(d.ProbeAt.Sub(prev))
		b.await(t, 1)
		if n := len(b.dests["hook"].sent); n != sent+1 {
			t.Fatalf("a probe sent %d requests, want 1", n-sent)
		}
		d, _ = b.state(t, "hook", "web")
		if gap := d.ProbeAt.Sub(b.clk.Now()); gap < delivery.CircuitProbeMax/2 || gap >= delivery.CircuitProbeMax {
			t.Fatalf("probe %v after the last, want in [%v, %v)", gap, delivery.CircuitProbeMax/2, delivery.CircuitProbeMax)
		}
	}
	mu.Lock()
	up = true
	mu.Unlock()
	b.clk.Advance(d.ProbeAt.Sub(b.clk.Now()))
	b.await(t, 1)
	d, _ = b.state(t, "hook", "web")
	if d.CircuitOpen {
		t.Fatal("circuit still open after a successful probe")
	}
}

func TestRetryWindowEndsInArchive(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", window: time.Minute, decide: func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 500, Reason: "HTTP 500: database is down"}
	}})
	b.send(t, "web", 1, "hook")
	var last delivery.Report
	for i := 0; i < 20 && last.End != delivery.EndArchived; i++ {
		last = b.await(t, 1)[0]
		b.clk.Advance(20 * time.Second)
	}
	if last.End != delivery.EndArchived {
		t.Fatalf("job ended %v, want archived", last.End)
	}
	_, q := b.state(t, "hook", "web")
	if !q.RetryNext.IsZero() || q.Buffered != 0 {
		t.Fatalf("queue still holds the job: %+v", q)
	}
	files, _ := filepath.Glob(filepath.Join(b.dataDir, "archive", "web", "hook", "*.jsonl.gz"))
	if len(files) != 1 {
		t.Fatalf("archive files %v, want one", files)
	}
	recs, err := archive.Read(files[0])
	if err != nil || len(recs) != 1 {
		t.Fatalf("archive records %v, %v", recs, err)
	}
	if recs[0].MessageID != "web-0" || recs[0].LastError != "HTTP 500: database is down" || string(recs[0].Event) != `{"type":"track","messageId":"web-0"}` {
		t.Fatalf("archived %+v", recs[0])
	}
}

// While a destination's circuit is open only probes go out, so the jobs
// waiting behind it are archived by a sweep once their retry window ends,
// without an attempt each, rather than waiting as long as the outage lasts.
func TestOpenCircuitArchivesExpiredJobs(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", concurrency: 1, window: 10 * time.Minute, decide: func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 503, Reason: "HTTP 503: down for maintenance"}
	}})
	b.send(t, "web", 200, "hook")
	b.await(t, delivery.CircuitThreshold)
	if d, _ := b.state(t, "hook", "web"); !d.CircuitOpen {
		t.Fatal("circuit closed after the threshold of failures")
	}
	b.clk.Advance(11 * time.Minute) // past every job's window: one probe, then the sweep
	rs := b.await(t, 200)
	expired, attempted := 0, 0
	for _, r := range rs {
		if r.End != delivery.EndArchived {
			t.Fatalf("%s ended %v, want archived", r.Job.Event.MessageID, r.End)
		}
		if r.Expired {
			expired++
		} else {
			attempted++
		}
	}
	if attempted != 1 || expired != 199 {
		t.Fatalf("archived %d after an attempt (the probe) and %d by the sweep, want 1 and 199", attempted, expired)
	}
	if n := len(b.dests["hook"].sent); n != delivery.CircuitThreshold+1 {
		t.Fatalf("%d requests sent, want the %d that opened the circuit and one probe", n, delivery.CircuitThreshold)
	}
	files, _ := filepath.Glob(filepath.Join(b.dataDir, "archive", "web", "hook", "*.jsonl.gz"))
	var recs []archive.Record
	for _, f := range files {
		got, err := archive.Read(f)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, got...)
	}
	if len(recs) != 200 {
		t.Fatalf("%d archive records, want 200", len(recs))
	}
	for _, r := range recs {
		// The ten that opened the circuit keep their own last error.
		if !strings.HasPrefix(r.LastError, "HTTP 503") && !strings.Contains(r.LastError, "circuit was open") {
			t.Fatalf("archived %s with last error %q", r.MessageID, r.LastError)
		}
	}
	// The scheduler writes the outcomes it gathered after it reports them.
	eventually(t, "an empty store", func() bool {
		qs, err := b.store.Queues(context.Background())
		return err == nil && len(qs) == 0
	})
}

// A 429 asking for a day pauses its queue for MaxRetryAfter at most.
func TestRetryAfterIsCapped(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", decide: func(ev event.Event, attempt int) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: 429, RetryAfter: 24 * time.Hour, Reason: "HTTP 429: daily quota"}
	}})
	b.send(t, "web", 1, "hook")
	b.await(t, 1)
	if _, q := b.state(t, "hook", "web"); !q.PausedUntil.Equal(start.Add(delivery.MaxRetryAfter)) {
		t.Fatalf("paused until %v, want %v", q.PausedUntil, start.Add(delivery.MaxRetryAfter))
	}
}

// In batch mode, the events of a batch that failed retryably are retried
// alone; the delivered ones are not sent again.
func TestPartialBatchFailureRetriesOnlyTheFailed(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", batch: 10, decide: func(ev event.Event, attempt int) destinations.Result {
		var n int
		fmt.Sscanf(ev.MessageID, "web-%d", &n)
		if n%3 == 0 && attempt == 1 {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: 500, Reason: "HTTP 500"}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
	}})
	b.send(t, "web", 10, "hook")
	b.await(t, 10)
	b.clk.Advance(delivery.BackoffBase)
	rs := b.await(t, 4) // web-0, 3, 6, 9
	for _, r := range rs {
		if r.End != delivery.EndDelivered || r.Job.Attempts != 2 {
			t.Fatalf("retry: %s %v attempts %d", r.Job.Event.MessageID, r.End, r.Job.Attempts)
		}
	}
	s := b.dests["hook"]
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.batches) != 2 || len(s.batches[0]) != 10 || len(s.batches[1]) != 4 {
		t.Fatalf("batches %v, want one of 10 then one of the 4 failed", s.batches)
	}
}

// A batch can be bigger than a queue's usual page: the queue then loads a
// whole batch at once, from the store or from what was just announced, so
// that requests are full and not cut at the page size.
func TestBatchesBiggerThanAPageAreFull(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events int
		want   []int
	}{
		{"backlog read from the store", 450, []int{150, 150, 150}},
		{"announced jobs beyond a page", 120, []int{120}},
		{"backlog with a partial last batch", 400, []int{150, 150, 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, targetSpec{name: "hook", batch: 150, concurrency: 1, decide: func(event.Event, int) destinations.Result {
				return destinations.Result{Outcome: destinations.Delivered, StatusCode: 200}
			}})
			b.send(t, "web", tc.events, "hook")
			b.await(t, tc.events)
			s := b.dests["hook"]
			s.mu.Lock()
			defer s.mu.Unlock()
			var sizes []int
			for _, batch := range s.batches {
				sizes = append(sizes, len(batch))
			}
			if !slices.Equal(sizes, tc.want) {
				t.Fatalf("batches of %v, want %v", sizes, tc.want)
			}
		})
	}
}

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

// The destination's rate limit spaces requests across all its queues: at
// 10 requests/s (burst 1), one goes out per 100 ms of clock.
func TestRateLimitSpacesRequests(t *testing.T) {
	b := setup(t, targetSpec{name: "hook", rateLimit: 10})
	b.send(t, "a", 3, "hook")
	b.send(t, "b", 3, "hook")
	b.await(t, 1) // the burst
	for i := range 5 {
		_, q := b.state(t, "hook", "a")
		_, qb := b.state(t, "hook", "b")
		if q.InFlight+qb.InFlight != 0 {
			t.Fatalf("step %d: a request went out before its token", i)
		}
		b.clk.Advance(100 * time.Millisecond)
		b.await(t, 1)
	}
	s := b.dests["hook"]
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sent) != 6 {
		t.Fatalf("%d requests, want 6", len(s.sent))
	}
	// Round-robin across the two sources under the shared limit: once b has
	// jobs, the two alternate until one runs out.
	left := map[byte]int{'a': 3, 'b': 3}
	seenB := false
	for i, id := range s.sent {
		src := id[0]
		seenB = seenB || src == 'b'
		if i > 0 && seenB && src == s.sent[i-1][0] && left['a'] > 0 && left['b'] > 0 {
			t.Fatalf("requests %v: %c went twice in a row while both sources had jobs", s.sent, src)
		}
		left[src]--
	}
}

// panicky is an integration whose Transform always panics.
type panicky struct{}

func (panicky) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var m map[string]int
	m["boom"]++ // a nil map write: the kind of bug that reaches production
	return destinations.Plan{}, nil
}

func (panicky) Classify(*destinations.Request, *destinations.Response) []destinations.Result {
	return nil
}

// A panicking integration costs its own jobs an attempt each, and once it
// keeps panicking its circuit opens; the process and the other destination
// carry on.
func TestPanickingIntegrationOpensItsCircuit(t *testing.T) {
	b := setup(t, targetSpec{name: "hook"})
	store := b.store
	clk := b.clk
	reports := make(chan delivery.Report, 1000)
	eng, err := delivery.New(delivery.Options{
		Store: store, Clock: clk, Seed: 1, Logger: quiet,
		Targets: []delivery.Target{
			{Name: "broken", Type: "panicky", Destination: panicky{}, Limits: delivery.Limits{Concurrency: 1}},
			{Name: "fine", Type: "test", Destination: decider{&scripted{url: b.dests["hook"].url, tries: map[string]int{}}}, Limits: delivery.Limits{Concurrency: 1}},
		},
		Archive: archive.NewWriter(filepath.Join(b.dataDir, "archive2")),
		Observe: func(r delivery.Report) { reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer run(eng)()
	b.listen.Store(eng)

	entries := make([]jobstore.Entry, 20)
	for i := range entries {
		id := fmt.Sprintf("p-%d", i)
		entries[i] = jobstore.Entry{
			Event:        event.Event{Source: "web", MessageID: id, Type: event.Track, ReceivedAt: clk.Now(), Payload: []byte(`{}`)},
			Destinations: []string{"broken", "fine"},
		}
	}
	if _, err := store.Append(t.Context(), entries); err != nil {
		t.Fatal(err)
	}
	var broken, fine int
	for broken < delivery.CircuitThreshold || fine < 20 {
		select {
		case r := <-reports:
			switch r.Queue.Destination {
			case "broken":
				broken++
				if r.End != delivery.EndRetrying || !strings.Contains(r.Result.Reason, "panicked") {
					t.Fatalf("broken: %v %q, want retrying because the integration panicked", r.End, r.Result.Reason)
				}
			case "fine":
				fine++
				if r.End != delivery.EndDelivered {
					t.Fatalf("fine: %v", r.End)
				}
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("reports: broken %d, fine %d", broken, fine)
		}
	}
	for _, d := range eng.State(t.Context()) {
		if d.Name == "broken" && !d.CircuitOpen {
			t.Fatalf("after %d panics the circuit is closed", broken)
		}
		if d.Name == "broken" && d.InFlight != 0 {
			t.Fatalf("broken has %d requests in flight with its circuit open", d.InFlight)
		}
	}
}
