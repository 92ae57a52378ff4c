// Package ingest serves fanout's tracking API: the Segment-compatible
// endpoints that take events in, validate them, stamp the server-set fields,
// route them and store them durably before answering.
//
// A 200 means every accepted event of the request is in the job store; an
// event the store did not take is never answered with a 200.
package ingest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/diskspace"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jsonscan"
	"github.com/fanout/fanout/internal/router"
)

// Options configures a Handler. Router and Store are required.
type Options struct {
	// Sources are the configured sources; a request's write key selects
	// one. Sources with an empty write key cannot send.
	Sources []config.Source
	// Router decides each event's destinations.
	Router *router.Router
	// Store keeps the events. Handler answers 200 only once Append returned
	// nil for every accepted event.
	Store jobstore.Store
	// Observe, when set, is called once per request with what became of it,
	// for statistics and the live debugger. It runs on the request's goroutine, so it
	// must be cheap; it must not keep the Report's slices or payloads.
	Observe func(Report)
	// Now is the clock that stamps receivedAt. Default time.Now.
	Now func() time.Time
	// Logger receives a debug line per rejected request, with the source
	// name (never the write key), and an error line per store failure.
	// Default slog.Default().
	Logger *slog.Logger
	// PublicURL is how browsers and phones reach the tracking API (the
	// config's public_url); the settings document points them at it.
	PublicURL string
}

// Handler is the tracking API, an http.Handler serving
// POST /v1/identify, /v1/track, /v1/page, /v1/screen, /v1/group, /v1/alias,
// /v1/batch and its alias /v1/import, and what the browser and mobile
// libraries use beside them (see public.go). It is safe for concurrent use.
//
// A write key in Basic auth is checked before the body is read. One sent as
// writeKey in the body can only be found in a body that parses, so a request
// without Basic auth whose body is not valid JSON gets the 400 that says why,
// not a 401.
type Handler struct {
	mux     *http.ServeMux
	sources map[string]string // write key -> source name
	router  *router.Router
	store   jobstore.Store
	observe func(Report)
	now     func() time.Time
	log     *slog.Logger
	pub     *public // CORS, rate limits, settings: see public.go
}

var _ http.Handler = (*Handler)(nil)

// retryAfter is the Retry-After, in seconds, of a 503: long enough for a
// store that lost its disk or database to be looked at, short enough that
// SDKs holding events in memory do not give up.
const retryAfter = "5"

// New returns a Handler. It panics when Router or Store is nil, which is a
// wiring mistake, not a runtime condition.
func New(opts Options) *Handler {
	if opts.Router == nil || opts.Store == nil {
		panic("ingest.New: Options.Router and Options.Store are required")
	}
	h := &Handler{
		mux:     http.NewServeMux(),
		sources: make(map[string]string, len(opts.Sources)),
		router:  opts.Router,
		store:   opts.Store,
		observe: opts.Observe,
		now:     opts.Now,
		log:     opts.Logger,
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	for _, s := range opts.Sources {
		// An empty key would let a request without credentials in.
		if s.WriteKey != "" {
			h.sources[s.WriteKey] = s.Name
		}
	}
	for _, t := range callTypes {
		h.mux.HandleFunc("POST /v1/"+t, func(w http.ResponseWriter, r *http.Request) { h.serve(w, r, t) })
	}
	h.mux.HandleFunc("POST /v1/batch", func(w http.ResponseWriter, r *http.Request) { h.serve(w, r, "") })
	h.mux.HandleFunc("POST /v1/import", func(w http.ResponseWriter, r *http.Request) { h.serve(w, r, "") })
	h.pub = newPublic(opts)
	h.routePublic()
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.cors(w, r) {
		return
	}
	h.mux.ServeHTTP(w, r)
}

// Rejection is one event of a batch that was not accepted.
type Rejection struct {
	// Index is the event's position in the batch, from 0.
	Index int `json:"index"`
	// Reason says what was expected and what was found.
	Reason string `json:"reason"`
}

// Report is what became of one tracking API request.
type Report struct {
	// Source is the name of the source the write key selected; "" when
	// the key was missing or unknown.
	Source string
	// Status is the HTTP status of the answer.
	Status int
	// Failure says why the whole request was refused; "" when it was not.
	Failure string
	// Accepted are the entries the store took, duplicates left out.
	Accepted []jobstore.Entry
	// Routes are the routing decisions of the accepted entries, by index:
	// Routes[i].To is Accepted[i].Destinations, and Filtered and
	// Unsupported name the connected destinations Accepted[i] got no job
	// for, and why.
	Routes []router.Decision
	// Duplicates counts the events the store already had.
	Duplicates int
	// Rejected are the events of a batch that were refused.
	Rejected []Rejection
}

// response is the body of every answer.
type response struct {
	Success  bool        `json:"success"`
	Message  string      `json:"message,omitempty"`
	Rejected []Rejection `json:"rejected,omitempty"`
}

// requestError is a request answered with something other than 200.
type requestError struct {
	status   int
	message  string
	rejected []Rejection

	// retryAfter is the Retry-After of a 429, in seconds.
	retryAfter string
}

func badRequest(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, message: fmt.Sprintf(format, args...)}
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

var parserPool = sync.Pool{New: func() any { return new(parser) }}

var gzipPool sync.Pool // *gzip.Reader

// serve handles one request. typ is the call type of a single-call endpoint,
// "" for a batch.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, typ string) {
	source := ""
	rejected, err := h.handle(r, typ, &source)
	if err != nil {
		if h.observe != nil {
			h.observe(Report{Source: source, Status: err.status, Failure: err.message, Rejected: err.rejected})
		}
		h.fail(w, r, source, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if len(rejected) == 0 {
		io.WriteString(w, `{"success":true}`)
		return
	}
	h.log.Debug("batch partly rejected", "source", source, "path", r.URL.Path,
		"rejected", len(rejected), "first_index", rejected[0].Index, "first_reason", rejected[0].Reason)
	json.NewEncoder(w).Encode(response{Success: true, Rejected: rejected})
}

// handle reads, checks, routes and stores the request's events. It sets
// *source as soon as the write key is known, for logging.
func (h *Handler) handle(r *http.Request, typ string, source *string) ([]Rejection, *requestError) {
	// A write key in Basic auth is checked before the body is read, so a
	// wrong key costs no parsing; one in the body has to wait for it.
	key, _, basic := r.BasicAuth()
	if basic && key != "" {
		name, ok := h.sources[key]
		if !ok {
			return nil, unknownKey
		}
		*source = name
	}

	buf := bufPool.Get().(*bytes.Buffer)
	defer bufPool.Put(buf)
	buf.Reset()
	if err := readBody(r, buf); err != nil {
		return nil, err
	}
	body := trimSpace(buf.Bytes())
	if err := jsonscan.Validate(body); err != nil {
		return nil, badRequest("expected a JSON object, found invalid JSON: %v", err)
	}
	if !utf8.Valid(body) {
		return nil, badRequest("expected UTF-8 text, found invalid UTF-8 in the body")
	}

	p := parserPool.Get().(*parser)
	defer func() {
		p.clear()
		parserPool.Put(p)
	}()
	if body[0] != '{' {
		return nil, badRequest("expected a JSON object, found %s", describe(body))
	}
	p.scan(body, typ == "")
	if *source == "" {
		name, err := h.bodyKey(p.top)
		if err != nil {
			return nil, err
		}
		*source = name
	}
	if err := h.admit(r, *source); err != nil {
		return nil, err
	}

	entries, rejected, err := h.events(p, typ, *source, body)
	if err != nil {
		return nil, err
	}
	if err := h.limit(*source, len(entries)); err != nil {
		return nil, err
	}

	dup, storeErr := h.store.Append(r.Context(), entries)
	if storeErr != nil {
		return nil, h.storeFailed(r.Context(), *source, storeErr)
	}
	accepted := withoutDuplicates(entries, dup)
	if h.observe != nil {
		h.observe(Report{Source: *source, Status: http.StatusOK, Accepted: accepted,
			Routes: withoutDuplicates(p.routes, dup), Duplicates: len(entries) - len(accepted), Rejected: rejected})
	}
	return rejected, nil
}

// events parses the events of a body already checked to be a JSON object
// whose members are in p.top (and for a batch, its events' in p.spans),
// leaving their routing decisions in p.routes. typ is the call type of a
// single call, "" for a batch.
func (h *Handler) events(p *parser, typ, source string, body []byte) ([]jobstore.Entry, []Rejection, *requestError) {
	if typ == "" {
		return h.batch(p, source, body)
	}
	p.reset(source, h.router, h.now(), 1, len(body), nil)
	e, d, reason := p.event(body, p.top, typ, nil)
	if reason != "" {
		return nil, nil, badRequest("%s", reason)
	}
	p.routes = append(p.routes, d)
	return []jobstore.Entry{e}, nil, nil
}

// batch parses the events of a /v1/batch or /v1/import body.
func (h *Handler) batch(p *parser, source string, body []byte) ([]jobstore.Entry, []Rejection, *requestError) {
	var b batchDefaults
	var list []byte
	for _, m := range p.top {
		// The last of repeated names wins, as for events.
		switch string(m.Name) {
		case "batch":
			list = m.Value
		case "context":
			b.contextRaw = m.Value
		case "integrations":
			b.integrationsRaw = m.Value
		case "sentAt":
			b.sentAt = m.Value
		}
	}
	if list == nil || list[0] != '[' {
		return nil, nil, badRequest("expected batch to be an array of events, found %s", describe(list))
	}
	var err *requestError
	if b.context, b.contextRaw, err = batchObject("context", b.contextRaw); err != nil {
		return nil, nil, err
	}
	if b.integrations, b.integrationsRaw, err = batchObject("integrations", b.integrationsRaw); err != nil {
		return nil, nil, err
	}
	if isNull(b.sentAt) {
		b.sentAt = nil
	} else {
		t, reason := parseTime("sentAt", b.sentAt)
		if reason != "" {
			return nil, nil, badRequest("%s", reason)
		}
		b.sentAtTime = t
	}

	// The batch's elements were found with the top-level members, so an
	// oversized batch is refused before any event is built.
	elems := p.spans
	if len(elems) == 0 {
		return nil, nil, badRequest("expected batch to hold at least one event, found an empty array")
	}
	if len(elems) > MaxBatchEvents {
		return nil, nil, badRequest("batch holds %d events, the limit is %d", len(elems), MaxBatchEvents)
	}

	if n := len(body) + len(elems)*(len(b.contextRaw)+len(b.integrationsRaw)); n > maxStoredBytes {
		return nil, nil, badRequest("batch would be %d bytes once its context and integrations are copied into each of its %d events, the limit is %d",
			n, len(elems), maxStoredBytes)
	}
	p.reset(source, h.router, h.now(), len(elems), len(body), &b)
	entries := make([]jobstore.Entry, 0, len(elems))
	var rejected []Rejection
	for i, el := range elems {
		if !el.Object {
			rejected = append(rejected, Rejection{Index: i, Reason: "expected an event object, found " + describe(el.Raw)})
			continue
		}
		e, d, reason := p.event(el.Raw, p.flat[el.Lo:el.Hi], "", &b)
		if reason != "" {
			rejected = append(rejected, Rejection{Index: i, Reason: reason})
			continue
		}
		entries = append(entries, e)
		p.routes = append(p.routes, d)
	}
	if len(entries) == 0 {
		return nil, nil, &requestError{
			status:   http.StatusBadRequest,
			message:  fmt.Sprintf("every event of the batch was rejected; the first, at index 0: %s", rejected[0].Reason),
			rejected: rejected,
		}
	}
	return entries, rejected, nil
}

// batchObject checks a batch-level context or integrations member: absent,
// null or an object. It returns the object's members, nil when there is
// nothing to merge.
func batchObject(name string, v []byte) ([]jsonscan.Member, []byte, *requestError) {
	if isNull(v) {
		return nil, nil, nil
	}
	ms, ok := jsonscan.Members(v, nil)
	if !ok {
		return nil, nil, badRequest("expected the batch's %s to be an object, found %s", name, describe(v))
	}
	if len(ms) == 0 {
		return nil, nil, nil
	}
	return ms, v, nil
}

var (
	unknownKey = &requestError{status: http.StatusUnauthorized,
		message: "unknown write key: send a configured source's write key as the Basic auth user name"}
	missingKey = &requestError{status: http.StatusUnauthorized,
		message: "missing write key: send it as the Basic auth user name (empty password) or as writeKey in the body"}
)

// bodyKey finds the source from the writeKey member of the body.
func (h *Handler) bodyKey(ms []jsonscan.Member) (string, *requestError) {
	var key string
	for _, m := range ms {
		if m.Is("writeKey") {
			key, _ = jsonscan.StringValue(m.Value)
		}
	}
	if key == "" {
		return "", missingKey
	}
	name, ok := h.sources[key]
	if !ok {
		return "", unknownKey
	}
	return name, nil
}

// readBody reads the request body into buf, decompressing gzip. It enforces
// MaxRequestBytes on what it reads and, for gzip, on what it decompresses
// to, so that a gzip bomb ends as a 400 after at most MaxRequestBytes of
// output instead of exhausting memory.
func readBody(r *http.Request, buf *bytes.Buffer) *requestError {
	if r.ContentLength > MaxRequestBytes {
		return badRequest("request body is %d bytes, the limit is %d", r.ContentLength, MaxRequestBytes)
	}
	wire := &limitReader{r: r.Body, n: MaxRequestBytes}
	var src io.Reader = wire
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
		if r.ContentLength > 0 {
			buf.Grow(int(r.ContentLength))
		}
	case "gzip":
		zr, _ := gzipPool.Get().(*gzip.Reader)
		var err error
		if zr == nil {
			zr, err = gzip.NewReader(src)
		} else {
			err = zr.Reset(src)
		}
		if err != nil {
			if wire.over {
				return badRequest("request body is over %d bytes, the limit", MaxRequestBytes)
			}
			return badRequest("expected a gzip body as Content-Encoding says, found %v", err)
		}
		defer gzipPool.Put(zr)
		src = &limitReader{r: zr, n: MaxRequestBytes}
	default:
		return badRequest("expected Content-Encoding gzip or none, found %q", enc)
	}
	_, err := buf.ReadFrom(src)
	if errors.Is(err, errTooLarge) {
		if wire.over {
			return badRequest("request body is over %d bytes, the limit", MaxRequestBytes)
		}
		return badRequest("request body decompresses to over %d bytes, the limit", MaxRequestBytes)
	}
	if err != nil {
		return badRequest("could not read the request body: %v", err)
	}
	if len(trimSpace(buf.Bytes())) == 0 {
		return badRequest("expected a JSON object, found an empty body")
	}
	return nil
}

var errTooLarge = errors.New("body too large")

// limitReader reads at most n bytes from r and fails with errTooLarge,
// rather than io.EOF as io.LimitReader does, when r holds more: a truncated
// body must not pass for a short one.
type limitReader struct {
	r    io.Reader
	n    int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		// Probe for one more byte to tell the end of the body from a body
		// that is too large.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.over = true
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// storeFailed turns an Append error into a 503: the client keeps the events
// and retries, whether the store said it is unavailable or failed otherwise.
func (h *Handler) storeFailed(ctx context.Context, source string, err error) *requestError {
	switch {
	case errors.Is(err, diskspace.ErrLowSpace), errors.Is(err, diskspace.ErrDegraded):
		// Not a line per request on a disk that is full: the watcher
		// logs when it starts and stops refusing.
		h.log.Debug("disk short of space, answering 503", "source", source, "err", err)
	case errors.Is(err, jobstore.ErrUnavailable):
		h.log.Warn("store unavailable, answering 503", "source", source, "err", err)
	case ctx.Err() != nil:
		h.log.Debug("request ended before the store answered", "source", source, "err", err)
	default:
		h.log.Error("store append failed, answering 503", "source", source, "err", err)
	}
	return &requestError{status: http.StatusServiceUnavailable, message: "storage cannot accept events right now; retry later"}
}

// fail answers e. A 503 is not logged again: storeFailed logged its cause.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, source string, e *requestError) {
	if e.status != http.StatusServiceUnavailable {
		h.log.Debug("request rejected", "source", source, "path", r.URL.Path,
			"status", e.status, "reason", e.message)
	}
	if e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	errorHeaders(w, e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(response{Message: e.message, Rejected: e.rejected})
}

// withoutDuplicates returns the elements of entries, or of a slice indexed
// like them, that the store did not report as duplicates, sharing the slice
// when there are none.
func withoutDuplicates[T any](entries []T, dup []bool) []T {
	n := 0
	for i := range entries {
		if i < len(dup) && dup[i] {
			n++
		}
	}
	if n == 0 {
		return entries
	}
	out := make([]T, 0, len(entries)-n)
	for i, e := range entries {
		if i >= len(dup) || !dup[i] {
			out = append(out, e)
		}
	}
	return out
}

func trimSpace(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isSpace(b[i]) {
		i++
	}
	for j > i && isSpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
