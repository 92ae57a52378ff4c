// Package storetest is the conformance suite that every jobstore.Store
// implementation passes. It tests only through the interface, so the
// embedded and the PostgreSQL store are held to the same behaviour.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// Env describes one store under test. The suite makes a new Env for every
// subtest and may open it several times: opening the same Env again after
// Close must open the same data (that is how durability is tested).
type Env struct {
	// Dir is an empty directory private to the subtest. A store without
	// files can use it as the name of its data instead (for example to
	// derive a database schema name).
	Dir string
	// Now is the clock the store must use for its dedupe window. The suite
	// moves it forward; it never sleeps.
	Now func() time.Time
	// DedupeWindow is the dedupe window the store must use.
	DedupeWindow time.Duration
	// Applied is the announcement of new jobs the store must make: its
	// Applied option (see jobstore.AppliedFunc).
	Applied jobstore.AppliedFunc
}

// OpenFunc opens, or reopens, the store that env describes. It fails t
// rather than returning an error. The suite closes every store it opens.
type OpenFunc func(t *testing.T, env Env) jobstore.Store

// Window is the dedupe window every subtest uses.
const Window = time.Hour

// Run runs the conformance suite against the stores that open returns.
func Run(t *testing.T, open OpenFunc) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *harness)
	}{
		{"AppendPending", testAppendPending},
		{"PendingPaging", testPendingPaging},
		{"Drop", testDrop},
		{"Reschedule", testReschedule},
		{"RescheduleRetry", testRescheduleRetry},
		{"Finish", testFinish},
		{"RetriesNext", testRetriesNext},
		{"Queues", testQueues},
		{"Dedupe", testDedupe},
		{"DedupeWithinAppend", testDedupeWithinAppend},
		{"DedupeConcurrent", testDedupeConcurrent},
		{"Replay", testReplay},
		{"SeqSurvivesReopen", testSeqSurvivesReopen},
		{"StateSurvivesReopen", testStateSurvivesReopen},
		{"ConcurrentAppendOrder", testConcurrentAppendOrder},
		{"CanceledAppend", testCanceledAppend},
		{"CanceledWhileWaiting", testCanceledWhileWaiting},
		{"AppendAfterClose", testAppendAfterClose},
		{"Applied", testApplied},
		{"AppliedConcurrent", testAppliedConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, setup(t, open))
		})
	}
}

// harness is what each subtest works with: the open store, its Env and a way
// to reopen it.
type harness struct {
	t     *testing.T
	open  OpenFunc
	env   Env
	clock *clock.Fake
	store jobstore.Store
	ctx   context.Context

	// heard records what the store announced through Env.Applied, in the
	// order it was called.
	mu    sync.Mutex
	heard []jobstore.Appended
}

func setup(t *testing.T, open OpenFunc) *harness {
	clk := clock.NewFake(time.Date(2026, 3, 14, 23, 30, 0, 0, time.UTC))
	h := &harness{
		t:     t,
		open:  open,
		clock: clk,
		env:   Env{Dir: t.TempDir(), Now: clk.Now, DedupeWindow: Window},
		ctx:   t.Context(),
	}
	h.env.Applied = func(a jobstore.Appended) {
		h.mu.Lock()
		defer h.mu.Unlock()
		// The store may reuse nothing it handed over: copy what is kept.
		a.Entries = slices.Clone(a.Entries)
		h.heard = append(h.heard, a)
	}
	h.store = open(t, h.env)
	t.Cleanup(func() { h.store.Close() })
	return h
}

// reopen closes the store and opens the same data again.
func (h *harness) reopen() {
	h.t.Helper()
	if err := h.store.Close(); err != nil {
		h.t.Fatalf("Close: %v", err)
	}
	h.store = h.open(h.t, h.env)
}

var (
	qWebHook = jobstore.Queue{Source: "web", Destination: "hook"}
	qWebCRM  = jobstore.Queue{Source: "web", Destination: "crm"}
	qAppHook = jobstore.Queue{Source: "app", Destination: "hook"}
)

// ev makes a track event of source with messageID.
func (h *harness) ev(source, messageID string) event.Event {
	return event.Event{
		Source:     source,
		MessageID:  messageID,
		Type:       event.Track,
		ReceivedAt: h.clock.Now().Add(123 * time.Nanosecond),
		Payload:    []byte(fmt.Sprintf(`{"type":"track","event":"Signed Up","messageId":%q,"properties":{"plan":"pro"}}`, messageID)),
	}
}

// appendEvents appends one entry per messageID of source to dests, and fails
// the test on an error or a duplicate.
func (h *harness) appendEvents(source string, dests []string, messageIDs ...string) []event.Event {
	h.t.Helper()
	var entries []jobstore.Entry
	var evs []event.Event
	for _, id := range messageIDs {
		e := h.ev(source, id)
		evs = append(evs, e)
		entries = append(entries, jobstore.Entry{Event: e, Destinations: dests})
	}
	dup, err := h.store.Append(h.ctx, entries)
	if err != nil {
		h.t.Fatalf("Append: %v", err)
	}
	if len(dup) != len(entries) {
		h.t.Fatalf("Append returned %d duplicate flags for %d entries", len(dup), len(entries))
	}
	for i, d := range dup {
		if d {
			h.t.Fatalf("Append: entry %d (%s) reported duplicate", i, messageIDs[i])
		}
	}
	return evs
}

// pending returns all pending jobs of q.
func (h *harness) pending(q jobstore.Queue) []jobstore.Job {
	h.t.Helper()
	jobs, err := h.store.Pending(h.ctx, q, 0, 1<<20)
	if err != nil {
		h.t.Fatalf("Pending(%v): %v", q, err)
	}
	return jobs
}

func (h *harness) retries(q jobstore.Queue, until time.Time, limit int) ([]jobstore.Job, time.Time) {
	h.t.Helper()
	jobs, next, err := h.store.Retries(h.ctx, q, until, limit)
	if err != nil {
		h.t.Fatalf("Retries(%v): %v", q, err)
	}
	return jobs, next
}

func (h *harness) apply(u jobstore.Update) {
	h.t.Helper()
	if err := h.store.Apply(h.ctx, u); err != nil {
		h.t.Fatalf("Apply: %v", err)
	}
}

func (h *harness) queues() []jobstore.Queue {
	h.t.Helper()
	qs, err := h.store.Queues(h.ctx)
	if err != nil {
		h.t.Fatalf("Queues: %v", err)
	}
	return qs
}

func messageIDs(jobs []jobstore.Job) []string {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.Event.MessageID
	}
	return ids
}

func seqs(jobs []jobstore.Job) []uint64 {
	s := make([]uint64, len(jobs))
	for i, j := range jobs {
		s[i] = j.Seq
	}
	return s
}

func ids(prefix string, n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("%s%02d", prefix, i)
	}
	return s
}

// sameEvent fails t unless got is want as the store gives it back.
func sameEvent(t *testing.T, got, want event.Event) {
	t.Helper()
	if got.Source != want.Source || got.MessageID != want.MessageID || got.Type != want.Type ||
		!got.ReceivedAt.Equal(want.ReceivedAt) || string(got.Payload) != string(want.Payload) {
		t.Errorf("event = %+v\nwant    %+v", got, want)
	}
}

func checkIncreasing(t *testing.T, jobs []jobstore.Job) {
	t.Helper()
	for i := 1; i < len(jobs); i++ {
		if jobs[i].Seq <= jobs[i-1].Seq {
			t.Fatalf("Seqs not strictly increasing: %v", seqs(jobs))
		}
	}
}

func testAppendPending(t *testing.T, h *harness) {
	evs := h.appendEvents("web", []string{"hook", "crm"}, "a", "b", "c")
	h.appendEvents("app", []string{"hook"}, "a")
	evs = append(evs, h.appendEvents("web", []string{"hook"}, "d")...)

	got := h.pending(qWebHook)
	if want := []string{"a", "b", "c", "d"}; !slices.Equal(messageIDs(got), want) {
		t.Fatalf("Pending(web/hook) = %v, want %v", messageIDs(got), want)
	}
	checkIncreasing(t, got)
	for i, j := range got {
		if j.Queue != qWebHook || j.Attempts != 0 || !j.DueAt.IsZero() || j.LastError != "" {
			t.Errorf("job %d = %+v, want a fresh pending job of %v", i, j, qWebHook)
		}
		sameEvent(t, j.Event, evs[i])
	}
	if got := messageIDs(h.pending(qWebCRM)); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("Pending(web/crm) = %v, want [a b c]", got)
	}
	if got := messageIDs(h.pending(qAppHook)); !slices.Equal(got, []string{"a"}) {
		t.Errorf("Pending(app/hook) = %v, want [a]", got)
	}
	if got := h.pending(jobstore.Queue{Source: "web", Destination: "nope"}); len(got) != 0 {
		t.Errorf("Pending of an unknown queue = %v, want none", messageIDs(got))
	}
}

func testPendingPaging(t *testing.T, h *harness) {
	h.appendEvents("web", []string{"hook"}, ids("m", 10)...)
	all := h.pending(qWebHook)
	if len(all) != 10 {
		t.Fatalf("Pending returned %d jobs, want 10", len(all))
	}
	tests := []struct {
		name  string
		after uint64
		limit int
		want  []string
	}{
		{"first page", 0, 3, []string{"m00", "m01", "m02"}},
		{"second page", all[2].Seq, 3, []string{"m03", "m04", "m05"}},
		{"after a seq between jobs", all[8].Seq, 5, []string{"m09"}},
		{"limit above the rest", all[6].Seq, 100, []string{"m07", "m08", "m09"}},
		{"after the last", all[9].Seq, 10, nil},
		{"after max", ^uint64(0), 10, nil},
		{"limit zero", 0, 0, nil},
		{"limit one", all[0].Seq, 1, []string{"m01"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.store.Pending(h.ctx, qWebHook, tt.after, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(messageIDs(got), tt.want) {
				t.Errorf("Pending(after %d, limit %d) = %v, want %v", tt.after, tt.limit, messageIDs(got), tt.want)
			}
		})
	}
}

func testDrop(t *testing.T, h *harness) {
	tests := []struct {
		name  string
		below func(all []jobstore.Job) uint64
		want  []string
	}{
		{"below zero drops nothing", func([]jobstore.Job) uint64 { return 0 }, ids("m", 5)},
		{"below the first drops nothing", func(all []jobstore.Job) uint64 { return all[0].Seq }, ids("m", 5)},
		{"below the third", func(all []jobstore.Job) uint64 { return all[2].Seq }, ids("m", 5)[2:]},
		{"just above the third", func(all []jobstore.Job) uint64 { return all[2].Seq + 1 }, ids("m", 5)[3:]},
		{"everything", func(all []jobstore.Job) uint64 { return all[4].Seq + 1 }, nil},
		{"far above", func([]jobstore.Job) uint64 { return ^uint64(0) }, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Each case uses its own pair of queues.
			src := fmt.Sprintf("src%d", i)
			q := jobstore.Queue{Source: src, Destination: "hook"}
			other := jobstore.Queue{Source: src, Destination: "crm"}
			h.appendEvents(src, []string{"hook", "crm"}, ids("m", 5)...)
			all := h.pending(q)
			h.apply(jobstore.Update{Drops: []jobstore.Drop{{Queue: q, Below: tt.below(all)}}})
			if got := messageIDs(h.pending(q)); !slices.Equal(got, tt.want) {
				t.Errorf("after Drop, Pending = %v, want %v", got, tt.want)
			}
			if got := messageIDs(h.pending(other)); !slices.Equal(got, ids("m", 5)) {
				t.Errorf("Drop of %v changed %v: Pending = %v", q, other, got)
			}
		})
	}
}

func testReschedule(t *testing.T, h *harness) {
	evs := h.appendEvents("web", []string{"hook"}, "a", "b", "c", "d")
	all := h.pending(qWebHook)
	now := h.clock.Now()
	// Due times out of Seq order; c and d are due at the same time.
	due := map[string]time.Time{
		"a": now.Add(3 * time.Minute),
		"c": now.Add(time.Minute),
		"d": now.Add(time.Minute),
	}
	var rs []jobstore.Reschedule
	for _, j := range all {
		if d, ok := due[j.Event.MessageID]; ok {
			rs = append(rs, jobstore.Reschedule{Job: j, DueAt: d, Attempts: 1, LastError: "503 from " + j.Event.MessageID})
		}
	}
	h.apply(jobstore.Update{Reschedule: rs})

	if got := messageIDs(h.pending(qWebHook)); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("Pending after Reschedule = %v, want [b]", got)
	}
	tests := []struct {
		name     string
		until    time.Time
		want     []string
		wantNext time.Time
	}{
		{"none due", now, nil, now.Add(time.Minute)},
		{"just before", now.Add(time.Minute - 1), nil, now.Add(time.Minute)},
		{"two due at the same time, in Seq order", now.Add(time.Minute), []string{"c", "d"}, now.Add(3 * time.Minute)},
		{"all due", now.Add(time.Hour), []string{"c", "d", "a"}, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, next := h.retries(qWebHook, tt.until, 10)
			if !slices.Equal(messageIDs(got), tt.want) {
				t.Errorf("Retries = %v, want %v", messageIDs(got), tt.want)
			}
			if !next.Equal(tt.wantNext) {
				t.Errorf("next = %v, want %v", next, tt.wantNext)
			}
		})
	}
	got, _ := h.retries(qWebHook, now.Add(time.Hour), 10)
	for _, j := range got {
		id := j.Event.MessageID
		orig := slices.IndexFunc(all, func(p jobstore.Job) bool { return p.Event.MessageID == id })
		if j.Seq != all[orig].Seq || j.Queue != qWebHook || j.Attempts != 1 ||
			j.LastError != "503 from "+id || !j.DueAt.Equal(due[id]) {
			t.Errorf("retry job %s = Seq %d Queue %v Attempts %d LastError %q DueAt %v; want Seq %d, 1 attempt, DueAt %v",
				id, j.Seq, j.Queue, j.Attempts, j.LastError, j.DueAt, all[orig].Seq, due[id])
		}
		sameEvent(t, j.Event, evs[orig])
	}
	if got, _ := h.retries(qWebCRM, now.Add(time.Hour), 10); len(got) != 0 {
		t.Errorf("Retries of another queue = %v, want none", messageIDs(got))
	}
}

func testRescheduleRetry(t *testing.T, h *harness) {
	h.appendEvents("web", []string{"hook"}, "a")
	now := h.clock.Now()
	p := h.pending(qWebHook)[0]
	h.apply(jobstore.Update{Reschedule: []jobstore.Reschedule{{Job: p, DueAt: now.Add(time.Minute), Attempts: 1, LastError: "first"}}})
	r, _ := h.retries(qWebHook, now.Add(time.Hour), 10)
	if len(r) != 1 {
		t.Fatalf("Retries = %v, want one job", messageIDs(r))
	}

	tests := []struct {
		name string
		due  time.Duration
	}{
		{"later", 10 * time.Minute},
		{"same due time", 10 * time.Minute},
		{"earlier", 2 * time.Minute},
	}
	for i, tt := range tests {
		attempts := i + 2
		h.apply(jobstore.Update{Reschedule: []jobstore.Reschedule{{
			Job: r[0], DueAt: now.Add(tt.due), Attempts: attempts, LastError: tt.name,
		}}})
		r, _ = h.retries(qWebHook, now.Add(time.Hour), 10)
		if len(r) != 1 {
			t.Fatalf("%s: Retries = %d jobs, want the one job, replaced", tt.name, len(r))
		}
		if j := r[0]; j.Seq != p.Seq || j.Attempts != attempts || j.LastError != tt.name || !j.DueAt.Equal(now.Add(tt.due)) {
			t.Fatalf("%s: retry job = Seq %d Attempts %d LastError %q DueAt %v", tt.name, j.Seq, j.Attempts, j.LastError, j.DueAt)
		}
	}
	if got := h.pending(qWebHook); len(got) != 0 {
		t.Errorf("Pending = %v, want none", messageIDs(got))
	}
}

func testFinish(t *testing.T, h *harness) {
	h.appendEvents("web", []string{"hook"}, "a", "b", "c")
	all := h.pending(qWebHook)
	now := h.clock.Now()
	h.apply(jobstore.Update{Reschedule: []jobstore.Reschedule{{Job: all[0], DueAt: now, Attempts: 1}}})
	r, _ := h.retries(qWebHook, now, 10)
	if len(r) != 1 {
		t.Fatalf("Retries = %v, want [a]", messageIDs(r))
	}
	// Finish the retry job and the pending job b, ahead of any Drop.
	h.apply(jobstore.Update{Finish: []jobstore.Job{r[0], all[1]}})
	if got, next := h.retries(qWebHook, now.Add(time.Hour), 10); len(got) != 0 || !next.IsZero() {
		t.Errorf("Retries after Finish = %v next %v, want none", messageIDs(got), next)
	}
	if got := messageIDs(h.pending(qWebHook)); !slices.Equal(got, []string{"c"}) {
		t.Errorf("Pending after Finish = %v, want [c]", got)
	}
	// Paging past the hidden job still finds c.
	got, err := h.store.Pending(h.ctx, qWebHook, all[0].Seq, 1)
	if err != nil || !slices.Equal(messageIDs(got), []string{"c"}) {
		t.Errorf("Pending(after a, limit 1) = %v, %v; want [c]", messageIDs(got), err)
	}
}

func testRetriesNext(t *testing.T, h *harness) {
	h.appendEvents("web", []string{"hook"}, ids("m", 5)...)
	all := h.pending(qWebHook)
	now := h.clock.Now()
	var rs []jobstore.Reschedule
	for i, j := range all {
		rs = append(rs, jobstore.Reschedule{Job: j, DueAt: now.Add(time.Duration(i+1) * time.Second), Attempts: 1})
	}
	h.apply(jobstore.Update{Reschedule: rs})
	tests := []struct {
		name     string
		until    time.Duration
		limit    int
		want     []string
		wantNext time.Duration // 0: none
	}{
		{"limit cuts due jobs", 10 * time.Second, 2, []string{"m00", "m01"}, 3 * time.Second},
		{"until cuts", 3 * time.Second, 10, []string{"m00", "m01", "m02"}, 4 * time.Second},
		{"limit and until agree", 2 * time.Second, 2, []string{"m00", "m01"}, 3 * time.Second},
		{"nothing due", 0, 10, nil, time.Second},
		{"limit zero", 10 * time.Second, 0, nil, time.Second},
		{"all", 10 * time.Second, 10, ids("m", 5), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, next := h.retries(qWebHook, now.Add(tt.until), tt.limit)
			if !slices.Equal(messageIDs(got), tt.want) {
				t.Errorf("Retries = %v, want %v", messageIDs(got), tt.want)
			}
			var wantNext time.Time
			if tt.wantNext != 0 {
				wantNext = now.Add(tt.wantNext)
			}
			if !next.Equal(wantNext) {
				t.Errorf("next = %v, want %v", next, wantNext)
			}
		})
	}
}

func testQueues(t *testing.T, h *harness) {
	if got := h.queues(); len(got) != 0 {
		t.Fatalf("Queues of an empty store = %v", got)
	}
	h.appendEvents("web", []string{"hook", "crm"}, "a", "b")
	h.appendEvents("app", []string{"hook"}, "a")
	// A queue with a name that is a prefix of another's.
	h.appendEvents("we", []string{"bhook"}, "x")
	qWeBhook := jobstore.Queue{Source: "we", Destination: "bhook"}
	now := h.clock.Now()

	check := func(step string, want ...jobstore.Queue) {
		t.Helper()
		got := h.queues()
		if !sameQueues(got, want) {
			t.Errorf("%s: Queues = %v, want %v", step, got, want)
		}
	}
	check("after appends", qWebHook, qWebCRM, qAppHook, qWeBhook)

	crm := h.pending(qWebCRM)
	h.apply(jobstore.Update{Drops: []jobstore.Drop{{Queue: qWebCRM, Below: crm[len(crm)-1].Seq + 1}}})
	check("web/crm drained", qWebHook, qAppHook, qWeBhook)

	app := h.pending(qAppHook)[0]
	h.apply(jobstore.Update{Reschedule: []jobstore.Reschedule{{Job: app, DueAt: now.Add(time.Minute), Attempts: 1}}})
	check("app/hook only retrying", qWebHook, qAppHook, qWeBhook)

	r, _ := h.retries(qAppHook, now.Add(time.Hour), 10)
	h.apply(jobstore.Update{Finish: r})
	check("app/hook retry finished", qWebHook, qWeBhook)

	// Every pending job of web/hook hidden, none dropped: not listed.
	h.apply(jobstore.Update{Finish: h.pending(qWebHook)})
	check("web/hook jobs finished ahead of a drop", qWeBhook)

	h.reopen()
	check("after reopen", qWeBhook)
}

func sameQueues(got, want []jobstore.Queue) bool {
	key := func(q jobstore.Queue) string { return q.Source + "\x00" + q.Destination }
	g := make([]string, len(got))
	for i, q := range got {
		g[i] = key(q)
	}
	w := make([]string, len(want))
	for i, q := range want {
		w[i] = key(q)
	}
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}

func testDedupe(t *testing.T, h *harness) {
	type step struct {
		advance time.Duration
		source  string
		dup     bool
		reopen  bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"same source is a duplicate", []step{{0, "web", false, false}, {0, "web", true, false}}},
		{"other source is not", []step{{0, "web", false, false}, {0, "app", false, false}, {0, "app", true, false}}},
		{"just inside the window", []step{{0, "web", false, false}, {Window - time.Nanosecond, "web", true, false}}},
		{"exactly the window later is not", []step{{0, "web", false, false}, {Window, "web", false, false}}},
		{"after the window, stored again and remembered", []step{
			{0, "web", false, false}, {Window + time.Second, "web", false, false}, {Window / 2, "web", true, false},
		}},
		{"a duplicate does not extend the window", []step{
			{0, "web", false, false}, {Window / 2, "web", true, false}, {Window / 2, "web", false, false},
		}},
		{"remembered across a reopen", []step{{0, "web", false, false}, {time.Minute, "web", true, true}}},
		{"across a day boundary", []step{{0, "web", false, false}, {Window - time.Minute, "web", true, false}}},
		{"across a day boundary and a reopen", []step{{0, "web", false, false}, {Window - time.Minute, "web", true, true}}},
		{"days later", []step{{0, "web", false, false}, {72 * time.Hour, "web", false, false}, {0, "web", true, false}}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("dedupe-%d", i)
			var jobs int
			for n, s := range tt.steps {
				h.clock.Advance(s.advance)
				if s.reopen {
					h.reopen()
				}
				dup, err := h.store.Append(h.ctx, []jobstore.Entry{{Event: h.ev(s.source, id), Destinations: []string{"hook"}}})
				if err != nil {
					t.Fatalf("step %d: Append: %v", n, err)
				}
				if len(dup) != 1 || dup[0] != s.dup {
					t.Fatalf("step %d (after %s, source %s): duplicate = %v, want %v", n, s.advance, s.source, dup, s.dup)
				}
				if !s.dup {
					jobs++
				}
			}
			var stored int
			for _, src := range []string{"web", "app"} {
				for _, j := range h.pending(jobstore.Queue{Source: src, Destination: "hook"}) {
					if j.Event.MessageID == id {
						stored++
					}
				}
			}
			if stored != jobs {
				t.Errorf("%d jobs stored for %s, want %d (duplicates are not stored)", stored, id, jobs)
			}
		})
	}
}

func testDedupeWithinAppend(t *testing.T, h *harness) {
	entries := []jobstore.Entry{
		{Event: h.ev("web", "a"), Destinations: []string{"hook"}},
		{Event: h.ev("web", "b"), Destinations: []string{"hook"}},
		{Event: h.ev("web", "a"), Destinations: []string{"hook"}},
		{Event: h.ev("app", "a"), Destinations: []string{"hook"}},
		{Event: h.ev("web", "b"), Destinations: []string{"hook"}},
	}
	dup, err := h.store.Append(h.ctx, entries)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, false, true, false, true}; !slices.Equal(dup, want) {
		t.Errorf("duplicate = %v, want %v", dup, want)
	}
	if got := messageIDs(h.pending(qWebHook)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Pending(web/hook) = %v, want [a b]", got)
	}
	if got := messageIDs(h.pending(qAppHook)); !slices.Equal(got, []string{"a"}) {
		t.Errorf("Pending(app/hook) = %v, want [a]", got)
	}
}

func testDedupeConcurrent(t *testing.T, h *harness) {
	const (
		appenders = 16
		events    = 50
	)
	// Every appender sends the same messageIds, in a different order, so
	// that the calls race on every one of them.
	stored := make([][]bool, appenders)
	var wg sync.WaitGroup
	for a := range appenders {
		wg.Go(func() {
			var entries []jobstore.Entry
			for i := range events {
				id := fmt.Sprintf("c%03d", (i+a*7)%events)
				entries = append(entries, jobstore.Entry{Event: h.ev("web", id), Destinations: []string{"hook"}})
			}
			dup, err := h.store.Append(h.ctx, entries)
			if err != nil {
				t.Errorf("appender %d: %v", a, err)
				return
			}
			stored[a] = make([]bool, events)
			for i, d := range dup {
				stored[a][(i+a*7)%events] = !d
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range events {
		n := 0
		for a := range appenders {
			if stored[a][i] {
				n++
			}
		}
		if n != 1 {
			t.Errorf("c%03d: stored by %d appenders, want exactly 1", i, n)
		}
	}
	got := h.pending(qWebHook)
	if len(got) != events {
		t.Errorf("Pending has %d jobs, want %d", len(got), events)
	}
	checkIncreasing(t, got)
}

func testSeqSurvivesReopen(t *testing.T, h *harness) {
	h.appendEvents("web", []string{"hook"}, "a", "b")
	before := h.pending(qWebHook)
	// Drop everything, so the store cannot find the highest Seq by looking
	// at its jobs.
	h.apply(jobstore.Update{Drops: []jobstore.Drop{{Queue: qWebHook, Below: before[1].Seq + 1}}})
	h.reopen()
	h.appendEvents("web", []string{"hook"}, "c")
	h.reopen()
	h.appendEvents("web", []string{"hook"}, "d")
	after := h.pending(qWebHook)
	if !slices.Equal(messageIDs(after), []string{"c", "d"}) {
		t.Fatalf("Pending = %v, want [c d]", messageIDs(after))
	}
	if after[0].Seq <= before[1].Seq || after[1].Seq <= after[0].Seq {
		t.Errorf("Seqs %v then %v: want strictly increasing across reopens", seqs(before), seqs(after))
	}
}

func testStateSurvivesReopen(t *testing.T, h *harness) {
	evs := h.appendEvents("web", []string{"hook", "crm"}, ids("m", 6)...)
	h.appendEvents("app", []string{"hook"}, "x")
	all := h.pending(qWebHook)
	crm := h.pending(qWebCRM)
	now := h.clock.Now()
	h.apply(jobstore.Update{
		Drops:      []jobstore.Drop{{Queue: qWebHook, Below: all[2].Seq}},
		Reschedule: []jobstore.Reschedule{{Job: all[3], DueAt: now.Add(time.Minute), Attempts: 2, LastError: "timeout"}},
		Finish:     []jobstore.Job{crm[0]},
	})
	wantHook := h.pending(qWebHook)
	wantCRM := h.pending(qWebCRM)
	wantRetry, _ := h.retries(qWebHook, now.Add(time.Hour), 10)
	wantQueues := h.queues()

	h.reopen()

	if got := h.pending(qWebHook); !slices.Equal(seqs(got), seqs(wantHook)) {
		t.Errorf("Pending(web/hook) after reopen = %v, want %v", messageIDs(got), messageIDs(wantHook))
	}
	if got := h.pending(qWebCRM); !slices.Equal(seqs(got), seqs(wantCRM)) {
		t.Errorf("Pending(web/crm) after reopen = %v, want %v", messageIDs(got), messageIDs(wantCRM))
	}
	for i, j := range h.pending(qWebCRM) {
		sameEvent(t, j.Event, evs[i+1])
	}
	got, _ := h.retries(qWebHook, now.Add(time.Hour), 10)
	if len(got) != 1 || got[0].Seq != wantRetry[0].Seq || got[0].Attempts != 2 || got[0].LastError != "timeout" ||
		!got[0].DueAt.Equal(now.Add(time.Minute)) {
		t.Errorf("Retries after reopen = %+v, want %+v", got, wantRetry)
	}
	if q := h.queues(); !sameQueues(q, wantQueues) {
		t.Errorf("Queues after reopen = %v, want %v", q, wantQueues)
	}
}

func testConcurrentAppendOrder(t *testing.T, h *harness) {
	// Many concurrent Appends to one queue: every job stored once, Seqs
	// unique, and a reader paging with after never misses a job.
	const (
		appenders = 8
		calls     = 20
		perCall   = 5
	)
	var wg sync.WaitGroup
	for a := range appenders {
		wg.Go(func() {
			for c := range calls {
				var entries []jobstore.Entry
				for i := range perCall {
					entries = append(entries, jobstore.Entry{
						Event:        h.ev("web", fmt.Sprintf("o-%d-%d-%d", a, c, i)),
						Destinations: []string{"hook"},
					})
				}
				if _, err := h.store.Append(h.ctx, entries); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		})
	}
	// Page through while appends run; every job seen once, in Seq order.
	seen := make(map[string]bool)
	var after uint64
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; ; {
		select {
		case <-done:
			finished = true
		default:
		}
		page, err := h.store.Pending(h.ctx, qWebHook, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range page {
			if j.Seq <= after || seen[j.Event.MessageID] {
				t.Fatalf("job %s Seq %d after cursor %d: out of order or seen twice", j.Event.MessageID, j.Seq, after)
			}
			seen[j.Event.MessageID] = true
			after = j.Seq
		}
		if finished && len(page) == 0 {
			break
		}
	}
	if want := appenders * calls * perCall; len(seen) != want {
		t.Errorf("pager saw %d jobs, want %d", len(seen), want)
	}
}

func testCanceledAppend(t *testing.T, h *harness) {
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	_, err := h.store.Append(ctx, []jobstore.Entry{{Event: h.ev("web", "a"), Destinations: []string{"hook"}}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a canceled context = %v, want context.Canceled", err)
	}
	// The store carries on, and the canceled event was not stored.
	h.appendEvents("web", []string{"hook"}, "a", "b")
	if got := messageIDs(h.pending(qWebHook)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Pending = %v, want [a b]", got)
	}
}

func testCanceledWhileWaiting(t *testing.T, h *harness) {
	// Appends whose context ends at random moments, racing with others
	// that succeed. An Append that returned nil is stored; one that failed
	// may or may not be; nothing is stored twice, Seqs stay strictly
	// increasing, and the store carries on.
	const (
		appenders = 8
		calls     = 25
	)
	var (
		mu    sync.Mutex
		acked = make(map[string]bool)
		wg    sync.WaitGroup
	)
	for a := range appenders {
		wg.Go(func() {
			for c := range calls {
				ctx, cancel := context.WithCancel(h.ctx)
				if a%2 == 1 {
					// Cancel from another goroutine, at once or a
					// little later, while the Append is on its way.
					go func() {
						for range c % 4 * 50 {
							runtime.Gosched()
						}
						cancel()
					}()
				}
				entries := []jobstore.Entry{
					{Event: h.ev("web", fmt.Sprintf("w-%d-%d-a", a, c)), Destinations: []string{"hook"}},
					{Event: h.ev("web", fmt.Sprintf("w-%d-%d-b", a, c)), Destinations: []string{"hook"}},
				}
				_, err := h.store.Append(ctx, entries)
				cancel()
				switch {
				case err == nil:
					mu.Lock()
					acked[entries[0].Event.MessageID] = true
					acked[entries[1].Event.MessageID] = true
					mu.Unlock()
				case !errors.Is(err, context.Canceled):
					t.Errorf("Append: %v, want nil or context.Canceled", err)
				}
			}
		})
	}
	wg.Wait()
	h.appendEvents("web", []string{"hook"}, "after")
	got := h.pending(qWebHook)
	checkIncreasing(t, got)
	stored := make(map[string]int)
	for _, j := range got {
		stored[j.Event.MessageID]++
	}
	for id, n := range stored {
		if n > 1 {
			t.Errorf("%s stored %d times", id, n)
		}
	}
	for id := range acked {
		if stored[id] != 1 {
			t.Errorf("%s: Append returned nil but it is not stored", id)
		}
	}
	if stored["after"] != 1 {
		t.Error("the store did not take an Append after the canceled ones")
	}
	// The two entries of one call are stored together or not at all.
	for a := range appenders {
		for c := range calls {
			if x, y := stored[fmt.Sprintf("w-%d-%d-a", a, c)], stored[fmt.Sprintf("w-%d-%d-b", a, c)]; x != y {
				t.Errorf("call %d/%d: half of its entries stored", a, c)
			}
		}
	}
}

func testAppendAfterClose(t *testing.T, h *harness) {
	h.appendEvents("web", []string{"hook"}, "a")
	if err := h.store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := h.store.Append(h.ctx, []jobstore.Entry{{Event: h.ev("web", "b"), Destinations: []string{"hook"}}})
	if err == nil {
		t.Fatal("Append after Close succeeded")
	}
	if !errors.Is(err, jobstore.ErrUnavailable) {
		t.Errorf("Append after Close = %v, want an error that wraps jobstore.ErrUnavailable", err)
	}
	if _, err := h.store.Pending(h.ctx, qWebHook, 0, 10); err == nil {
		t.Error("Pending after Close succeeded")
	}
	if _, _, err := h.store.Retries(h.ctx, qWebHook, h.clock.Now(), 10); err == nil {
		t.Error("Retries after Close succeeded")
	}
	if _, err := h.store.Queues(h.ctx); err == nil {
		t.Error("Queues after Close succeeded")
	}
	if err := h.store.Apply(h.ctx, jobstore.Update{Drops: []jobstore.Drop{{Queue: qWebHook, Below: 100}}}); err == nil {
		t.Error("Apply after Close succeeded")
	}
	h.store = h.open(t, h.env)
	if got := messageIDs(h.pending(qWebHook)); !slices.Equal(got, []string{"a"}) {
		t.Errorf("Pending after reopen = %v, want [a]", got)
	}
}

// testReplay: a replayed entry is stored whatever the dedupe records say,
// and leaves none of its own.
func testReplay(t *testing.T, h *harness) {
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	appendOne := func(replay bool) bool {
		t.Helper()
		dup, err := h.store.Append(h.ctx, []jobstore.Entry{{Event: h.ev("web", "replayed"), Destinations: []string{"hook"}, Replay: replay}})
		if err != nil {
			t.Fatal(err)
		}
		return dup[0]
	}
	for i, step := range []struct {
		replay, dup bool
	}{
		{false, false}, // first delivery
		{true, false},  // replayed although seen
		{true, false},  // and again
		{false, true},  // an ordinary resend is still a duplicate
	} {
		if got := appendOne(step.replay); got != step.dup {
			t.Fatalf("step %d (replay %v): duplicate = %v, want %v", i, step.replay, got, step.dup)
		}
	}
	if n := len(h.pending(q)); n != 3 {
		t.Fatalf("%d jobs pending, want 3 (the first and two replays)", n)
	}
}

// announced returns, per queue, the jobs the store announced through
// Applied as "messageId@seq", and checks that each queue's announcements
// came in Seq order (a store spread over servers numbers each server's
// jobs on its own; see jobstore.AppliedFunc).
func (h *harness) announced() map[jobstore.Queue][]string {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[jobstore.Queue][]string{}
	last := map[jobstore.Queue]uint64{}
	for _, a := range h.heard {
		if len(a.Entries) == 0 {
			h.t.Errorf("Applied called with no entries")
		}
		a.Runs(func(entries []jobstore.Entry, dests []string, first uint64) {
			for i, e := range entries {
				for k, d := range dests {
					seq := first + uint64(i*len(dests)+k)
					q := jobstore.Queue{Source: e.Event.Source, Destination: d}
					if seq <= last[q] {
						h.t.Errorf("Applied announced Seq %d of %s after Seq %d: not in Seq order", seq, d, last[q])
					}
					last[q] = seq
					out[q] = append(out[q], fmt.Sprintf("%s@%d", e.Event.MessageID, seq))
				}
			}
		})
	}
	return out
}

// stored returns the pending jobs of q as "messageId@seq".
func (h *harness) stored(q jobstore.Queue) []string {
	h.t.Helper()
	var out []string
	for _, j := range h.pending(q) {
		out = append(out, fmt.Sprintf("%s@%d", j.Event.MessageID, j.Seq))
	}
	return out
}

// Applied hears of every stored job, duplicates left out, by the time Append
// returns, with the Seqs Pending reads the jobs back with, in Seq order.
func testApplied(t *testing.T, h *harness) {
	for _, ids := range [][]string{{"m1", "m2"}, {"m2", "m3", "m3"}, {"m4"}, {"m1"}} {
		entries := make([]jobstore.Entry, len(ids))
		for i, id := range ids {
			entries[i] = jobstore.Entry{Event: h.ev("web", id), Destinations: []string{"hook", "crm"}}
			if id == "m4" {
				entries[i].Destinations = []string{"hook"}
			}
		}
		if _, err := h.store.Append(h.ctx, entries); err != nil {
			t.Fatal(err)
		}
		// Before Append returned, not some time after.
		heard := h.announced()
		for _, q := range []jobstore.Queue{qWebHook, qWebCRM} {
			if got, want := heard[q], h.stored(q); !slices.Equal(got, want) {
				t.Fatalf("after Append(%v): Applied announced %v for %s, the store holds %v", ids, got, q.Destination, want)
			}
		}
	}
	if got := len(h.stored(qWebHook)); got != 4 {
		t.Errorf("the store holds %d jobs for hook, want 4 (m1..m4)", got)
	}
}

// Concurrent Appends, gathered into shared commits, are announced one at a
// time, in Seq order, each with the Seqs Pending reads back.
func testAppliedConcurrent(t *testing.T, h *harness) {
	const writers, each = 8, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				e := jobstore.Entry{Event: h.ev("web", fmt.Sprintf("w%d-%d", w, i)), Destinations: []string{"hook", "crm"}}
				if _, err := h.store.Append(h.ctx, []jobstore.Entry{e, e}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	heard := h.announced()
	for _, q := range []jobstore.Queue{qWebHook, qWebCRM} {
		want := h.stored(q)
		if len(want) != writers*each {
			t.Fatalf("the store holds %d jobs for %s, want %d", len(want), q.Destination, writers*each)
		}
		if got := heard[q]; !slices.Equal(got, want) {
			t.Errorf("Applied announced %d jobs for %s, the store holds %d; first difference near %v", len(got), q.Destination, len(want), firstDiff(got, want))
		}
	}
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("index %d: %s vs %s", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("length %d vs %d", len(a), len(b))
}
