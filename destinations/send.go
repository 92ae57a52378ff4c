package destinations

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/internal/event"
	"golang.org/x/time/rate"
)

// DefaultMaxBody is how many bytes of a response body Send keeps when
// Sender.MaxBody is 0: enough for any error message or per-event batch
// report, small enough that thousands of requests in flight stay cheap.
const DefaultMaxBody = 64 << 10

// drainLimit is how much of a response body beyond the kept part is read
// and thrown away. Reading a body to its end lets the connection go back to
// the pool; past this much it is cheaper to close the connection.
const drainLimit = 256 << 10

// snippetLen is how many bytes of a response body a reason quotes.
const snippetLen = 200

// Sender drives a Destination: it runs Transform, performs the requests,
// runs Classify and gives every event its outcome. The zero value is not
// usable: Client is required. A Sender is safe for concurrent use.
type Sender struct {
	// Client performs every request. Required; NewClient builds the one
	// fanout uses. Its Timeout bounds each request.
	Client *http.Client
	// Name is the configured destination's name, logged with panics.
	Name string
	// Logger receives integration panics with their stacks. nil means
	// slog.Default().
	Logger *slog.Logger
	// Now stamps Response.ReceivedAt. nil means time.Now.
	Now func() time.Time
	// MaxBody is how many bytes of each response body are kept in
	// Response.Body. 0 means DefaultMaxBody.
	MaxBody int
	// Limiter is the destination's rate limit, which Do waits on; nil
	// means none. Send does not: the delivery engine paces Send itself,
	// taking from the same limiter.
	Limiter *rate.Limiter
}

// ErrInvalidRequest is in the chain of Do's error when net/http cannot
// build the request: a bad setting or a bug in the integration, not a
// failure worth retrying.
var ErrInvalidRequest = errors.New("invalid request")

// Do performs one request an integration makes itself, outside its Plan
// (an OAuth token, a lookup, a validation call), the way Send performs
// those of a Plan: it waits for the rate limit, keeps the start of the
// body and stamps ReceivedAt. What the answer means is the caller's to
// decide; ClassifyStatus is the default. The error, when there is no
// answer, says why in the words of Send's reasons, without the URL (its
// query may hold a credential).
func (s *Sender) Do(ctx context.Context, req *Request) (*Response, error) {
	if s.Limiter != nil {
		if err := s.Limiter.Wait(ctx); err != nil {
			return nil, fmt.Errorf("no request allowed by rate_limit in time: %w", err)
		}
	}
	resp, err := s.roundTrip(ctx, req)
	if err != nil {
		return nil, &transportError{reason: transportReason(err, s.Client.Timeout), err: err}
	}
	return resp, nil
}

// transportError is Do's error: the reason Send would give, and the
// error behind it.
type transportError struct {
	reason string
	err    error
}

func (e *transportError) Error() string { return e.reason }
func (e *transportError) Unwrap() error { return e.err }

// SendResult is the outcome of one event together with the exchange that
// decided it, kept so that delivery issues can show samples.
type SendResult struct {
	Result
	// Request is the request that carried the event; nil when the outcome
	// was decided without one (Plan.Results, or Transform failed). Events
	// sent in one batch share it. Its Header may carry credentials (an API
	// key header, Authorization): redact it before showing it anywhere.
	Request *Request
	// Response is the destination's answer; nil when there was none
	// (no request, or a transport error). Events of one batch share it.
	Response *Response
}

// Send delivers events to d through client and returns one Result per
// event, in the order of events. It never panics because of the
// integration: a panic in Transform or Classify is logged and turns the
// events concerned into Retryable results. Use a Sender to name the
// destination in logs, inject the clock, or keep requests and responses.
func Send(ctx context.Context, d Destination, client *http.Client, events []event.Event) []Result {
	s := Sender{Client: client}
	sent := s.Send(ctx, d, events)
	out := make([]Result, len(sent))
	for i := range sent {
		out[i] = sent[i].Result
	}
	return out
}

// Send delivers events to d and returns one SendResult per event, in the
// order of events. The requests of one Plan are performed one after the
// other: concurrency belongs to the delivery engine, which runs many Send
// calls at once.
//
// Every failure that is not the destination's verdict on the event (a
// transport error, a panic, a bug in the integration such as an event left
// without an outcome) is Retryable: the event is retried and, if the
// failure persists, archived where it can be replayed once the cause is
// fixed, rather than dropped.
func (s *Sender) Send(ctx context.Context, d Destination, events []event.Event) []SendResult {
	out := make([]SendResult, len(events))
	if len(events) == 0 {
		return out
	}
	plan, reason := s.transform(ctx, d, events)
	if reason != "" {
		for i := range out {
			out[i].Result = Result{Outcome: Retryable, Reason: reason}
		}
		return out
	}
	for i, r := range plan.Results {
		if i < 0 || i >= len(out) {
			s.logger().Error("integration bug: transform gave a result for an event index out of range",
				slog.String("destination", s.Name), slog.Int("index", i), slog.Int("events", len(events)))
			continue
		}
		out[i].Result = r
	}
	for _, req := range plan.Requests {
		if req != nil {
			s.do(ctx, d, req, out)
		}
	}
	for i := range out {
		if out[i].Outcome == 0 {
			out[i].Result = Result{Outcome: Retryable,
				Reason: "integration bug: the event got neither a request nor an outcome"}
		}
	}
	return out
}

// transform runs d.Transform, turning a panic or an error into a reason.
func (s *Sender) transform(ctx context.Context, d Destination, events []event.Event) (plan Plan, reason string) {
	defer func() {
		if v := recover(); v != nil {
			reason = s.panicked("transform", v)
		}
	}()
	plan, err := d.Transform(ctx, events)
	if err != nil {
		return Plan{}, "transform failed: " + err.Error()
	}
	return plan, ""
}

// classify runs d.Classify, turning a panic into a reason.
func (s *Sender) classify(d Destination, req *Request, resp *Response) (results []Result, reason string) {
	defer func() {
		if v := recover(); v != nil {
			reason = s.panicked("classify", v)
		}
	}()
	return d.Classify(req, resp), ""
}

// panicked records an integration panic with its stack and returns the
// reason the events concerned carry.
func (s *Sender) panicked(stage string, v any) string {
	s.logger().Error("integration panicked",
		slog.String("destination", s.Name),
		slog.String("stage", stage),
		slog.String("panic", fmt.Sprint(v)),
		slog.String("stack", string(debug.Stack())))
	return fmt.Sprintf("integration panicked: %v (in %s)", v, stage)
}

// do performs req and records the outcome of each event it carries in out.
func (s *Sender) do(ctx context.Context, d Destination, req *Request, out []SendResult) {
	for _, i := range req.Events {
		if i < 0 || i >= len(out) {
			s.logger().Error("integration bug: request carries an event index out of range",
				slog.String("destination", s.Name), slog.Int("index", i), slog.Int("events", len(out)))
			return
		}
	}
	resp, err := s.roundTrip(ctx, req)
	if err != nil {
		reason := transportReason(err, s.Client.Timeout)
		for _, i := range req.Events {
			out[i] = SendResult{Result: Result{Outcome: Retryable, Reason: reason}, Request: req}
		}
		return
	}
	results, reason := s.classify(d, req, resp)
	if reason == "" && len(results) != len(req.Events) {
		reason = fmt.Sprintf("integration bug: classify gave %d outcomes for a request carrying %d events",
			len(results), len(req.Events))
		s.logger().Error(reason, slog.String("destination", s.Name))
	}
	if reason != "" {
		for _, i := range req.Events {
			out[i] = SendResult{
				Result:   Result{Outcome: Retryable, Reason: reason, StatusCode: resp.StatusCode},
				Request:  req,
				Response: resp,
			}
		}
		return
	}
	for j, i := range req.Events {
		out[i] = SendResult{Result: results[j], Request: req, Response: resp}
	}
}

// roundTrip performs req and reads the start of the response body. An
// error is a transport error, or a request net/http cannot build.
func (s *Sender) roundTrip(ctx context.Context, req *Request) (*Response, error) {
	var body io.Reader
	if len(req.Body) > 0 {
		body = bytes.NewReader(req.Body)
	}
	method := req.Method
	if method == "" {
		method = http.MethodPost
	}
	hreq, err := http.NewRequestWithContext(ctx, method, req.URL, body)
	if err != nil {
		return nil, &requestError{err}
	}
	// The integration built the header for this attempt only, so net/http
	// may use it as is; copying it would cost an allocation per value.
	if req.Header != nil {
		hreq.Header = req.Header
	}
	hresp, err := s.Client.Do(hreq)
	if err != nil {
		return nil, err
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	resp := &Response{StatusCode: hresp.StatusCode, Header: hresp.Header, ReceivedAt: now()}
	resp.Body = readBody(hresp.Body, hresp.ContentLength, s.maxBody())
	return resp, nil
}

func (s *Sender) maxBody() int {
	if s.MaxBody > 0 {
		return s.MaxBody
	}
	return DefaultMaxBody
}

func (s *Sender) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// bodyBufs holds read buffers of DefaultMaxBody bytes for responses of
// unknown length, so that a chunked "OK" does not cost a 64 KB allocation.
var bodyBufs = sync.Pool{New: func() any {
	b := make([]byte, DefaultMaxBody)
	return &b
}}

// readBody reads at most max bytes of r, drains some more so that the
// connection can be reused, and closes r. A read error ends the body early:
// the status code has already been received and is what counts.
func readBody(r io.ReadCloser, length int64, max int) []byte {
	defer r.Close()
	var body []byte
	if length >= 0 && length <= int64(max) {
		// Known and small: one allocation of the exact size.
		if length > 0 {
			body = make([]byte, length)
			n, _ := io.ReadFull(r, body)
			body = body[:n]
		}
	} else {
		bp := bodyBufs.Get().(*[]byte)
		buf := *bp
		if cap(buf) < max {
			buf = make([]byte, max)
		}
		n, _ := io.ReadFull(r, buf[:max])
		if n > 0 {
			body = bytes.Clone(buf[:n])
		}
		bodyBufs.Put(bp)
	}
	_, _ = io.CopyN(io.Discard, r, drainLimit)
	return body
}

// requestError is a request net/http refused to build: a bug in the
// integration or a bad setting, not a transport failure.
type requestError struct{ err error }

func (e *requestError) Error() string        { return "invalid request: " + e.err.Error() }
func (e *requestError) Unwrap() error        { return e.err }
func (e *requestError) Is(target error) bool { return target == ErrInvalidRequest }

// transportReason describes a failed round trip in words a user can act
// on, without the URL (its query string may hold an API key).
func transportReason(err error, timeout time.Duration) string {
	var (
		reqErr  *requestError
		addrErr *AddressError
		dnsErr  *net.DNSError
		opErr   *net.OpError
		netErr  net.Error
	)
	switch {
	case errors.As(err, &reqErr):
		return "integration built an " + reqErr.Error()
	case errors.As(err, &addrErr):
		return addrErr.Error()
	case errors.As(err, &dnsErr) && !dnsErr.IsTimeout:
		if dnsErr.IsNotFound {
			return "DNS: no such host " + dnsErr.Name
		}
		return "DNS lookup of " + dnsErr.Name + " failed: " + dnsErr.Err
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		if timeout > 0 {
			return "timeout: no response within " + timeout.String()
		}
		return "timeout: no response in time"
	case errors.Is(err, context.Canceled):
		return "canceled before the destination answered (fanout stopping?)"
	case errors.Is(err, syscall.ECONNREFUSED):
		if errors.As(err, &opErr) && opErr.Addr != nil {
			return "connection refused by " + opErr.Addr.String()
		}
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by the destination"
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	return "connection error: " + err.Error()
}

// ClassifyStatus is the default response classifier:
//
//   - 2xx: Delivered;
//   - 408, 429 and 5xx except 501 and 505: Retryable, with the Retry-After
//     the destination gave, measured from now;
//   - anything else (other 4xx, 501 Not Implemented, 505 HTTP Version Not
//     Supported, and 3xx since redirects are not followed): Rejected, as
//     sending the same request again gets the same answer.
//
// The reason names the status and quotes the start of the body.
func ClassifyStatus(resp *Response, now time.Time) Result {
	code := resp.StatusCode
	switch {
	case code >= 200 && code <= 299:
		return Result{Outcome: Delivered, StatusCode: code}
	case RetryableStatus(code):
		return Result{
			Outcome:    Retryable,
			Reason:     StatusReason(code, resp.Body),
			StatusCode: code,
			RetryAfter: ParseRetryAfter(resp.Header, now),
		}
	case code >= 300 && code <= 399:
		reason := StatusReason(code, nil) + ": redirects are not followed"
		if loc := resp.Header.Get("Location"); loc != "" {
			reason += "; point the destination at " + loc
		}
		return Result{Outcome: Rejected, Reason: reason, StatusCode: code}
	}
	return Result{Outcome: Rejected, Reason: StatusReason(code, resp.Body), StatusCode: code}
}

// RetryableStatus reports whether an HTTP status code says that the same
// request may succeed later: 408, 429, and 5xx except 501 and 505, which
// say the server will never handle it.
func RetryableStatus(code int) bool {
	switch {
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests:
		return true
	case code == http.StatusNotImplemented, code == http.StatusHTTPVersionNotSupported:
		return false
	}
	return code >= 500 && code <= 599
}

// StatusReason formats a reason for a non-2xx answer: the status code, its
// text and the start of the body, on one line, such as
// `HTTP 400 Bad Request: {"error":"email is required"}`.
func StatusReason(code int, body []byte) string {
	var b strings.Builder
	b.Grow(32 + snippetLen)
	b.WriteString("HTTP ")
	b.WriteString(strconv.Itoa(code))
	if text := http.StatusText(code); text != "" {
		b.WriteByte(' ')
		b.WriteString(text)
	}
	if s := Snippet(body, snippetLen); s != "" {
		b.WriteString(": ")
		b.WriteString(s)
	}
	return b.String()
}

// Snippet returns the start of body for a reason: at most max bytes of
// valid UTF-8, runs of white space (newlines included) folded into one
// space, "..." appended when cut.
func Snippet(body []byte, max int) string {
	body = bytes.TrimSpace(body)
	var b strings.Builder
	space := false
	for len(body) > 0 {
		r, size := utf8.DecodeRune(body)
		switch {
		case r == utf8.RuneError && size <= 1:
			r = '\uFFFD'
		case r == ' ' || r == '\n' || r == '\r' || r == '\t':
			space = true
			body = body[size:]
			continue
		}
		if space {
			if b.Len()+1 > max {
				break
			}
			b.WriteByte(' ')
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
		body = body[size:]
	}
	if len(body) > 0 {
		b.WriteString("...")
	}
	return b.String()
}

// Fill returns n copies of r: the outcome of every event of a request the
// destination answered as a whole (an auth failure, a rate limit, a batch
// refused for its envelope).
func Fill(n int, r Result) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// RetryUnresolved turns every Delivered result in out into r: for a batch
// answer that reports errors without naming the events they concern (Braze,
// HubSpot, Customer.io), so that an event the destination may not have taken
// is sent again rather than counted delivered. Results already rejected keep
// their reason. Integrations pass the event's messageId as the idempotency
// key, which makes sending one again safe.
func RetryUnresolved(out []Result, r Result) {
	for i := range out {
		if out[i].Outcome == Delivered {
			out[i] = r
		}
	}
}

// ParseRateLimitReset reads the X-RateLimit-Reset header as a Unix time in
// seconds (Braze's and Intercom's meaning; not the delay in seconds of the
// IETF RateLimit-Reset draft) and returns how long from now until then. It
// returns 0 when the header is absent, malformed or in the past.
func ParseRateLimitReset(h http.Header, now time.Time) time.Duration {
	n, err := strconv.ParseInt(strings.TrimSpace(h.Get("X-RateLimit-Reset")), 10, 64)
	if err != nil {
		return 0
	}
	if d := time.Unix(n, 0).Sub(now); d > 0 {
		return d
	}
	return 0
}

// ParseRetryAfter reads the Retry-After header: a number of seconds or an
// HTTP date, the latter measured from now. It returns 0 when the header is
// absent, malformed or in the past. A value too large for a Duration is
// clamped to the largest one; capping the wait is the caller's policy.
func ParseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			var numErr *strconv.NumError
			if errors.As(err, &numErr) && numErr.Err == strconv.ErrRange {
				return math.MaxInt64
			}
			return 0
		}
		if n > math.MaxInt64/uint64(time.Second) {
			return math.MaxInt64
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	if d := t.Sub(now); d > 0 {
		return d
	}
	return 0
}
