// Package sink is a stand-in destination: an HTTP handler that accepts any
// POST, counts the events in it, and answers with injected faults (errors,
// 429 with Retry-After, latency, hangs, 200 with an error body, a rate limit,
// or being down). It is what `fanout sink` serves and what the benchmarks
// deliver to, so its hot path avoids work it does not need.
//
// Control endpoints, beside the events:
//
//	GET  /_sink/stats   counts and latency as JSON (see Stats)
//	POST /_sink/reset   zero the counts
//	POST /_sink/down    answer 503 to every event request
//	POST /_sink/up      stop answering 503
package sink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/fanout/fanout/internal/jsonscan"
)

// Options configures a Sink. The zero value answers 200 to everything and
// prints nothing.
type Options struct {
	// Print, when not nil, receives one line per event received: the answer
	// given, the key when one is configured, and the event as compact JSON.
	Print io.Writer
	// Record, when not nil, receives each event answered 2xx with a success
	// body, as one compact JSON line: what the sink accepted, so duplicates
	// in it are real duplicates and not retries of refused attempts.
	Record io.Writer
	// RecordTimes writes each Record line as {"at": T, "event": E}: T is
	// when the sink answered, in Unix nanoseconds (Now), and E the event,
	// so that a run can tell when each event, and each duplicate, arrived.
	RecordTimes bool

	// FailRate is the share of requests answered 500.
	FailRate float64
	// TooManyRate is the share of requests answered 429 with Retry-After.
	TooManyRate float64
	// RetryAfter is the Retry-After sent with injected 429s, rounded up to
	// whole seconds (the header's unit). Default 1s.
	RetryAfter time.Duration
	// TimeoutRate is the share of requests never answered: the handler waits
	// until the client gives up or the sink is closed.
	TimeoutRate float64
	// ErrorBodyRate is the share of requests answered 200 with a body of
	// {"success":false,"error":"..."}, as some APIs report failures.
	ErrorBodyRate float64
	// Latency is added before every answer, plus a uniform random share of
	// LatencyJitter.
	Latency       time.Duration
	LatencyJitter time.Duration

	// RateLimit is requests per second allowed per key; beyond it requests
	// are answered 429 with Retry-After. 0 means no limit.
	RateLimit float64
	// RateBurst is the limiter's bucket size. Default one second's worth of
	// RateLimit, as APIs with per-second windows allow.
	RateBurst int
	// Key chooses the key requests are rate limited and counted by: "" (or
	// "global") for one key for all requests, or "header:NAME" for the
	// value of request header NAME, such as "header:Fanout-Source".
	Key string

	// Down starts the sink answering 503 to every event request.
	Down bool
	// Seed seeds the random choice of faults, so a run can be repeated.
	Seed uint64
	// Logger receives the sink's own log lines. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock used for latency. Default time.Now.
	Now func() time.Time
}

// MaxBodyBytes bounds a request body; larger requests are answered 413.
const MaxBodyBytes = 16 << 20

// Sink is the stand-in destination. It is an http.Handler; create it with
// New and stop it with Close.
type Sink struct {
	opts       Options
	keyHeader  string // canonical header name, or "" for one global key
	retryAfter string
	faults     bool // whether any random fault is configured
	log        *slog.Logger
	now        func() time.Time

	down      atomic.Bool
	hanging   atomic.Int64 // requests held by the timeout fault now
	closed    chan struct{}
	closeOnce sync.Once
	flushDone chan struct{}

	rngMu sync.Mutex
	rng   *rand.Rand

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter

	outMu sync.Mutex // serializes Print and the record buffer
	rec   *bufio.Writer

	bufs sync.Pool // *request

	mu sync.Mutex
	st state
}

// state is everything Reset zeroes.
type state struct {
	since                   time.Time
	requests, events, noID  uint64
	accepted, unique, dupes uint64
	timeouts, tooLarge      uint64
	status                  [600]uint64
	seen                    map[string]struct{}
	keys                    map[string]*keyState
}

type keyState struct {
	requests, events, accepted, rateLimited uint64
	latency                                 histogram
}

// New returns a Sink for opts, or an error naming the option that is wrong.
func New(opts Options) (*Sink, error) {
	for name, r := range map[string]float64{
		"fail rate": opts.FailRate, "429 rate": opts.TooManyRate,
		"timeout rate": opts.TimeoutRate, "error body rate": opts.ErrorBodyRate,
	} {
		if r < 0 || r > 1 || math.IsNaN(r) {
			return nil, fmt.Errorf("%s must be between 0 and 1, found %v", name, r)
		}
	}
	if sum := opts.FailRate + opts.TooManyRate + opts.TimeoutRate + opts.ErrorBodyRate; sum > 1+1e-9 {
		return nil, fmt.Errorf("fault rates add up to %v, more than 1", sum)
	}
	if opts.Latency < 0 || opts.LatencyJitter < 0 || opts.RetryAfter < 0 {
		return nil, errors.New("latency, latency jitter and retry-after must not be negative")
	}
	if opts.RateLimit < 0 || opts.RateBurst < 0 {
		return nil, errors.New("rate limit and burst must not be negative")
	}
	if opts.RetryAfter == 0 {
		opts.RetryAfter = time.Second
	}
	if opts.RateBurst == 0 {
		opts.RateBurst = max(1, int(math.Ceil(opts.RateLimit)))
	}
	s := &Sink{
		opts:      opts,
		log:       opts.Logger,
		now:       opts.Now,
		closed:    make(chan struct{}),
		limiters:  map[string]*rate.Limiter{},
		rng:       rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		faults:    opts.FailRate+opts.TooManyRate+opts.TimeoutRate+opts.ErrorBodyRate > 0,
		bufs:      sync.Pool{New: func() any { return new(request) }},
		flushDone: make(chan struct{}),
	}
	switch {
	case opts.Key == "" || opts.Key == "global":
	case strings.HasPrefix(opts.Key, "header:") && len(opts.Key) > len("header:"):
		s.keyHeader = http.CanonicalHeaderKey(strings.TrimPrefix(opts.Key, "header:"))
	default:
		return nil, fmt.Errorf(`key must be "global" or "header:NAME", found %q`, opts.Key)
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.retryAfter = retryAfterValue(opts.RetryAfter)
	s.down.Store(opts.Down)
	s.st.reset(s.now())
	if opts.Record != nil {
		s.rec = bufio.NewWriterSize(opts.Record, 64<<10)
		go s.flushLoop()
	} else {
		close(s.flushDone)
	}
	return s, nil
}

func (st *state) reset(now time.Time) {
	*st = state{since: now, seen: map[string]struct{}{}, keys: map[string]*keyState{}}
}

// flushLoop flushes recorded events every second, so the file is current
// while the sink runs without a write per event.
func (s *Sink) flushLoop() {
	defer close(s.flushDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
			s.outMu.Lock()
			if err := s.rec.Flush(); err != nil {
				s.log.Error("sink: writing the record file", "err", err)
			}
			s.outMu.Unlock()
		}
	}
}

// Close releases requests hanging in the timeout fault and flushes the
// record. The sink answers 503 after Close.
func (s *Sink) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	<-s.flushDone
	s.down.Store(true)
	if s.rec == nil {
		return nil
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	return s.rec.Flush()
}

// SetDown makes the sink answer 503 to every event request (down) or stop
// doing so.
func (s *Sink) SetDown(down bool) { s.down.Store(down) }

// Reset zeroes every count and the set of messageIds seen.
func (s *Sink) Reset() {
	s.mu.Lock()
	s.st.reset(s.now())
	s.mu.Unlock()
}

// outcome is the answer chosen for one request.
type outcome uint8

const (
	ok outcome = iota
	down
	rateLimited
	fail
	tooMany
	hang
	errorBody
)

// Answers, built once: the hot path writes them without formatting.
var (
	bodyOK        = []byte(`{"success":true}`)
	bodyDown      = []byte(`{"success":false,"error":"the sink is down"}`)
	bodyLimited   = []byte(`{"success":false,"error":"rate limit exceeded"}`)
	bodyFail      = []byte(`{"success":false,"error":"injected failure"}`)
	bodyTooMany   = []byte(`{"success":false,"error":"injected 429"}`)
	bodyErrorBody = []byte(`{"success":false,"error":"injected error in a 200 response"}`)
	jsonType      = []string{"application/json"}
)

// request is the per-request scratch space, pooled so that a request
// allocates little beyond the messageIds it keeps.
type request struct {
	body   bytes.Buffer
	top    []jsonscan.Member // the body's members, when it is an object
	spans  []jsonscan.Span   // the events of a batch
	flat   []jsonscan.Member // the members of a batch's events, by span
	events []parsed
	line   bytes.Buffer
}

type parsed struct {
	id        string
	latencyUS int64 // -1 when receivedAt is missing or unreadable
	raw       []byte
}

// ServeHTTP answers the control endpoints under /_sink/ and counts every
// other POST as events.
func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_sink/") {
		s.control(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "the sink takes POST requests", http.StatusMethodNotAllowed)
		return
	}
	req := s.bufs.Get().(*request)
	defer s.putRequest(req)
	req.body.Reset()
	if r.ContentLength > 0 && r.ContentLength <= MaxBodyBytes {
		req.body.Grow(int(r.ContentLength))
	}
	if _, err := req.body.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes)); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			s.mu.Lock()
			s.st.tooLarge++
			s.st.status[http.StatusRequestEntityTooLarge]++
			s.mu.Unlock()
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		}
		return // the client went away mid-body: nothing to answer
	}

	var key string
	if s.keyHeader != "" {
		key = headerValue(r.Header, s.keyHeader)
	}
	out, retryAfter := s.decide(key)
	if out != down && out != rateLimited {
		if !s.sleep(r) {
			out = hang // the client gave up during the added latency
		}
	}
	if out == hang {
		s.hanging.Add(1)
		select {
		case <-r.Context().Done():
		case <-s.closed:
		}
		s.hanging.Add(-1)
	}

	s.parse(req, r.Header)
	status, body := answer(out)
	s.count(req, key, out, status)
	if s.opts.Print != nil || (s.rec != nil && accepted(out)) {
		s.output(req, key, out, status)
	}
	if out == hang {
		return
	}
	h := w.Header()
	h["Content-Type"] = jsonType
	if out == tooMany || out == rateLimited {
		h.Set("Retry-After", retryAfter)
	}
	w.WriteHeader(status)
	w.Write(body)
}

func (s *Sink) putRequest(req *request) {
	// A rare huge body must not stay pinned in the pool.
	if req.body.Cap() > 1<<20 {
		return
	}
	clear(req.events) // drop references to the body and ids
	req.events = req.events[:0]
	// Members and spans point into the body: through them, a smaller
	// buffer the body has since grown out of would stay alive.
	clear(req.top)
	clear(req.spans)
	clear(req.flat)
	s.bufs.Put(req)
}

// headerValue is Header.Get for a name already in canonical form, which
// saves canonicalizing it on every request.
func headerValue(h http.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func accepted(out outcome) bool { return out == ok }

func answer(out outcome) (int, []byte) {
	switch out {
	case down:
		return http.StatusServiceUnavailable, bodyDown
	case rateLimited:
		return http.StatusTooManyRequests, bodyLimited
	case fail:
		return http.StatusInternalServerError, bodyFail
	case tooMany:
		return http.StatusTooManyRequests, bodyTooMany
	case errorBody:
		return http.StatusOK, bodyErrorBody
	case hang:
		return 0, nil
	}
	return http.StatusOK, bodyOK
}

// decide picks the answer: down first, then the rate limit, which is real
// (a client that slows down gets through), then the random faults.
func (s *Sink) decide(key string) (outcome, string) {
	if s.down.Load() {
		return down, ""
	}
	if s.opts.RateLimit > 0 {
		if wait, ok := s.allow(key); !ok {
			return rateLimited, retryAfterValue(wait)
		}
	}
	if !s.faults {
		return ok, ""
	}
	s.rngMu.Lock()
	u := s.rng.Float64()
	s.rngMu.Unlock()
	o := s.opts
	switch {
	case u < o.FailRate:
		return fail, ""
	case u < o.FailRate+o.TooManyRate:
		return tooMany, s.retryAfter
	case u < o.FailRate+o.TooManyRate+o.TimeoutRate:
		return hang, ""
	case u < o.FailRate+o.TooManyRate+o.TimeoutRate+o.ErrorBodyRate:
		return errorBody, ""
	}
	return ok, ""
}

// allow takes a token from key's limiter, or says how long until one is
// available.
func (s *Sink) allow(key string) (time.Duration, bool) {
	s.limMu.Lock()
	lim := s.limiters[key]
	if lim == nil {
		lim = rate.NewLimiter(rate.Limit(s.opts.RateLimit), s.opts.RateBurst)
		s.limiters[key] = lim
	}
	s.limMu.Unlock()
	now := s.now()
	if lim.AllowN(now, 1) {
		return 0, true
	}
	r := lim.ReserveN(now, 1)
	wait := r.DelayFrom(now)
	r.CancelAt(now)
	return wait, false
}

// retryAfterValue renders d as Retry-After seconds, rounded up: a client
// told 0 for a 300ms wait would come straight back.
func retryAfterValue(d time.Duration) string {
	return strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10)
}

// sleep waits the configured latency; it reports false if the client gave
// up meanwhile.
func (s *Sink) sleep(r *http.Request) bool {
	d := s.opts.Latency
	if s.opts.LatencyJitter > 0 {
		s.rngMu.Lock()
		d += time.Duration(s.rng.Int64N(int64(s.opts.LatencyJitter)))
		s.rngMu.Unlock()
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	case <-s.closed:
		return true
	}
}

// parse finds the events in the body and their ids: for one event the
// webhook-id header (Standard Webhooks) or else its messageId; for a batch
// (a JSON array, or an object with a "batch" array) each element's
// messageId. A body that is not JSON is one event without an id; an empty
// body, or an empty batch, holds none.
//
// It runs on every request of a benchmark, on the machine fanout is being
// measured on, so it validates the body once and reads the two members it
// needs with jsonscan instead of decoding the body with encoding/json.
func (s *Sink) parse(req *request, h http.Header) {
	b := bytes.TrimSpace(req.body.Bytes())
	if len(b) == 0 {
		return
	}
	if jsonscan.Validate(b) != nil {
		req.events = append(req.events, parsed{raw: b, latencyUS: -1})
		return
	}
	now := s.now()
	req.top, req.spans, req.flat = req.top[:0], req.spans[:0], req.flat[:0]
	batch := false
	switch b[0] {
	case '[':
		req.spans, req.flat, batch = jsonscan.Elements(b, req.spans, req.flat)
	case '{':
		req.top, req.spans, req.flat = jsonscan.BatchMembers(b, req.top, req.spans, req.flat)
		// The last "batch" member counts, as it does for encoding/json
		// and for fanout's tracking API; BatchMembers found the elements
		// of the last one that is an array.
		for i := range req.top {
			if req.top[i].Is("batch") {
				batch = req.top[i].Value[0] == '['
			}
		}
	}
	if !batch {
		id, receivedAt := eventFields(req.top)
		e := parsed{id: headerValue(h, "Webhook-Id"), raw: b, latencyUS: sinceReceived(now, receivedAt)}
		if e.id == "" {
			e.id, _ = jsonscan.StringValue(id)
		}
		req.events = append(req.events, e)
		return
	}
	for _, el := range req.spans {
		e := parsed{raw: el.Raw, latencyUS: -1}
		if el.Object {
			id, receivedAt := eventFields(req.flat[el.Lo:el.Hi])
			e.id, _ = jsonscan.StringValue(id)
			e.latencyUS = sinceReceived(now, receivedAt)
		}
		req.events = append(req.events, e)
	}
}

// eventFields returns the raw messageId and receivedAt members of an event,
// nil when absent. Where a name repeats, the last one counts, as it does
// for encoding/json.
func eventFields(ms []jsonscan.Member) (messageID, receivedAt []byte) {
	for i := range ms {
		switch string(ms[i].Name) {
		case "messageId":
			messageID = ms[i].Value
		case "receivedAt":
			receivedAt = ms[i].Value
		}
	}
	return messageID, receivedAt
}

// sinceReceived returns now - receivedAt in microseconds, or -1 when receivedAt
// (a raw JSON value) is missing, not a string or not RFC 3339.
func sinceReceived(now time.Time, receivedAt []byte) int64 {
	at, ok := jsonscan.StringValue(receivedAt)
	if !ok {
		return -1
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return -1
	}
	return now.Sub(t).Microseconds()
}

// count adds one request to the stats, in one critical section.
func (s *Sink) count(req *request, key string, out outcome, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	ks := st.keys[key]
	if ks == nil {
		ks = &keyState{}
		st.keys[key] = ks
	}
	st.requests++
	ks.requests++
	n := uint64(len(req.events))
	st.events += n
	ks.events += n
	switch out {
	case hang:
		st.timeouts++
	case rateLimited:
		ks.rateLimited++
	}
	if status > 0 && status < len(st.status) {
		st.status[status]++
	}
	for i := range req.events {
		e := &req.events[i]
		if e.id == "" {
			st.noID++
		}
		if !accepted(out) {
			continue
		}
		st.accepted++
		ks.accepted++
		if e.id != "" {
			if _, dup := st.seen[e.id]; dup {
				st.dupes++
			} else {
				st.seen[e.id] = struct{}{}
				st.unique++
			}
		}
		if e.latencyUS >= 0 {
			ks.latency.record(e.latencyUS)
		}
	}
}

// output prints and records the request's events, one line each.
func (s *Sink) output(req *request, key string, out outcome, status int) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	label := "timeout"
	if status > 0 {
		label = strconv.Itoa(status)
		if out == errorBody {
			label += "-error-body"
		}
	}
	var at []byte
	if s.opts.RecordTimes {
		at = strconv.AppendInt([]byte(`{"at":`), s.now().UnixNano(), 10)
		at = append(at, `,"event":`...)
	}
	for _, e := range req.events {
		req.line.Reset()
		if err := json.Compact(&req.line, e.raw); err != nil {
			req.line.Reset()
			req.line.Write(e.raw)
		}
		compact := req.line.Bytes()
		if s.rec != nil && accepted(out) {
			if at != nil {
				s.rec.Write(at)
				s.rec.Write(compact)
				s.rec.WriteByte('}')
			} else {
				s.rec.Write(compact)
			}
			s.rec.WriteByte('\n')
		}
		if s.opts.Print != nil {
			if s.keyHeader != "" {
				fmt.Fprintf(s.opts.Print, "%s %s %s\n", label, keyLabel(key), compact)
			} else {
				fmt.Fprintf(s.opts.Print, "%s %s\n", label, compact)
			}
		}
	}
}

func keyLabel(key string) string {
	if key == "" {
		return "-"
	}
	return key
}

// Stats is the sink's counts since it started or was last reset.
type Stats struct {
	// Since is when counting started.
	Since time.Time `json:"since"`
	// Down is whether the sink is answering 503 to everything.
	Down bool `json:"down"`
	// Requests is every event request received, whatever the answer.
	Requests uint64 `json:"requests"`
	// Events is every event in those requests (a batch counts each element).
	Events uint64 `json:"events"`
	// Accepted is the events answered 2xx with a success body.
	Accepted uint64 `json:"accepted"`
	// Unique is the distinct ids among accepted events.
	Unique uint64 `json:"unique"`
	// Duplicates is the accepted events whose id had already been accepted.
	Duplicates uint64 `json:"duplicates"`
	// NoID is the events received with neither a webhook-id nor a messageId.
	NoID uint64 `json:"no_id"`
	// Timeouts is the requests never answered (the timeout fault, or the
	// client giving up during added latency).
	Timeouts uint64 `json:"timeouts"`
	// Hanging is the requests the timeout fault is holding right now.
	Hanging int64 `json:"hanging"`
	// Status counts requests by the status code answered.
	Status map[int]uint64 `json:"status"`
	// Latency is receivedAt to acceptance of accepted events, over all keys.
	// Quantiles come from a DDSketch, within 1% of the true value.
	Latency Latency `json:"latency"`
	// Keys breaks the counts down by key, when a key header is configured;
	// requests without the header are under "-".
	Keys map[string]KeyStats `json:"keys,omitempty"`
}

// KeyStats is the counts of one key.
type KeyStats struct {
	Requests    uint64  `json:"requests"`
	Events      uint64  `json:"events"`
	Accepted    uint64  `json:"accepted"`
	RateLimited uint64  `json:"rate_limited"`
	Latency     Latency `json:"latency"`
}

// Stats returns a snapshot of the counts.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	out := Stats{
		Since:      st.since,
		Down:       s.down.Load(),
		Requests:   st.requests,
		Events:     st.events,
		Accepted:   st.accepted,
		Unique:     st.unique,
		Duplicates: st.dupes,
		NoID:       st.noID,
		Timeouts:   st.timeouts,
		Hanging:    s.hanging.Load(),
		Status:     map[int]uint64{},
	}
	for code, n := range st.status {
		if n > 0 {
			out.Status[code] = n
		}
	}
	var all histogram
	if s.keyHeader != "" {
		out.Keys = make(map[string]KeyStats, len(st.keys))
	}
	for key, ks := range st.keys {
		all.merge(&ks.latency)
		if out.Keys != nil {
			out.Keys[keyLabel(key)] = KeyStats{
				Requests:    ks.requests,
				Events:      ks.events,
				Accepted:    ks.accepted,
				RateLimited: ks.rateLimited,
				Latency:     ks.latency.summary(),
			}
		}
	}
	out.Latency = all.summary()
	return out
}

// control serves /_sink/.
func (s *Sink) control(w http.ResponseWriter, r *http.Request) {
	route := strings.TrimPrefix(r.URL.Path, "/_sink/")
	switch {
	case route == "stats" && r.Method == http.MethodGet:
		w.Header()["Content-Type"] = jsonType
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Stats())
		return
	case route == "reset" && r.Method == http.MethodPost:
		s.Reset()
		s.log.Info("sink: counts reset")
	case route == "down" && r.Method == http.MethodPost:
		s.SetDown(true)
		s.log.Info("sink: down, answering 503 to every request")
	case route == "up" && r.Method == http.MethodPost:
		s.SetDown(false)
		s.log.Info("sink: up")
	case route == "stats" || route == "reset" || route == "down" || route == "up":
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	default:
		http.NotFound(w, r)
		return
	}
	w.Header()["Content-Type"] = jsonType
	w.Write(bodyOK)
}
