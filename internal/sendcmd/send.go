// Package sendcmd is `fanout send`: it sends events to a running fanout
// through the tracking API, one event or a paced stream of batches, and
// reports what the server answered.
package sendcmd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Options describes what to send and how.
type Options struct {
	// URL is the tracking API's base URL, such as http://127.0.0.1:8080.
	URL string
	// WriteKey is sent as the Basic auth user name.
	WriteKey string

	// Type is the call type: track, identify, page, screen, group or alias.
	Type string
	// Event is the track event's name, or the page or screen name.
	Event       string
	UserID      string
	AnonymousID string
	GroupID     string
	PreviousID  string
	// Properties and Traits are JSON objects, or empty.
	Properties json.RawMessage
	Traits     json.RawMessage

	// Count is how many events to send. 1 sends one event to /v1/<type>;
	// more are sent in batches to /v1/batch.
	Count int
	// Rate is events per second; 0 sends as fast as the server takes them.
	Rate float64
	// Batch is the most events per /v1/batch request. Default 100.
	Batch int
	// Concurrency is the most requests in flight. Default 8.
	Concurrency int

	// Client sends the requests. Default: a client with a 30s timeout.
	Client *http.Client
	// Out receives the response (one event) or the summary (many).
	Out io.Writer
	// Progress, when not nil, receives progress while many events are sent:
	// a bar redrawn in place when ProgressTTY, otherwise a line every
	// ProgressEvery (default 2s).
	Progress      io.Writer
	ProgressTTY   bool
	ProgressEvery time.Duration
}

// Summary is the outcome of a run.
type Summary struct {
	// Sent is the events sent in requests, whatever the answer.
	Sent int64
	// Accepted is the events the server accepted: those in 200 responses,
	// less any it listed as rejected.
	Accepted int64
	// Failed is Sent - Accepted: events in failed requests or rejected.
	Failed  int64
	Elapsed time.Duration
	// Errors holds the first few distinct failures, for the user to read.
	Errors []string
}

// EventsPerSecond is the rate events were sent at.
func (s Summary) EventsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Sent) / s.Elapsed.Seconds()
}

// ErrFailed is returned, wrapped, when any event was not accepted.
var ErrFailed = errors.New("some events were not accepted")

var callTypes = map[string]bool{"track": true, "identify": true, "page": true, "screen": true, "group": true, "alias": true}

// Run sends the events opts describes. With Count 1 it prints the server's
// answer; with more it prints a summary. The error wraps ErrFailed when any
// event was not accepted.
func Run(ctx context.Context, opts Options) (Summary, error) {
	if err := opts.check(); err != nil {
		return Summary{}, err
	}
	runID, err := newRunID()
	if err != nil {
		return Summary{}, err
	}
	s := &sender{opts: opts, runID: runID}
	if opts.Count == 1 {
		return s.one(ctx)
	}
	return s.many(ctx)
}

func (o *Options) check() error {
	if o.URL == "" {
		return errors.New("--url is required")
	}
	o.URL = strings.TrimRight(o.URL, "/")
	if o.WriteKey == "" {
		return errors.New("--write-key is required")
	}
	if !callTypes[o.Type] {
		return fmt.Errorf("--type: expected track, identify, page, screen, group or alias, found %q", o.Type)
	}
	if o.Type == "track" && o.Event == "" {
		return errors.New("--event is required for track")
	}
	for name, raw := range map[string]json.RawMessage{"--properties": o.Properties, "--traits": o.Traits} {
		if len(raw) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return fmt.Errorf("%s: expected a JSON object, found %s", name, raw)
		}
	}
	if o.Count < 1 {
		return fmt.Errorf("--count must be at least 1, found %d", o.Count)
	}
	if o.Rate < 0 || math.IsNaN(o.Rate) {
		return fmt.Errorf("--rate must not be negative, found %v", o.Rate)
	}
	if o.Batch == 0 {
		o.Batch = 100
	}
	if o.Concurrency == 0 {
		o.Concurrency = 8
	}
	if o.Batch < 1 || o.Concurrency < 1 {
		return errors.New("--batch and --concurrency must be at least 1")
	}
	if o.Client == nil {
		o.Client = &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: o.Concurrency, Proxy: http.ProxyFromEnvironment},
		}
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 2 * time.Second
	}
	return nil
}

// newRunID returns a random prefix for messageIds, so that ids are unique
// across runs as well as within one.
func newRunID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

type sender struct {
	opts  Options
	runID string
}

// event returns the n-th event of the run.
func (s *sender) event(n int64, now time.Time) map[string]any {
	o := &s.opts
	e := map[string]any{
		"type":      o.Type,
		"messageId": s.runID + "-" + strconv.FormatInt(n, 10),
		"timestamp": now.UTC().Format(time.RFC3339Nano),
		"context":   map[string]any{"library": map[string]any{"name": "fanout-send"}},
	}
	set := func(k, v string) {
		if v != "" {
			e[k] = v
		}
	}
	set("userId", o.UserID)
	set("anonymousId", o.AnonymousID)
	set("groupId", o.GroupID)
	set("previousId", o.PreviousID)
	if o.UserID == "" && o.AnonymousID == "" {
		// The API needs one of the two; a stable one per run reads as one
		// visitor in the debugger.
		e["anonymousId"] = "fanout-send-" + s.runID
	}
	switch o.Type {
	case "track":
		e["event"] = o.Event
	case "page", "screen":
		set("name", o.Event)
	}
	if len(o.Properties) > 0 {
		e["properties"] = o.Properties
	}
	if len(o.Traits) > 0 {
		e["traits"] = o.Traits
	}
	return e
}

func (s *sender) post(ctx context.Context, path string, body any) (int, []byte, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.opts.URL+path, bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "fanout-send")
	req.SetBasicAuth(s.opts.WriteKey, "")
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, respBody, err
}

// one sends a single event to /v1/<type> and prints the answer.
func (s *sender) one(ctx context.Context) (Summary, error) {
	start := time.Now()
	sum := Summary{Sent: 1}
	status, body, err := s.post(ctx, "/v1/"+s.opts.Type, s.event(0, start))
	sum.Elapsed = time.Since(start)
	if err != nil {
		sum.Failed = 1
		return sum, fmt.Errorf("%w: %v", ErrFailed, err)
	}
	fmt.Fprintf(s.opts.Out, "%d %s\n%s\n", status, http.StatusText(status), bytes.TrimSpace(body))
	if rejected := rejectedCount(body); status != http.StatusOK || rejected > 0 {
		sum.Failed = 1
		return sum, fmt.Errorf("%w: the server answered %d", ErrFailed, status)
	}
	sum.Accepted = 1
	return sum, nil
}

// rejectedCount reads how many events a 200 response lists as rejected: a
// batch with some invalid events is accepted, with the others listed.
func rejectedCount(body []byte) int {
	var r struct {
		Rejected []json.RawMessage `json:"rejected"`
	}
	if json.Unmarshal(body, &r) != nil {
		return 0
	}
	return len(r.Rejected)
}

// batchSize picks the events per request: small enough that at the target
// rate a batch goes out about every 100ms (a smooth stream rather than one
// burst a second), never more than opts.Batch.
func batchSize(rate float64, most int) int {
	if rate <= 0 {
		return most
	}
	return max(1, min(most, int(math.Ceil(rate/10))))
}

// many sends opts.Count events in batches to /v1/batch, paced to opts.Rate,
// with opts.Concurrency requests in flight.
func (s *sender) many(ctx context.Context) (Summary, error) {
	o := &s.opts
	size := batchSize(o.Rate, o.Batch)
	var lim *rate.Limiter
	if o.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(o.Rate), size)
	}

	var sent, accepted, failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	fail := func(n int, msg string) {
		failed.Add(int64(n))
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 5 && !contains(errs, msg) {
			errs = append(errs, msg)
		}
	}

	start := time.Now()
	batches := make(chan []any, o.Concurrency)
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Go(func() {
			for batch := range batches {
				status, body, err := s.post(ctx, "/v1/batch", map[string]any{
					"batch":  batch,
					"sentAt": time.Now().UTC().Format(time.RFC3339Nano),
				})
				sent.Add(int64(len(batch)))
				switch {
				case err != nil:
					fail(len(batch), err.Error())
				case status != http.StatusOK:
					fail(len(batch), fmt.Sprintf("%d %s", status, bytes.TrimSpace(body)))
				default:
					rej := min(rejectedCount(body), len(batch))
					accepted.Add(int64(len(batch) - rej))
					if rej > 0 {
						fail(rej, fmt.Sprintf("%d rejected: %s", rej, bytes.TrimSpace(body)))
					}
				}
			}
		})
	}

	progressDone := make(chan struct{})
	var progressWG sync.WaitGroup
	if o.Progress != nil {
		progressWG.Go(func() { s.progress(start, &sent, &failed, progressDone) })
	}

	// The producer: build batches as the rate allows and hand them to the
	// workers; the channel's bound keeps it at most one round ahead.
	var n int64
produce:
	for n < int64(o.Count) {
		b := int(min(int64(size), int64(o.Count)-n))
		if lim != nil {
			if err := lim.WaitN(ctx, b); err != nil {
				break
			}
		}
		now := time.Now()
		batch := make([]any, b)
		for i := range batch {
			batch[i] = s.event(n, now)
			n++
		}
		select {
		case batches <- batch:
		case <-ctx.Done():
			break produce
		}
	}
	close(batches)
	wg.Wait()
	close(progressDone)
	progressWG.Wait()

	sum := Summary{
		Sent:     sent.Load(),
		Accepted: accepted.Load(),
		Failed:   failed.Load(),
		Elapsed:  time.Since(start),
		Errors:   errs,
	}
	fmt.Fprintf(o.Out, "sent %d  accepted %d  failed %d  elapsed %s  %.1f events/s\n",
		sum.Sent, sum.Accepted, sum.Failed, sum.Elapsed.Round(time.Millisecond), sum.EventsPerSecond())
	for _, e := range sum.Errors {
		fmt.Fprintf(o.Out, "error: %s\n", e)
	}
	if err := ctx.Err(); err != nil {
		return sum, fmt.Errorf("interrupted after %d of %d events: %w", sum.Sent, o.Count, err)
	}
	if sum.Failed > 0 {
		return sum, fmt.Errorf("%w: %d of %d", ErrFailed, sum.Failed, sum.Sent)
	}
	return sum, nil
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

// progress reports until done is closed: on a terminal, a bar redrawn in
// place every 200ms; elsewhere (a log, a CI job) a plain line every
// ProgressEvery, since carriage returns make a mess of files.
func (s *sender) progress(start time.Time, sent, failed *atomic.Int64, done <-chan struct{}) {
	o := &s.opts
	every := o.ProgressEvery
	if o.ProgressTTY {
		every = 200 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			if o.ProgressTTY {
				fmt.Fprintf(o.Progress, "\r%s\n", progressLine(start, sent.Load(), failed.Load(), o.Count, true))
			}
			return
		case <-t.C:
			line := progressLine(start, sent.Load(), failed.Load(), o.Count, o.ProgressTTY)
			if o.ProgressTTY {
				fmt.Fprintf(o.Progress, "\r%s", line)
			} else {
				fmt.Fprintln(o.Progress, line)
			}
		}
	}
}

// progressLine renders "[=====>    ] 4500/10000  998 ev/s  0 errors", the
// bar only for a terminal.
func progressLine(start time.Time, sent, failed int64, total int, bar bool) string {
	elapsed := time.Since(start).Seconds()
	var evs float64
	if elapsed > 0 {
		evs = float64(sent) / elapsed
	}
	text := fmt.Sprintf("%d/%d  %.0f ev/s  %d errors", sent, total, evs, failed)
	if !bar {
		return text
	}
	const width = 30
	filled := int(float64(width) * float64(sent) / float64(max(total, 1)))
	b := strings.Repeat("=", filled)
	if filled < width {
		b += ">" + strings.Repeat(" ", width-filled-1)
	}
	return "[" + b + "] " + text
}
