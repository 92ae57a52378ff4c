// Package destinations is the integration framework: what an integration
// declares (settings schema, supported event types, batch limits), how its
// transform and response classifier are driven, and the outcome of each
// event. Each integration lives in its own package below this one.
package destinations

import (
	"context"
	"net/http"
	"time"

	"github.com/fanout/fanout/internal/event"
	"golang.org/x/time/rate"
)

// Integration describes one type of destination, such as "webhook".
type Integration struct {
	// Type is the name used in the configuration file's `type` key and in the
	// `integrations` object of events. Lower case, no spaces.
	Type string
	// Settings lists the settings a configured destination of this type takes.
	Settings Schema
	// EventTypes lists the call types the integration takes (event.Track, ...).
	// Empty means all of them. Others end as Unsupported without a request.
	EventTypes []string
	// Batch limits how many events one Transform call receives. The zero
	// value means one event per call.
	Batch BatchLimits
	// Deduplicates says whether the API drops a repeated event on its own
	// (by the idempotency key named in the package doc). Where it does not,
	// a retry of an ambiguous failure (a timeout or 5xx on a batch) may
	// count an event twice; the engine counts those retries as a risk of
	// duplicates.
	Deduplicates bool
	// New builds the destination for one configured instance. Settings have
	// already been validated against Settings, defaults filled in.
	New func(cfg Config) (Destination, error)
}

// BatchLimits bounds the batches the delivery engine hands an integration.
type BatchLimits struct {
	// MaxEvents is the largest number of events per batch; 0 or 1 means no batching.
	MaxEvents int
	// MaxBytes bounds the summed payload size of a batch; 0 means no bound.
	MaxBytes int
}

// Config is what an integration is built from.
type Config struct {
	// Name is the configured destination's name.
	Name string
	// Settings are the validated settings, keyed by field name.
	Settings Settings
	// Client is the HTTP client the integration must use for every request:
	// it carries the timeout and the outbound address guard.
	Client *http.Client
	// Limiter is the destination's `rate_limit` (NewLimiter), which the
	// delivery engine takes from for each request of a Plan; nil means
	// none. The requests an integration makes itself take from it too,
	// through Sender.Do (Config.Sender).
	Limiter *rate.Limiter
}

// Sender returns the Sender for the requests the integration makes itself,
// outside its Plan (an OAuth token, a lookup before the write, a
// validation call): Do sends them through Client within Limiter, and
// stamps their answers with now (nil means time.Now). A nil Client
// means http.DefaultClient.
func (c Config) Sender(now func() time.Time) *Sender {
	client := c.Client
	if client == nil {
		client = http.DefaultClient
	}
	return &Sender{Client: client, Name: c.Name, Limiter: c.Limiter, Now: now}
}

// NewLimiter returns the limiter of a destination's `rate_limit`, in
// requests per second, or nil when it is 0 (no limit). The burst is a
// tenth of a second's requests, at least one, so that a destination is
// not sent a second's worth at once.
func NewLimiter(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(1, int(perSecond/10)))
}

// Destination is one configured destination: it turns events into HTTP
// requests and decides each event's outcome from the response.
type Destination interface {
	// Transform builds the requests that carry events. Every event is either
	// carried by exactly one request (listed in Request.Events) or given its
	// outcome directly in Plan.Results (for example unsupported or rejected
	// because a required field is missing).
	Transform(ctx context.Context, events []event.Event) (Plan, error)
	// Classify returns the outcome of each event that req carried, in the
	// order of req.Events, given the destination's response.
	Classify(req *Request, resp *Response) []Result
}

// Batcher is implemented by a Destination whose batch limits depend on its
// settings (the webhook's `batch` setting, for example). The delivery engine
// uses BatchLimits over Integration.Batch when a Destination implements it.
type Batcher interface {
	BatchLimits() BatchLimits
}

// Plan is the output of Transform.
type Plan struct {
	Requests []*Request
	// Results holds outcomes decided without a request, by event index.
	Results map[int]Result
}

// Request is one HTTP request to the destination's API.
type Request struct {
	Method string
	URL    string
	Header http.Header
	Body   []byte
	// Events are the indexes, in the batch given to Transform, of the events
	// this request carries.
	Events []int
}

// PostJSON returns a POST request of body, a JSON document, to url,
// carrying the events at indexes events of the batch; it sends no header
// but Content-Type.
func PostJSON(url string, body []byte, events []int) *Request {
	return &Request{
		Method: http.MethodPost,
		URL:    url,
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   body,
		Events: events,
	}
}

// Response is the destination's answer to a Request.
type Response struct {
	StatusCode int
	Header     http.Header
	// Body is the start of the response body: Send keeps at most
	// Sender.MaxBody bytes of it, so it may be cut short.
	Body []byte
	// ReceivedAt is when the response headers arrived. Classifiers measure
	// an HTTP-date Retry-After from it, so that tests control the clock.
	ReceivedAt time.Time
}

// Outcome is what became of one delivery attempt of one event.
type Outcome int

const (
	// Delivered: the destination accepted the event.
	Delivered Outcome = iota + 1
	// Retryable: the attempt failed in a way that may succeed later unchanged.
	Retryable
	// Rejected: the destination will never accept this event as it is.
	Rejected
	// Unsupported: the integration does not take this kind of event.
	Unsupported
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retryable:
		return "retryable"
	case Rejected:
		return "rejected"
	case Unsupported:
		return "unsupported"
	}
	return "unknown"
}

// Result is the outcome of one event's attempt.
type Result struct {
	Outcome Outcome
	// Reason says why, for anything but Delivered, in words a user can act
	// on. On a Delivered result it is a warning, usually empty: what the
	// event was delivered without ("delivered without properties not in
	// event_properties: plan"). The delivery issues group warnings under
	// the outcome "delivered" and the debugger shows them; the event counts
	// as delivered all the same.
	Reason string
	// StatusCode is the HTTP status the destination answered, 0 when none.
	StatusCode int
	// RetryAfter is how long the destination asked us to wait before the
	// queue's next request: a Retry-After header on any status, or a wait
	// the integration reads from the body (Marketo's 606, a documented
	// backoff schedule). 0 when it did not say. A Retryable result with a
	// wait pauses its queue that long, whatever the status.
	RetryAfter time.Duration
	// Quota marks an answer that says a quota is spent until it resets (a
	// daily limit): the queue pauses until RetryAfter from now or, when
	// RetryAfter is 0, until the next UTC midnight, and the attempt is not
	// counted against the job.
	Quota bool
	// Split asks for the event's batch to be sent again in halves, because
	// the API refused it as a whole without naming the bad item (413, or a
	// 400 whose errors name no input). The engine bisects until the bad
	// event is alone; an event alone that is still Split is Rejected.
	Split bool
	// Hold names the one key (a user) that the API throttles, not the
	// whole request: only this event waits RetryAfter (or the engine's
	// default wait), later events with the same HoldKey wait behind it,
	// and the rest of the queue goes on. Used with Retryable.
	Hold string
}

// HoldKeyer is implemented by a destination whose API throttles single
// users (Result.Hold): HoldKey returns the key an event is throttled by,
// so that the engine keeps a held user's later events behind the held one.
type HoldKeyer interface {
	HoldKey(e event.Event) string
}
