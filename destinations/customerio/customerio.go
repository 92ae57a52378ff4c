// Package customerio delivers people and events to Customer.io Journeys
// through its Track API: the v2 batch endpoint for identified people, and
// the v1 endpoints for the events v2 cannot carry.
//
// The formats come from Customer.io's public documentation:
//
//   - Journeys Track API, https://docs.customer.io/api/track/ (Basic
//     authentication with the workspace's site ID and Track API key; the
//     regional hosts track.customer.io and track-eu.customer.io; the
//     fair-use limit of 100 requests per second, answered with 429 above
//     it; the v1 operations: PUT /api/v1/customers/{identifier} with
//     attributes, POST /api/v1/customers/{identifier}/events and POST
//     /api/v1/events (Track an anonymous event) with name, type, data,
//     timestamp, anonymous_id and id, "an identifier used to deduplicate
//     events", which must be a ULID);
//   - Track v2 API, https://docs.customer.io/integrations/api/track/tag/track_v2/
//     (POST /api/v2/batch with {"batch": [...]} of person operations: type
//     person, identifiers {"id": ...}, action identify, event, page or
//     screen, name, id (the same deduplicating ULID), timestamp and
//     attributes; the request smaller than 500 KB and each operation at
//     most 32 KB; 200 with an empty object; 207 when some operations were
//     invalid, "all other requests are accepted", with errors of
//     batch_index, reason, field and message; 400 when the entire request
//     was malformed; 401);
//   - Invalid Track API Requests,
//     https://docs.customer.io/journeys/invalid-api-requests (400 Bad
//     Request with {"meta": {"error": "..."}} and the list of error
//     messages).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Calls with a userId are batched into POST /api/v2/batch, one person
// operation per event, the person named by {"id": userId}:
//
//   - identify: action identify, with the traits as attributes, email and
//     created_at (Unix seconds) read through the trait helpers,
//     anonymous_id so that Customer.io merges the person's anonymous events
//     into the profile, and timestamp, by which Customer.io orders
//     attribute updates sent close together;
//   - track, page, screen: action event, page (named by the page's URL, as
//     Customer.io expects) or screen, with the properties as attributes.
//
// A batch holds at most MaxBatchEvents operations and MaxBatchBytes bytes,
// so that fanout's requests stay well under the fair-use limit. Two kinds
// of event go alone through v1 instead, after the batches: an event
// without a userId, because v2 names a person by id, email, phone or
// cio_id only and anonymous events are documented for v1 alone (POST
// /api/v1/events with anonymous_id); and an operation larger than
// MaxOperationBytes, which v2 refuses and v1 takes (v1 event data may
// reach 100000 bytes), to PUT /api/v1/customers/{userId} or POST
// /api/v1/customers/{userId}/events.
//
// Every event carries id, derived from the messageId by EventID, so that
// a retried request is dropped by Customer.io as a duplicate; identify
// sets attributes, which a retry sets again to the same values. So
// Integration.Deduplicates is true: Customer.io deduplicates events by id.
//
// # Outcomes
//
// A 2xx answer to a batch is resolved per event: the operations its errors
// name by batch_index are rejected with Customer.io's reason, field and
// message; the others were accepted. An error that names no operation
// leaves unknown which operation it concerns: the operations not named
// are split (Result.Split), so that the engine sends them again in halves,
// which the ids make safe, until the one concerned is alone, and an
// operation alone is rejected with the error; a 207 without errors is
// split the same way. A 2xx body that is not JSON is retried. A 400 to a batch means
// Customer.io took none of it: the operations its errors name are
// rejected and the others retried without them; a 400 naming none splits
// the batch the same way, and rejects an operation alone. A 413 splits the
// batch too. A 2xx to a v1 request is delivered; a 400 is rejected with
// the body's meta.error.
//
// For both, 401 and 403 are rejected with the settings to check; 429 and
// 5xx are retried, with the Retry-After the API gives. A redirect (an EU
// workspace addressed in the US region is redirected) is rejected with the
// advice to set region.
package customerio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
	"github.com/oklog/ulid/v2"
)

// The limits of a v2 batch request. MaxBatchBytes and MaxOperationBytes
// are the documented 500 KB and 32 KB, read as the smaller 500,000 and
// 32,000 bytes. MaxBatchEvents is fanout's own, since Customer.io
// documents no count: it keeps a 207 that names every operation of a
// batch within the part of an answer Send reads
// (destinations.DefaultMaxBody), so that no failure goes unplaced.
const (
	MaxBatchEvents    = 200
	MaxBatchBytes     = 500_000
	MaxOperationBytes = 32_000
)

// batchPath is the path of the v2 batch endpoint.
const batchPath = "/api/v2/batch"

// Integration is the Customer.io integration.
var Integration = &destinations.Integration{
	Type: "customerio",
	Settings: destinations.Schema{
		{
			Name:        "site_id",
			Type:        destinations.String,
			Required:    true,
			Description: "The workspace's Site ID (Settings > Workspace Settings > API and Webhook Credentials > Tracking API Keys). The username of the Track API's Basic authentication.",
		},
		{
			Name:        "api_key",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The Track API key paired with site_id (same page). Not an App API key, which the Track API refuses.",
		},
		{
			Name:        "region",
			Type:        destinations.String,
			Default:     "us",
			Description: "The workspace's data center: us (track.customer.io) or eu (track-eu.customer.io). Shown on the account's Privacy page.",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Description: "Overrides the Track API base URL that region picks, for a proxy or a test server. Empty: by region.",
		},
	},
	EventTypes:   []string{event.Identify, event.Track, event.Page, event.Screen},
	Batch:        destinations.BatchLimits{MaxEvents: MaxBatchEvents, MaxBytes: MaxBatchBytes},
	Deduplicates: true,
	New:          New,
}

var regions = []destinations.Region{
	{Name: "us", URL: "https://track.customer.io"},
	{Name: "eu", URL: "https://track-eu.customer.io"},
}

// destination is one configured Customer.io workspace.
type destination struct {
	base string
	auth string
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Customer.io destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	base, err := s.RegionURL(regions)
	if err != nil {
		return nil, err
	}
	site, key := s.String("site_id"), s.String("api_key")
	if strings.Contains(site, ":") {
		return nil, fmt.Errorf("site_id: expected the Site ID alone, found a value with a colon")
	}
	for _, suffix := range []string{"/api/v1", "/api/v2"} {
		base = strings.TrimSuffix(base, suffix)
	}
	return &destination{
		base: base,
		auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(site+":"+key)),
	}, nil
}

// operation is one event as Customer.io records it, before it is encoded
// for a v2 batch (batchOperation) or a v1 endpoint (v1Request).
type operation struct {
	userID      string // "" for an anonymous event
	anonymousID string // the anonymous event's anonymousId
	action      string // identify, event, page or screen
	name        string
	id          string // EventID, for events
	timestamp   int64  // Unix seconds; 0 when the event has none
	attributes  map[string]any
}

// Transform turns each event into an operation, cuts those of identified
// people into v2 batches, and gives each of the others a v1 request.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var items []plan.Item
	var singles []*destinations.Request
	for i := range events {
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		var op operation
		var reason string
		switch events[i].Type {
		case event.Identify:
			op, reason = identify(m)
		case event.Track, event.Page, event.Screen:
			op, reason = track(events[i].MessageID, events[i].Type, m)
		default:
			b.Unsupported(i, "Customer.io takes identify, track, page and screen calls, not "+events[i].Type)
			continue
		}
		if reason != "" {
			b.Reject(i, reason)
			continue
		}
		if op.userID != "" {
			body, err := json.Marshal(op.batchOperation())
			if err != nil {
				b.Reject(i, "the event cannot be encoded: "+err.Error())
				continue
			}
			if len(body) <= MaxOperationBytes {
				items = append(items, plan.Item{Event: i, Body: body})
				continue
			}
		}
		req, reason := d.v1Request(op)
		if reason != "" {
			b.Reject(i, reason)
			continue
		}
		req.Events = []int{i}
		singles = append(singles, req)
	}
	const envelope = len(`{"batch":[]}`)
	for _, run := range plan.Batches(items, MaxBatchEvents, MaxBatchBytes, 1, envelope) {
		ops, idx := plan.JSONArray(run)
		body := make([]byte, 0, len(ops)+envelope)
		body = append(append(append(body, `{"batch":`...), ops...), '}')
		b.Add(&destinations.Request{
			Method: http.MethodPost,
			URL:    d.base + batchPath,
			Header: d.header(),
			Body:   body,
			Events: idx,
		})
	}
	for _, req := range singles {
		b.Add(req)
	}
	return b.Plan, nil
}

func (d *destination) header() http.Header {
	return http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}}
}

// identify builds the operation of an identify call.
func identify(m map[string]any) (operation, string) {
	id := traits.UserID(m)
	if id == "" {
		return operation{}, "the identify call has no userId, which Customer.io needs as the person's id (anonymous activity is merged in when the person is identified)"
	}
	attrs := map[string]any{}
	for k, v := range traits.Traits(m) {
		switch k {
		case "createdAt", "created_at", "email":
			// Set below from the trait helpers, in Customer.io's format.
		default:
			attrs[k] = v
		}
	}
	if e := traits.Email(m); e != "" {
		attrs["email"] = e
	}
	if t, ok := traits.CreatedAt(m); ok {
		attrs["created_at"] = t.Unix()
	}
	if a := traits.AnonymousID(m); a != "" {
		attrs["anonymous_id"] = a
	}
	op := operation{userID: id, action: "identify", attributes: attrs}
	if ts, ok := traits.Timestamp(m); ok {
		op.timestamp = ts.Unix()
	}
	return op, ""
}

// track builds the operation of a track, page or screen call.
func track(messageID, typ string, m map[string]any) (operation, string) {
	op := operation{action: "event", attributes: traits.Properties(m)}
	switch typ {
	case event.Track:
		op.name = traits.EventName(m)
		if op.name == "" {
			return operation{}, "the track call has no event name"
		}
	case event.Page:
		// Customer.io names a page view by the page's URL.
		op.action = "page"
		op.name = traits.String(traits.Get(m, "properties", "url"))
		if op.name == "" {
			op.name = traits.String(traits.Get(m, "context", "page", "url"))
		}
		if op.name == "" {
			op.name = traits.EventName(m)
		}
		if op.name == "" {
			return operation{}, "the page call has neither a URL (properties.url, context.page.url) nor a name"
		}
	case event.Screen:
		op.action = "screen"
		op.name = traits.EventName(m)
		if op.name == "" {
			return operation{}, "the screen call has no name"
		}
	}
	ts, ok := traits.Timestamp(m)
	if ok {
		op.timestamp = ts.Unix()
	}
	op.id = EventID(messageID, ts)
	if op.userID = traits.UserID(m); op.userID != "" {
		return op, ""
	}
	if op.anonymousID = traits.AnonymousID(m); op.anonymousID == "" {
		return operation{}, "the event has neither userId nor anonymousId, one of which Customer.io needs to attribute it"
	}
	return op, ""
}

// batchOperation is one element of a v2 batch: a person operation.
type batchOperation struct {
	Type        string            `json:"type"`
	Identifiers map[string]string `json:"identifiers"`
	Action      string            `json:"action"`
	Name        string            `json:"name,omitempty"`
	ID          string            `json:"id,omitempty"`
	Timestamp   int64             `json:"timestamp,omitempty"`
	Attributes  map[string]any    `json:"attributes,omitempty"`
}

func (op operation) batchOperation() batchOperation {
	return batchOperation{
		Type:        "person",
		Identifiers: map[string]string{"id": op.userID},
		Action:      op.action,
		Name:        op.name,
		ID:          op.id,
		Timestamp:   op.timestamp,
		Attributes:  op.attributes,
	}
}

// v1Event is the body of a v1 event request.
type v1Event struct {
	Name        string         `json:"name"`
	Type        string         `json:"type"`
	ID          string         `json:"id"`
	Timestamp   int64          `json:"timestamp,omitempty"`
	AnonymousID string         `json:"anonymous_id,omitempty"`
	Data        map[string]any `json:"data,omitempty"`
}

// v1Request builds the v1 request of op: PUT /api/v1/customers/{id} for
// an identify, POST /api/v1/customers/{id}/events for another operation of
// a person, POST /api/v1/events for an anonymous event.
func (d *destination) v1Request(op operation) (*destinations.Request, string) {
	method, path := http.MethodPost, "/api/v1/events"
	var body any
	if op.action == "identify" {
		method, path, body = http.MethodPut, "/api/v1/customers/"+url.PathEscape(op.userID), op.attributes
	} else {
		body = v1Event{Name: op.name, Type: op.action, ID: op.id, Timestamp: op.timestamp, AnonymousID: op.anonymousID, Data: op.attributes}
		if op.userID != "" {
			path = "/api/v1/customers/" + url.PathEscape(op.userID) + "/events"
		}
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, "the event cannot be encoded: " + err.Error()
	}
	return &destinations.Request{Method: method, URL: d.base + path, Header: d.header(), Body: data}, ""
}

// EventID returns the id of the event with messageID that happened at ts:
// Customer.io drops an event whose id it has seen, and takes only ULIDs. A
// messageId that is a ULID is used as is (upper-cased); any other becomes
// the ULID whose time part is ts in milliseconds and whose random part is
// the first 80 bits of the messageId's SHA-256, the same on every retry.
func EventID(messageID string, ts time.Time) string {
	if isULID(messageID) {
		return strings.ToUpper(messageID)
	}
	var id ulid.ULID
	if !ts.IsZero() && ts.UnixMilli() > 0 {
		// Within ulid.MaxTime: the mask keeps the 48 bits a ULID has.
		_ = id.SetTime(uint64(ts.UnixMilli()) & (1<<48 - 1))
	}
	sum := sha256.Sum256([]byte(messageID))
	_ = id.SetEntropy(sum[:10])
	return id.String()
}

// isULID reports whether s is a ULID (ulid.ParseStrict): 26 Crockford
// base32 characters, either case, whose first is at most 7 (the largest
// 128-bit value).
func isULID(s string) bool {
	_, err := ulid.ParseStrict(s)
	return err == nil
}

// answer is the body of a 207 or an error: v2's errors, or v1's
// meta.error.
type answer struct {
	Errors []opError `json:"errors"`
	Meta   struct {
		Error string `json:"error"`
	} `json:"meta"`
}

// opError is one of v2's errors. BatchIndex, in a batch's answer, is the
// position of the operation it concerns.
type opError struct {
	BatchIndex *int   `json:"batch_index"`
	Reason     string `json:"reason"`
	Field      string `json:"field"`
	Message    string `json:"message"`
}

func (e opError) String() string {
	s := e.Message
	switch {
	case s == "":
		s = e.Reason
	case e.Reason != "":
		s = e.Reason + ": " + s
	}
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	return s
}

// place sorts errs by the operation of a batch of n they name: named maps
// a position in the batch, which is also a position in req.Events, to its
// errors; unplaced are the errors that name none.
func place(errs []opError, n int) (named map[int][]string, unplaced []string) {
	named = map[int][]string{}
	for _, e := range errs {
		if e.BatchIndex == nil || *e.BatchIndex < 0 || *e.BatchIndex >= n {
			unplaced = append(unplaced, e.String())
			continue
		}
		named[*e.BatchIndex] = append(named[*e.BatchIndex], e.String())
	}
	return named, unplaced
}

// Classify reads the answer to a batch or a v1 request (see the package
// doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	batch := strings.HasSuffix(req.URL, batchPath)
	switch {
	case code >= 200 && code <= 299 && batch:
		return accepted(n, resp)
	case code == http.StatusBadRequest:
		return refused(n, batch, resp)
	case code == http.StatusRequestEntityTooLarge && batch && n > 1:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: destinations.StatusReason(code, resp.Body) + ": the batch is over Customer.io's 500 KB request limit; it is sent again in halves"})
	}
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	switch {
	case code == http.StatusUnauthorized, code == http.StatusForbidden:
		r.Reason += ": check site_id and api_key (a Track API key, from Settings > Workspace Settings > API and Webhook Credentials), and that region matches the workspace's data center"
	case code >= 300 && code <= 399:
		r.Reason += " (an EU workspace needs region: eu)"
	}
	return destinations.Fill(n, r)
}

// accepted resolves a 2xx answer to a batch of n operations per event.
func accepted(n int, resp *destinations.Response) []destinations.Result {
	code := resp.StatusCode
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
	body := bytes.TrimSpace(resp.Body)
	var a answer
	if len(body) > 0 && json.Unmarshal(body, &a) != nil {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: fmt.Sprintf("Customer.io answered %d with a body that is not its JSON answer: %s", code, destinations.Snippet(body, 200))})
	}
	if code == http.StatusMultiStatus && len(a.Errors) == 0 {
		reason := "Customer.io answered 207 (some operations were invalid) without saying which: " + destinations.Snippet(body, 200)
		if n == 1 {
			return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason})
		}
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: reason + "; the batch is sent again in halves to find them"})
	}
	named, unplaced := place(a.Errors, n)
	for j, errs := range named {
		out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: "Customer.io refused the event: " + strings.Join(errs, "; ")}
	}
	if len(unplaced) > 0 {
		// The operations not named may or may not have been taken: the
		// event ids make sending them again safe, in halves until the
		// one the errors concern is alone.
		r := destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: "Customer.io reported errors that name no operation (" + strings.Join(unplaced, "; ") + "): the batch is sent again in halves to find the operation concerned"}
		if n == 1 {
			r = destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
				Reason: "Customer.io refused the event: " + strings.Join(unplaced, "; ")}
		}
		destinations.RetryUnresolved(out, r)
	}
	return out
}

// refused resolves a 400 answer to a batch or a v1 request of n events.
func refused(n int, batch bool, resp *destinations.Response) []destinations.Result {
	code := resp.StatusCode
	var a answer
	_ = json.Unmarshal(resp.Body, &a)
	detail := a.Meta.Error
	if detail == "" && len(a.Errors) > 0 {
		parts := make([]string, len(a.Errors))
		for i, e := range a.Errors {
			parts[i] = e.String()
		}
		detail = strings.Join(parts, "; ")
	}
	all := destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: destinations.StatusReason(code, resp.Body)}
	switch {
	case detail != "" && batch:
		all.Reason = "Customer.io refused the batch: " + detail
	case detail != "":
		all.Reason = "Customer.io refused the event: " + detail
	}
	if !batch {
		return destinations.Fill(n, all)
	}
	named, _ := place(a.Errors, n)
	if len(named) == 0 {
		if n == 1 {
			return destinations.Fill(n, all)
		}
		// Customer.io took none of the batch and does not say which
		// operation is at fault: halves, until it is alone.
		all.Outcome, all.Split = destinations.Retryable, true
		all.Reason += " (the errors name no operation: the batch is sent again in halves to find the one refused)"
		return destinations.Fill(n, all)
	}
	// Customer.io took none of the batch: the operations its errors name
	// are refused, the others go again without them.
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
		Reason: "Customer.io refused the batch because of another event in it; this one was not taken and goes again without it"})
	for j, errs := range named {
		out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: "Customer.io refused the event: " + strings.Join(errs, "; ")}
	}
	return out
}
