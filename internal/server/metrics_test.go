package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fanout/fanout/internal/admin"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/latency"
	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/server"
	"github.com/fanout/fanout/internal/stats"
)

// The queue scenario: seven destinations behind one fault-injecting sink,
// fed by four sources, on a fake clock that moves only when the test says.
// With time frozen, every first attempt is made and nothing is retried, so
// the state the scenario settles in is exact and stays put while it is
// read:
//
//	destination  source  sink answers                       after the first attempts
//	ok           web     200                                6 delivered
//	flaky        web     503 on each event's first attempt  6 retrying (backoff 1-2 s)
//	reject       web     400                                6 failed
//	archive      legacy  503, retry window 1 ms             3 retrying, archived on the retry
//	down         app     503                                10 retrying, circuit open
//	throttled    mobile  429, Retry-After: 600 (conc. 1)    1 attempt, queue paused 10 min
//	hang         mobile  never, until released (conc. 2)    2 in flight, 1 waiting
//
// Advancing the clock past the backoff (2.5 s after the events) then
// delivers flaky's retries and archives archive's.
const (
	queueKeyWeb    = "wk_queue_web"
	queueKeyApp    = "wk_queue_app"
	queueKeyMobile = "wk_queue_mobile"
	queueKeyLegacy = "wk_queue_legacy"
	// retryAfter is what the throttled destination asks for, in seconds.
	retryAfter = 600
)

// faults is the scenario's sink: its path names the behaviour.
type faults struct {
	release chan struct{} // closed to let /hang answer
	mu      sync.Mutex
	tries   map[string]int // by path and webhook-id
}

func (f *faults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	f.mu.Lock()
	f.tries[r.URL.Path+" "+r.Header.Get("webhook-id")]++
	n := f.tries[r.URL.Path+" "+r.Header.Get("webhook-id")]
	f.mu.Unlock()
	switch {
	case r.URL.Path == "/flaky" && n == 1, r.URL.Path == "/down":
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":"unavailable"}`)
		return
	case r.URL.Path == "/reject":
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"bad event"}`)
		return
	case r.URL.Path == "/throttle":
		w.Header().Set("Retry-After", fmt.Sprint(retryAfter))
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"error":"slow down"}`)
		return
	case r.URL.Path == "/hang":
		select {
		case <-f.release:
		case <-r.Context().Done():
			return
		}
	}
	io.WriteString(w, `{"ok":true}`)
}

// Normalized ingest rejection reasons, as the stats count them.
const (
	reasonType       = `expected type to be one of identify, track, page, screen, group, alias, found the string "nonsense"`
	reasonNoID       = `expected userId or anonymousId, found userId nothing and anonymousId nothing`
	reasonJSON       = `expected a JSON object, found invalid JSON: unexpected end of input`
	reasonUnknownKey = `unknown write key: send a configured source's write key as the Basic auth user name`
	reasonMissingKey = `missing write key: send it as the Basic auth user name (empty password) or as writeKey in the body`
)

// ingestCase is one tracking API request of the scenario and what the
// tracking API must make of it.
type ingestCase struct {
	name   string
	key    string // the write key; "" sends none
	body   string
	status int
	// source is the source the key selects, "" when none.
	source                 string
	accepted, deduplicated int
	// rejected holds the normalized reason of each rejected event, or of
	// the request when it was refused whole.
	rejected []string
}

const (
	nonsense = `{"type":"nonsense","userId":"u1"}`
	noID     = `{"type":"track","event":"Order Completed"}`
)

var ingestTraffic = []ingestCase{
	{name: "web events", key: queueKeyWeb, body: batch(tracks("web", 0, 5)...), status: 200,
		source: "web", accepted: 5},
	{name: "a client retry", key: queueKeyWeb, body: batch(tracks("web", 0, 1)...), status: 200,
		source: "web", deduplicated: 1},
	{name: "a batch partly rejected", key: queueKeyWeb, body: batch(append(tracks("web", 5, 1), nonsense, noID)...), status: 200,
		source: "web", accepted: 1, rejected: []string{reasonType, reasonNoID}},
	{name: "a batch wholly rejected", key: queueKeyWeb, body: batch(nonsense, nonsense), status: 400,
		source: "web", rejected: []string{reasonType, reasonType}},
	{name: "not JSON", key: queueKeyWeb, body: `{"batch":[`, status: 400,
		source: "web", rejected: []string{reasonJSON}},
	{name: "an unknown write key", key: "wk_nobody", body: batch(tracks("nobody", 0, 1)...), status: 401,
		rejected: []string{reasonUnknownKey}},
	{name: "no write key", body: batch(tracks("nobody", 1, 1)...), status: 401,
		rejected: []string{reasonMissingKey}},
	{name: "app events", key: queueKeyApp, body: batch(tracks("app", 0, 10)...), status: 200,
		source: "app", accepted: 10},
	{name: "mobile events", key: queueKeyMobile, body: batch(tracks("mobile", 0, 3)...), status: 200,
		source: "mobile", accepted: 3},
	{name: "legacy events", key: queueKeyLegacy, body: batch(tracks("legacy", 0, 3)...), status: 200,
		source: "legacy", accepted: 3},
}

// tracks returns n track calls with messageIds prefix-from to prefix-(from+n-1).
func tracks(prefix string, from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = track(fmt.Sprintf("%s-%d", prefix, from+i), "", "")
	}
	return out
}

// queueBundle is what the queue tests need: the running server, its clock
// and the time the events were received at (the clock's start).
type queueBundle struct {
	r     *running
	clock *clock.Fake
	t0    time.Time
}

var (
	queueDests   = []string{"archive", "down", "flaky", "hang", "ok", "reject", "throttled"}
	queueSources = []string{"app", "legacy", "mobile", "web"}
	outcomes     = []string{"delivered", "failed", "unsupported", "archived", "retrying"}
)

// queueSetup starts the scenario, sends ingestTraffic and waits until the
// first attempts have all been made (see settledMetrics).
func queueSetup(t *testing.T) *queueBundle {
	t.Helper()
	f := &faults{release: make(chan struct{}), tries: map[string]int{}}
	sink := httptest.NewServer(f)
	t.Cleanup(sink.Close)
	p := configFile(t, t.TempDir(), fmt.Sprintf(`sources:
  - {name: web, write_key: %[2]s}
  - {name: app, write_key: %[3]s}
  - {name: mobile, write_key: %[4]s}
  - {name: legacy, write_key: %[5]s}
destinations:
  - {name: ok, type: webhook, sources: [web], settings: {url: "%[1]s/ok"}}
  - {name: flaky, type: webhook, sources: [web], settings: {url: "%[1]s/flaky"}}
  - {name: reject, type: webhook, sources: [web], settings: {url: "%[1]s/reject"}}
  - name: archive
    type: webhook
    sources: [legacy]
    settings: {url: "%[1]s/down"}
    delivery: {retry_window: 1ms}
  - {name: down, type: webhook, sources: [app], settings: {url: "%[1]s/down"}}
  - name: throttled
    type: webhook
    sources: [mobile]
    settings: {url: "%[1]s/throttle"}
    delivery: {concurrency: 1}
  - name: hang
    type: webhook
    sources: [mobile]
    settings: {url: "%[1]s/hang"}
    delivery: {concurrency: 2, timeout: 5m}
`, sink.URL, queueKeyWeb, queueKeyApp, queueKeyMobile, queueKeyLegacy))
	// The metrics read the wall clock for ages and pauses: start the fake
	// one at the wall clock's time, not in the past or the future.
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	clk := clock.NewFake(t0)
	r := startWith(t, p, clk, quietLogger())
	// Cleanups run last first: the hanging requests end before the server
	// stops, which would otherwise wait its shutdown grace for them.
	t.Cleanup(func() { close(f.release) })
	for _, c := range ingestTraffic {
		if code := r.send(t, c.key, c.body); code != c.status {
			t.Fatalf("%s: answered %d, want %d", c.name, code, c.status)
		}
	}
	b := &queueBundle{r: r, clock: clk, t0: t0}
	want := settledMetrics()
	waitFor(t, "the first attempts", func() string { return diff(scrape(t, r), want) })
	return b
}

// settledMetrics is what /metrics must show once the first attempts are
// made, with the clock not yet moved.
func settledMetrics() map[string]float64 {
	want := map[string]float64{}
	for _, d := range queueDests {
		for _, o := range outcomes {
			want[metric("fanout_delivery_attempts_total", "destination", d, "outcome", o)] = 0
		}
		for _, g := range []string{"fanout_queue_depth", "fanout_queue_paused_queues", "fanout_inflight_requests",
			"fanout_circuit_open", "fanout_delivery_throttled_total", "fanout_delivery_latency_seconds_count"} {
			want[metric(g, "destination", d)] = 0
		}
		want[metric("fanout_concurrency_limit", "destination", d)] = 64
	}
	set := func(name, dest string, v float64) { want[metric(name, "destination", dest)] = v }
	attempts := func(dest, outcome string, v float64) {
		want[metric("fanout_delivery_attempts_total", "destination", dest, "outcome", outcome)] = v
	}
	attempts("ok", "delivered", 6)
	attempts("flaky", "retrying", 6)
	attempts("reject", "failed", 6)
	attempts("archive", "retrying", 3)
	attempts("down", "retrying", 10)
	attempts("throttled", "retrying", 1)
	set("fanout_delivery_throttled_total", "throttled", 1)
	set("fanout_delivery_latency_seconds_count", "ok", 6)

	// Depth: every event sent to the destination and not ended, wherever
	// it waits (in the retry set, paused in memory, in flight).
	set("fanout_queue_depth", "flaky", 6)
	set("fanout_queue_depth", "archive", 3)
	set("fanout_queue_depth", "down", 10)
	set("fanout_queue_depth", "throttled", 3)
	set("fanout_queue_depth", "hang", 3)
	set("fanout_queue_paused_queues", "throttled", 1)
	set("fanout_inflight_requests", "hang", 2)
	// Ten consecutive 503s open the circuit (delivery.CircuitThreshold).
	set("fanout_circuit_open", "down", 1)
	set("fanout_concurrency_limit", "throttled", 1)
	set("fanout_concurrency_limit", "hang", 2)

	for _, src := range append([]string{""}, queueSources...) {
		for _, res := range []string{"accepted", "deduplicated", "rejected"} {
			want[metric("fanout_ingest_events_total", "source", src, "result", res)] = 0
		}
	}
	for _, c := range ingestTraffic {
		want[metric("fanout_ingest_events_total", "source", c.source, "result", "accepted")] += float64(c.accepted)
		want[metric("fanout_ingest_events_total", "source", c.source, "result", "deduplicated")] += float64(c.deduplicated)
		want[metric("fanout_ingest_events_total", "source", c.source, "result", "rejected")] += float64(len(c.rejected))
	}
	return want
}

// TestQueueMetrics scrapes /metrics in the queue scenario and checks every
// fanout metric's exact value, before and after the retries.
func TestQueueMetrics(t *testing.T) {
	b := queueSetup(t)
	// Ages are measured on the server's clock: let some pass, short of
	// any retry, pause end or probe.
	b.clock.Advance(500 * time.Millisecond)
	got := scrape(t, b.r)
	// queueSetup waited for settledMetrics; the rest is checked here.
	if d := diff(got, settledMetrics()); d != "" {
		t.Errorf("after the first attempts:\n%s", d)
	}
	// Ingest totals, spelled out once rather than only derived.
	for _, c := range []struct {
		source, result string
		want           float64
	}{
		{"web", "accepted", 6}, {"web", "deduplicated", 1}, {"web", "rejected", 5},
		{"app", "accepted", 10}, {"mobile", "accepted", 3}, {"legacy", "accepted", 3},
		{"", "rejected", 2},
	} {
		if v := got[metric("fanout_ingest_events_total", "source", c.source, "result", c.result)]; v != c.want {
			t.Errorf("fanout_ingest_events_total{source=%q,result=%q} = %v, want %v", c.source, c.result, v, c.want)
		}
	}
	// The oldest job of a paused queue and of one whose requests hang
	// waits while the clock runs; queues holding nothing have no age.
	for _, c := range []struct {
		dest     string
		positive bool
	}{{"throttled", true}, {"hang", true}, {"down", true}, {"flaky", true}, {"ok", false}, {"reject", false}} {
		age, ok := got[metric("fanout_queue_oldest_job_age_seconds", "destination", c.dest)]
		switch {
		case !ok:
			t.Errorf("no fanout_queue_oldest_job_age_seconds for %s", c.dest)
		case c.positive && age <= 0:
			t.Errorf("fanout_queue_oldest_job_age_seconds{destination=%q} = %v, want > 0", c.dest, age)
		case !c.positive && age != 0:
			t.Errorf("fanout_queue_oldest_job_age_seconds{destination=%q} = %v, want 0: it holds nothing", c.dest, age)
		}
	}
	if got["go_goroutines"] <= 0 {
		t.Errorf("go_goroutines = %v, want the Go runtime metrics", got["go_goroutines"])
	}
	if _, ok := got["process_open_fds"]; !ok {
		t.Errorf("no process_open_fds: the process collector is missing")
	}
	checkLabels(t, got)
	if got["fanout_storage_accepting"] != 1 || got["fanout_storage_degraded"] != 0 || got[metric("fanout_disk_free_bytes", "dir", "jobs")] <= 0 {
		t.Errorf("disk space metrics: accepting %v, degraded %v, jobs free %v; want 1, 0, > 0",
			got["fanout_storage_accepting"], got["fanout_storage_degraded"], got[metric("fanout_disk_free_bytes", "dir", "jobs")])
	}

	// Past the first backoff (1-2 s): flaky's retries deliver, archive's
	// run out of retry window. The throttled queue stays paused.
	b.clock.Advance(2 * time.Second) // t0+2.5s: past every first backoff
	want := map[string]float64{
		metric("fanout_delivery_attempts_total", "destination", "flaky", "outcome", "delivered"): 6,
		metric("fanout_delivery_attempts_total", "destination", "flaky", "outcome", "retrying"):  6,
		metric("fanout_delivery_latency_seconds_count", "destination", "flaky"):                  6,
		// Each was received at t0 and delivered at t0+2.5s on the fake clock.
		metric("fanout_delivery_latency_seconds_sum", "destination", "flaky"):                       6 * 2.5,
		metric("fanout_delivery_attempts_total", "destination", "archive", "outcome", "archived"):   3,
		metric("fanout_delivery_attempts_total", "destination", "archive", "outcome", "retrying"):   3,
		metric("fanout_delivery_latency_seconds_count", "destination", "archive"):                   0,
		metric("fanout_delivery_latency_seconds_count", "destination", "ok"):                        6,
		metric("fanout_queue_depth", "destination", "flaky"):                                        0,
		metric("fanout_queue_depth", "destination", "archive"):                                      0,
		metric("fanout_queue_depth", "destination", "throttled"):                                    3,
		metric("fanout_queue_paused_queues", "destination", "throttled"):                            1,
		metric("fanout_delivery_attempts_total", "destination", "throttled", "outcome", "retrying"): 1,
		metric("fanout_queue_depth", "destination", "down"):                                         10,
		metric("fanout_circuit_open", "destination", "down"):                                        1,
	}
	waitFor(t, "the retries", func() string {
		got = scrape(t, b.r)
		return diff(subset(got, want), want)
	})
}

// TestQueueState reads the queue state of the scenario from the admin API:
// depth, oldest age, pause, pending retries and circuit, per queue.
func TestQueueState(t *testing.T) {
	b := queueSetup(t)
	// Half a second: nothing falls due (the first backoff is at least 1 s,
	// the circuit's probe 1 s after it opened), but ages become visible.
	b.clock.Advance(500 * time.Millisecond)

	type want struct {
		source             string
		depth, pending     int64
		age                float64 // seconds, on the fake clock
		pausedUntil        time.Time
		buffered, inFlight int
		throttled          int
	}
	t0 := b.t0
	wantDests := map[string]struct {
		circuitOpen bool
		probeAt     time.Time
		inFlight    int
		queues      []want // queues holding nothing may be absent
	}{
		"ok":     {},
		"reject": {},
		// Queues whose jobs all wait for a retry on disk still age.
		"flaky":   {queues: []want{{source: "web", depth: 6, pending: 6, age: 0.5}}},
		"archive": {queues: []want{{source: "legacy", depth: 3, pending: 3, age: 0.5}}},
		// The circuit opened at t0, when the tenth 503 came back; its
		// probe is due a second later (delivery.CircuitProbeMin).
		"down": {circuitOpen: true, probeAt: t0.Add(time.Second),
			queues: []want{{source: "app", depth: 10, pending: 10, age: 0.5}}},
		// One attempt, answered 429: the queue pauses for Retry-After and
		// keeps its three jobs in memory, the throttled one at the head.
		"throttled": {queues: []want{{source: "mobile", depth: 3, pending: 1, age: 0.5,
			pausedUntil: t0.Add(retryAfter * time.Second), buffered: 3, throttled: 1}}},
		"hang": {inFlight: 2, queues: []want{{source: "mobile", depth: 3, age: 0.5, buffered: 1, inFlight: 2}}},
	}

	check := func(where string, st *admin.State) {
		t.Helper()
		w, ok := wantDests[st.Name]
		if !ok {
			t.Errorf("%s: unexpected destination %q", where, st.Name)
			return
		}
		if st.CircuitOpen != w.circuitOpen || st.InFlight != w.inFlight {
			t.Errorf("%s %s: circuit_open %v, in_flight %d; want %v, %d", where, st.Name, st.CircuitOpen, st.InFlight, w.circuitOpen, w.inFlight)
		}
		if !w.probeAt.IsZero() && (st.ProbeAt == nil || !st.ProbeAt.Equal(w.probeAt)) {
			t.Errorf("%s %s: probe_at %v, want %v", where, st.Name, st.ProbeAt, w.probeAt)
		}
		byName := map[string]admin.QueueState{}
		for _, q := range st.Queues {
			byName[q.Source] = q
		}
		for _, wq := range w.queues {
			q, ok := byName[wq.source]
			if !ok {
				t.Errorf("%s %s: no queue for source %s in %+v", where, st.Name, wq.source, st.Queues)
				continue
			}
			delete(byName, wq.source)
			var paused time.Time
			if q.PausedUntil != nil {
				paused = *q.PausedUntil
			}
			if q.Depth != wq.depth || q.PendingRetry != wq.pending || q.OldestAgeSeconds != wq.age ||
				!paused.Equal(wq.pausedUntil) || q.Buffered != wq.buffered || q.InFlight != wq.inFlight || q.Throttled != wq.throttled {
				t.Errorf("%s %s/%s:\n got depth %d pending_retry %d oldest_age_seconds %v paused_until %v buffered %d in_flight %d throttled %d\nwant depth %d pending_retry %d oldest_age_seconds %v paused_until %v buffered %d in_flight %d throttled %d",
					where, wq.source, st.Name,
					q.Depth, q.PendingRetry, q.OldestAgeSeconds, paused, q.Buffered, q.InFlight, q.Throttled,
					wq.depth, wq.pending, wq.age, wq.pausedUntil, wq.buffered, wq.inFlight, wq.throttled)
			}
		}
		for _, q := range byName {
			if q.Depth != 0 || q.PendingRetry != 0 || q.Buffered != 0 || q.InFlight != 0 {
				t.Errorf("%s %s/%s: %+v, want an empty queue", where, q.Source, st.Name, q)
			}
		}
	}

	var queues []*admin.State
	if code := b.r.get(t, "/api/v1/queues", &queues); code != 200 {
		t.Fatalf("GET /api/v1/queues: %d", code)
	}
	if len(queues) != len(wantDests) {
		t.Errorf("/api/v1/queues has %d destinations, want %d", len(queues), len(wantDests))
	}
	for _, st := range queues {
		check("/api/v1/queues", st)
	}
	var dests []admin.Destination
	if code := b.r.get(t, "/api/v1/destinations", &dests); code != 200 {
		t.Fatalf("GET /api/v1/destinations: %d", code)
	}
	if len(dests) != len(wantDests) {
		t.Errorf("/api/v1/destinations has %d destinations, want %d", len(dests), len(wantDests))
	}
	for _, d := range dests {
		if d.State == nil {
			t.Errorf("/api/v1/destinations %s: no state", d.Name)
			continue
		}
		check("/api/v1/destinations", d.State)
	}

	// The overview counts the same pending retries, per pair, while the
	// backoff holds them; then none once they are delivered or archived.
	pair := func(src, dst string) stats.Pair { return stats.Pair{Source: src, Destination: dst} }
	before := map[stats.Pair]stats.Counts{
		pair("web", "ok"):           {Received: 6, DeliveredFirst: 6},
		pair("web", "flaky"):        {Received: 6, PendingRetry: 6},
		pair("web", "reject"):       {Received: 6, Failed: 6},
		pair("legacy", "archive"):   {Received: 3, PendingRetry: 3},
		pair("app", "down"):         {Received: 10, PendingRetry: 10},
		pair("mobile", "throttled"): {Received: 3, PendingRetry: 1},
		pair("mobile", "hang"):      {Received: 3},
	}
	var ov stats.Overview
	b.r.get(t, "/api/v1/overview?range=1h", &ov)
	if !matches(ov, before) || ov.PendingRetry != 6+3+10+1 {
		t.Errorf("overview while the backoff holds the retries:\n%+v (pending_retry %d)\nwant %+v", ov.Pairs, ov.PendingRetry, before)
	}

	b.clock.Advance(2 * time.Second) // t0+2.5s: past every first backoff
	after := map[stats.Pair]stats.Counts{}
	for p, c := range before {
		after[p] = c
	}
	after[pair("web", "flaky")] = stats.Counts{Received: 6, DeliveredRetry: 6}
	after[pair("legacy", "archive")] = stats.Counts{Received: 3, Archived: 3}
	waitFor(t, "the retries in the overview", func() string {
		b.r.get(t, "/api/v1/overview?range=1h", &ov)
		if matches(ov, after) {
			return ""
		}
		return fmt.Sprintf("%+v\nwant %+v", ov.Pairs, after)
	})
	if ov.PendingRetry != 10+1 {
		t.Errorf("overview pending_retry = %d, want 11 (down's 10, throttled's 1)", ov.PendingRetry)
	}
	// flaky's six were received at t0 and delivered at t0+2.5s on the
	// fake clock: every percentile is 2.5 s, within the stated error.
	for _, p := range ov.Pairs {
		if p.Pair != pair("web", "flaky") {
			continue
		}
		l := p.Latency
		for _, v := range []float64{l.P50, l.P95, l.P99} {
			if l.Count != 6 || math.Abs(v-2500) > 2500*latency.RelativeError {
				t.Errorf("web/flaky latency %+v, want 6 at 2500 ms within %v%%", l, 100*latency.RelativeError)
				break
			}
		}
	}
	b.r.get(t, "/api/v1/queues", &queues)
	for _, st := range queues {
		for _, q := range st.Queues {
			if (st.Name == "flaky" || st.Name == "archive") && (q.PendingRetry != 0 || q.Depth != 0) {
				t.Errorf("%s/%s after the retries: pending_retry %d, depth %d; want 0, 0", q.Source, st.Name, q.PendingRetry, q.Depth)
			}
		}
	}
}

// TestIngestRejections checks that the overview counts the tracking API's
// refusals by reason, per source, and agrees with the metrics.
func TestIngestRejections(t *testing.T) {
	b := queueSetup(t)
	type totals struct {
		accepted, deduplicated int64
		rejected               map[string]int64
	}
	bySource := map[string]*totals{}
	all := &totals{rejected: map[string]int64{}}
	for _, c := range ingestTraffic {
		s := bySource[c.source]
		if s == nil {
			s = &totals{rejected: map[string]int64{}}
			bySource[c.source] = s
		}
		for _, tt := range []*totals{s, all} {
			tt.accepted += int64(c.accepted)
			tt.deduplicated += int64(c.deduplicated)
			for _, r := range c.rejected {
				tt.rejected[r]++
			}
		}
	}
	// Spelled out for web, the source with every kind of refusal.
	if want := map[string]int64{reasonType: 3, reasonNoID: 1, reasonJSON: 1}; fmt.Sprint(bySource["web"].rejected) != fmt.Sprint(want) {
		t.Fatalf("the traffic table is off: web rejections %v, want %v", bySource["web"].rejected, want)
	}

	for _, c := range []struct {
		query string
		want  *totals
	}{
		{"", all}, // every source, the requests no source could be told for included
		{"web", bySource["web"]},
		{"app", bySource["app"]},
		{"mobile", bySource["mobile"]},
		{"legacy", bySource["legacy"]},
	} {
		var ov stats.Overview
		b.r.get(t, "/api/v1/overview?range=1h&source="+c.query, &ov)
		if ov.Ingest == nil {
			t.Errorf("source %q: no ingest counts", c.query)
			continue
		}
		got := ov.Ingest.Rejected
		if got == nil {
			got = map[string]int64{}
		}
		if ov.Ingest.Accepted != c.want.accepted || ov.Ingest.Deduplicated != c.want.deduplicated ||
			fmt.Sprint(got) != fmt.Sprint(c.want.rejected) {
			t.Errorf("source %q: ingest accepted %d, deduplicated %d, rejected\n%s\nwant accepted %d, deduplicated %d, rejected\n%s",
				c.query, ov.Ingest.Accepted, ov.Ingest.Deduplicated, reasons(got),
				c.want.accepted, c.want.deduplicated, reasons(c.want.rejected))
		}
	}

	m := scrape(t, b.r)
	for src, s := range bySource {
		var n int64
		for _, k := range s.rejected {
			n += k
		}
		if v := m[metric("fanout_ingest_events_total", "source", src, "result", "rejected")]; v != float64(n) {
			t.Errorf("metrics: source %q rejected %v, the overview's reasons sum to %d", src, v, n)
		}
	}
}

func reasons(m map[string]int64) string {
	var lines []string
	for r, n := range m {
		lines = append(lines, fmt.Sprintf("  %d × %s", n, r))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// startWith is start with the clock and logger chosen by the test.
func startWith(t *testing.T, cfgPath string, clk clock.Clock, log *slog.Logger) *running {
	t.Helper()
	return run(t, cfgPath, testRegistry(), server.Options{Logger: log, Clock: clk})
}

// waitFor polls cond, which returns what is still wrong or "", until it
// returns "" or 15 seconds pass; then the test fails with the last answer.
func waitFor(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still, after 15s:\n%s", what, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric names one sample: name{label="value",...}, labels sorted, as
// scrape keys them.
func metric(name string, labels ...string) string {
	var pairs []string
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	if len(pairs) == 0 {
		return name
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// scrape reads /metrics with the Prometheus text parser into samples keyed
// by metric; a histogram gives name_count and name_sum, a summary too.
func scrape(t *testing.T, r *running) map[string]float64 {
	t.Helper()
	resp := r.fetch(t, "/metrics")
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				out[metric(name, labels...)] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[metric(name, labels...)] = m.GetGauge().GetValue()
			case m.Untyped != nil:
				out[metric(name, labels...)] = m.GetUntyped().GetValue()
			case m.Histogram != nil:
				out[metric(name+"_count", labels...)] = float64(m.GetHistogram().GetSampleCount())
				out[metric(name+"_sum", labels...)] = m.GetHistogram().GetSampleSum()
			case m.Summary != nil:
				out[metric(name+"_count", labels...)] = float64(m.GetSummary().GetSampleCount())
				out[metric(name+"_sum", labels...)] = m.GetSummary().GetSampleSum()
			}
		}
	}
	return out
}

// diff lists the samples of want that got lacks or holds with another
// value, and the fanout samples got has beyond want when want names their
// metric; "" when they agree.
func diff(got, want map[string]float64) string {
	var lines []string
	names := map[string]bool{}
	for k, w := range want {
		names[strings.SplitN(k, "{", 2)[0]] = true
		g, ok := got[k]
		switch {
		case !ok:
			lines = append(lines, fmt.Sprintf("  %s missing, want %v", k, w))
		case g != w:
			lines = append(lines, fmt.Sprintf("  %s = %v, want %v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && names[strings.SplitN(k, "{", 2)[0]] {
			lines = append(lines, fmt.Sprintf("  %s = %v, not expected", k, g))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// subset returns the samples of got that want names.
func subset(got, want map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k := range want {
		if v, ok := got[k]; ok {
			out[k] = v
		}
	}
	return out
}

// checkLabels checks that every fanout metric's labels take configured
// names and fixed sets only, so cardinality is bounded by the configuration.
func checkLabels(t *testing.T, samples map[string]float64) {
	t.Helper()
	allowed := map[string]map[string]bool{
		"destination": set(queueDests...),
		"source":      set(append([]string{""}, queueSources...)...),
		"outcome":     set(outcomes...),
		"result":      set("accepted", "deduplicated", "rejected"),
		"reason":      set("origin", "rate_limit"),
		"dir":         set("jobs", "stats", "archive"),
	}
	for k := range samples {
		if !strings.HasPrefix(k, "fanout_") {
			continue
		}
		name, labels, _ := strings.Cut(strings.TrimSuffix(k, "}"), "{")
		if labels == "" {
			continue
		}
		for _, l := range strings.Split(labels, ",") {
			ln, lv, _ := strings.Cut(l, "=")
			if ok := allowed[ln]; ok == nil || !ok[strings.Trim(lv, `"`)] {
				t.Errorf("%s: label %s=%s outside the configured names and fixed sets", name, ln, lv)
			}
		}
	}
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// TestArchiveWriteFailure checks what the stats and metrics say of jobs
// whose retry window ended while the archive cannot be written: the engine
// keeps them and retries them later (delivery.dest.complete), so they are
// neither archived nor ended, and the queue still holds them.
func TestArchiveWriteFailure(t *testing.T) {
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(sink.Close)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	p := configFile(t, dir, fmt.Sprintf(`sources:
  - {name: web, write_key: %s}
destinations:
  - name: vault
    type: webhook
    sources: [web]
    settings: {url: "%s"}
    delivery: {retry_window: 1ms}
`, queueKeyWeb, sink.URL))
	blockArchive(t, data, "web", "vault")
	logs := &logtest.Buffer{}
	clk := clock.NewFake(time.Now().UTC())
	r := startWith(t, p, clk, slog.New(slog.NewJSONHandler(logs, nil)))
	if code := r.send(t, queueKeyWeb, batch(tracks("vault", 0, 3)...)); code != 200 {
		t.Fatalf("batch answered %d", code)
	}
	want := stats.Counts{Received: 3, PendingRetry: 3}
	var ov stats.Overview
	waitFor(t, "the first attempts", func() string {
		r.get(t, "/api/v1/overview?range=1h&destination=vault", &ov)
		if ov.Counts != want {
			return fmt.Sprintf("%+v, want %+v", ov.Counts, want)
		}
		return ""
	})
	// Two rounds of retries, each out of retry window, each failing to
	// archive: past the first backoff (under 2 s), then past the second
	// (under 4 s more).
	for round, advance := range []time.Duration{2500 * time.Millisecond, 4500 * time.Millisecond} {
		clk.Advance(advance)
		waitFor(t, fmt.Sprintf("archive failure %d", round+1), func() string {
			if n := archiveErrors(t, logs.String()); n < 3*(round+1) {
				return fmt.Sprintf("%d jobs failed to archive, want %d", n, 3*(round+1))
			}
			return ""
		})
		r.get(t, "/api/v1/overview?range=1h&destination=vault", &ov)
		if ov.Counts != want {
			t.Errorf("after archive failure %d, overview = %+v, want %+v: the jobs are kept for a retry, not archived", round+1, ov.Counts, want)
		}
		m := scrape(t, r)
		if d := m[metric("fanout_queue_depth", "destination", "vault")]; d != 3 {
			t.Errorf("after archive failure %d, fanout_queue_depth{destination=\"vault\"} = %v, want 3", round+1, d)
		}
		if n := m[metric("fanout_delivery_attempts_total", "destination", "vault", "outcome", "archived")]; n != 0 {
			t.Errorf("after archive failure %d, fanout_delivery_attempts_total{outcome=\"archived\"} = %v, want 0", round+1, n)
		}
		var queues []*admin.State
		r.get(t, "/api/v1/queues", &queues)
		for _, st := range queues {
			for _, q := range st.Queues {
				if q.Depth != 3 || q.PendingRetry != 3 {
					t.Errorf("after archive failure %d, queue %s/%s: depth %d, pending_retry %d; want 3, 3", round+1, q.Source, st.Name, q.Depth, q.PendingRetry)
				}
			}
		}
	}
}

// archiveErrors sums the jobs of the "archive jobs" error lines of a JSON log.
func archiveErrors(t *testing.T, log string) int {
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var l struct {
			Msg  string
			Jobs int
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "archive jobs" {
			n += l.Jobs
		}
	}
	return n
}

// blockArchive makes the archive directory of source's queue to destination
// a file, so that every archive write of that queue fails.
func blockArchive(t *testing.T, dataDir, source, destination string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dataDir, "archive", source), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "archive", source, destination), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}
