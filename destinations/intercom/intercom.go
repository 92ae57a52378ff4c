// Package intercom creates and updates Intercom contacts from identify
// calls and records data events from track calls, through the REST API.
//
// The formats come from Intercom's public developer documentation, for
// the API version 2.11 that api_version defaults to:
//
//   - Create a contact,
//     https://developers.intercom.com/docs/references/2.11/rest-api/api.intercom.io/contacts/createcontact
//     (POST /contacts with role, external_id, email, name, phone, avatar,
//     signed_up_at, custom_attributes; 409 when a matching contact
//     exists);
//   - Search contacts,
//     https://developers.intercom.com/docs/references/2.11/rest-api/api.intercom.io/contacts/searchcontacts
//     (POST /contacts/search with a query on external_id and email);
//   - Update a contact,
//     https://developers.intercom.com/docs/references/2.11/rest-api/api.intercom.io/contacts/updatecontact
//     (PUT /contacts/{id});
//   - Submit a data event,
//     https://developers.intercom.com/docs/references/2.11/rest-api/api.intercom.io/data-events/createdataevent
//     (POST /events with event_name, created_at, user_id or email,
//     metadata; 202 Accepted; metadata values are flat, at most 10 keys; a
//     monetary amount is {amount in cents, currency});
//   - Error codes,
//     https://developers.intercom.com/docs/references/2.11/rest-api/errors/error-codes,
//     and HTTP responses,
//     https://developers.intercom.com/docs/references/2.11/rest-api/errors/http-responses
//     (the error.list body, {"type": "error.list", "errors": [{"code",
//     "message"}]}; 401 unauthorized, 404 not found, 409 conflict, 422 and
//     400 validation errors);
//   - Rate limiting,
//     https://developers.intercom.com/docs/references/2.11/rest-api/errors/rate-limiting
//     (429 with X-RateLimit-Limit, X-RateLimit-Remaining and
//     X-RateLimit-Reset, a Unix time; the limits are counted in 10-second
//     windows, "Exceeded rate limit of 167 in 10_seconds");
//   - Authentication,
//     https://developers.intercom.com/docs/build-an-integration/learn-more/authentication
//     (Authorization: Bearer <access token>), and Update your API version,
//     https://developers.intercom.com/docs/build-an-integration/learn-more/rest-apis/update-your-api-version
//     (the Intercom-Version header).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Intercom has no upsert, so an identify call first searches for the
// contact by external_id (the userId) or email, in Transform. A contact
// whose external_id is the userId is updated with PUT /contacts/{id};
// failing that, one with the email and no external_id of its own is; else
// a contact with role user is created with POST /contacts. The contact
// carries the email, name, phone, avatar and signed_up_at that the trait
// helpers read, and the traits the custom_attributes setting maps (the
// attributes must exist in Intercom). Retrying an identify searches again,
// so it updates what the first attempt created.
//
// A track call becomes POST /events with the event name, created_at (the
// event's timestamp, in seconds), user_id (else email), and at most 10
// metadata keys: the revenue helpers' amount first, as a monetary amount
// named price, then string, number and boolean properties in name order.
// Other properties, and those past the tenth, are left out. Intercom has
// no idempotency key for events, but "may detect and ignore duplicate
// events" and answers 202 to them without an error (Event de-duplication,
// https://developers.intercom.com/docs/references/1.1/rest-api/data-events/event-de-duplication);
// Event Limits, Troubleshooting and F.A.Q,
// https://www.intercom.com/help/en/articles/5245634-event-limits-troubleshooting-and-f-a-q,
// says which: two events with the same name, created_at, user and
// workspace are the same event, and only the first is stored. A retry
// sends all of those unchanged. With the identify path's search before
// every write, that makes Integration.Deduplicates true.
//
// # Outcomes
//
// 2xx is delivered. 401 rejects with the setting to check; 403 likewise
// (the app lacks a permission). 404 on an event rejects it: no user has
// that user_id or email (an identify call must come first). 409 on a
// create means the contact appeared since the search: retried, so that
// the next search finds and updates it. 400 and 422 reject with
// Intercom's messages. 429 is retried after a Retry-After if one is
// given, else X-RateLimit-Reset, else RateLimitWindow (when the reset is
// missing or already past); 5xx is retried.
package intercom

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// RateLimitWindow is the period Intercom spreads its rate limits over:
// the wait after a 429 whose X-RateLimit-Reset is missing or past.
const RateLimitWindow = 10 * time.Second

// MaxMetadataKeys is the most metadata keys Intercom keeps on an event.
const MaxMetadataKeys = 10

// Integration is the Intercom integration.
var Integration = &destinations.Integration{
	Type: "intercom",
	Settings: destinations.Schema{
		{
			Name:        "access_token",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The app's access token (Developer Hub > your app > Authentication). It needs the read and write users and events permissions.",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Default:     "https://api.intercom.io",
			Description: "The workspace's API host: https://api.intercom.io (US), https://api.eu.intercom.io (EU) or https://api.au.intercom.io (Australia), or a proxy or test server.",
		},
		{
			Name:        "api_version",
			Type:        destinations.String,
			Default:     "2.11",
			Description: "The API version sent as the Intercom-Version header.",
		},
		{
			Name:        "custom_attributes",
			Type:        destinations.StringMap,
			Description: "Maps trait names to contact custom attributes: {plan: plan_tier}. The attribute must exist in Intercom (Settings > Data > People).",
		},
	},
	EventTypes:   []string{event.Identify, event.Track},
	Deduplicates: true,
	New:          New,
}

// destination is one configured Intercom workspace.
type destination struct {
	base   string
	header http.Header
	attrs  map[string]string
	api    *destinations.Sender // the requests outside the Plan
	now    func() time.Time
}

var _ destinations.Destination = (*destination)(nil)

// New builds an Intercom destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	return newDestination(cfg, time.Now)
}

func newDestination(cfg destinations.Config, now func() time.Time) (*destination, error) {
	s := cfg.Settings
	base := s.String("api_url")
	if base == "" {
		base = "https://api.intercom.io"
	}
	if err := destinations.CheckURL("api_url", base); err != nil {
		return nil, err
	}
	version := s.String("api_version")
	if version == "" {
		version = "2.11"
	}
	if _, err := strconv.ParseFloat(version, 64); err != nil && version != "Unstable" {
		return nil, fmt.Errorf("api_version: expected a version such as 2.11, found %q", version)
	}
	d := &destination{
		base: strings.TrimRight(base, "/"),
		api:  cfg.Sender(now),
		now:  now,
		header: http.Header{
			"Authorization":    {"Bearer " + s.String("access_token")},
			"Intercom-Version": {version},
			"Accept":           {"application/json"},
			"Content-Type":     {"application/json"},
		},
	}
	d.attrs = s.StringMap("custom_attributes")
	return d, nil
}

// request builds a request with the destination's headers. Each gets its
// own copy: net/http may use a request's header as it is.
func (d *destination) request(method, path string, body []byte, i int) *destinations.Request {
	return &destinations.Request{Method: method, URL: d.base + path, Header: d.header.Clone(), Body: body, Events: []int{i}}
}

// Transform makes one request per event (a search first for identify calls).
func (d *destination) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	for i := range events {
		typ := events[i].Type
		if typ != event.Identify && typ != event.Track {
			b.Unsupported(i, "Intercom takes identify and track calls, not "+typ)
			continue
		}
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		if typ == event.Track {
			body, reason := eventBody(m)
			if reason != "" {
				b.Reject(i, reason)
				continue
			}
			b.Add(d.request(http.MethodPost, "/events", body, i))
			continue
		}
		d.identify(ctx, i, m, &b)
	}
	return b.Plan, nil
}

// identify plans the create or update of one identify call's contact.
func (d *destination) identify(ctx context.Context, i int, m map[string]any, b *plan.Builder) {
	userID, email := traits.UserID(m), traits.Email(m)
	if userID == "" && email == "" {
		b.Reject(i, "the identify call has neither userId nor an email trait; Intercom needs one of them (external_id or email) for a user")
		return
	}
	c := d.contact(m)
	body, err := json.Marshal(c)
	if err != nil {
		b.Reject(i, "the contact cannot be encoded: "+err.Error())
		return
	}
	id, r := d.search(ctx, userID, email)
	if r != nil {
		b.Plan.Results = setResult(b.Plan.Results, i, *r)
		return
	}
	if id != "" {
		b.Add(d.request(http.MethodPut, "/contacts/"+url.PathEscape(id), body, i))
		return
	}
	b.Add(d.request(http.MethodPost, "/contacts", body, i))
}

func setResult(results map[int]destinations.Result, i int, r destinations.Result) map[int]destinations.Result {
	if results == nil {
		results = map[int]destinations.Result{}
	}
	results[i] = r
	return results
}

// contact is the body of a create or update.
type contact struct {
	Role             string         `json:"role"`
	ExternalID       string         `json:"external_id,omitempty"`
	Email            string         `json:"email,omitempty"`
	Name             string         `json:"name,omitempty"`
	Phone            string         `json:"phone,omitempty"`
	Avatar           string         `json:"avatar,omitempty"`
	SignedUpAt       int64          `json:"signed_up_at,omitempty"`
	CustomAttributes map[string]any `json:"custom_attributes,omitempty"`
}

func (d *destination) contact(m map[string]any) contact {
	c := contact{
		Role:       "user",
		ExternalID: traits.UserID(m),
		Email:      traits.Email(m),
		Name:       traits.Name(m),
		Phone:      traits.Phone(m),
		Avatar:     traits.Avatar(m),
	}
	if t, ok := traits.CreatedAt(m); ok {
		c.SignedUpAt = t.Unix()
	}
	t := traits.Traits(m)
	for trait, attr := range d.attrs {
		if v, ok := t[trait]; ok && v != nil {
			if c.CustomAttributes == nil {
				c.CustomAttributes = map[string]any{}
			}
			c.CustomAttributes[attr] = v
		}
	}
	return c
}

// searchAnswer is the body of a contacts search.
type searchAnswer struct {
	Data []struct {
		ID         string `json:"id"`
		ExternalID string `json:"external_id"`
		Email      string `json:"email"`
		Role       string `json:"role"`
	} `json:"data"`
}

// search finds the contact to update: the one whose external_id is userID,
// else a user with email and no external_id. An empty id means none; a
// non-nil Result is the event's outcome when the search failed.
func (d *destination) search(ctx context.Context, userID, email string) (string, *destinations.Result) {
	var filters []map[string]any
	if userID != "" {
		filters = append(filters, map[string]any{"field": "external_id", "operator": "=", "value": userID})
	}
	if email != "" {
		filters = append(filters, map[string]any{"field": "email", "operator": "=", "value": email})
	}
	query := filters[0]
	if len(filters) > 1 {
		query = map[string]any{"operator": "OR", "value": filters}
	}
	body, _ := json.Marshal(map[string]any{"query": query})
	resp, err := d.api.Do(ctx, &destinations.Request{Method: http.MethodPost, URL: d.base + "/contacts/search", Header: d.header.Clone(), Body: body})
	if errors.Is(err, destinations.ErrInvalidRequest) {
		return "", &destinations.Result{Outcome: destinations.Rejected, Reason: "api_url: cannot build the search request: " + err.Error()}
	}
	if err != nil {
		return "", &destinations.Result{Outcome: destinations.Retryable, Reason: "Intercom contact search: " + err.Error()}
	}
	raw := resp.Body
	if resp.StatusCode != http.StatusOK {
		r := classify(false, resp)
		r.Reason = "Intercom contact search: " + r.Reason
		return "", &r
	}
	var a searchAnswer
	if err := json.Unmarshal(raw, &a); err != nil {
		return "", &destinations.Result{Outcome: destinations.Retryable, StatusCode: resp.StatusCode,
			Reason: "Intercom contact search answered a body that is not its JSON: " + destinations.Snippet(raw, 200)}
	}
	for _, c := range a.Data {
		if userID != "" && c.ExternalID == userID {
			return c.ID, nil
		}
	}
	for _, c := range a.Data {
		if email != "" && strings.EqualFold(c.Email, email) && c.ExternalID == "" && c.Role == "user" {
			return c.ID, nil
		}
	}
	return "", nil
}

// dataEvent is the body of POST /events.
type dataEvent struct {
	EventName string         `json:"event_name"`
	CreatedAt int64          `json:"created_at"`
	UserID    string         `json:"user_id,omitempty"`
	Email     string         `json:"email,omitempty"`
	Metadata  map[string]any `json:"metadata,omitempty"`
}

// eventBody encodes a track call, or says why it cannot go.
func eventBody(m map[string]any) ([]byte, string) {
	e := dataEvent{EventName: traits.EventName(m), UserID: traits.UserID(m)}
	if e.EventName == "" {
		return nil, "the track call has no event name"
	}
	if e.UserID == "" {
		e.Email = traits.Email(m)
		if e.Email == "" {
			return nil, "the track call has neither userId nor an email; Intercom needs one to find the user"
		}
	}
	ts, ok := traits.Timestamp(m)
	if !ok {
		return nil, "the event has no readable timestamp, which Intercom needs as created_at"
	}
	e.CreatedAt = ts.Unix()
	e.Metadata = metadata(m)
	body, err := json.Marshal(e)
	if err != nil {
		return nil, "the event cannot be encoded: " + err.Error()
	}
	return body, ""
}

// metadata picks at most MaxMetadataKeys flat values (see the package doc).
func metadata(m map[string]any) map[string]any {
	md := map[string]any{}
	if r, ok := traits.Revenue(m); ok {
		currency := traits.Currency(m)
		if currency == "" {
			currency = "USD"
		}
		md["price"] = map[string]any{"amount": int64(math.Round(r * 100)), "currency": strings.ToLower(currency)}
	}
	props := traits.Properties(m)
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if len(md) >= MaxMetadataKeys {
			break
		}
		if _, taken := md[k]; taken {
			continue
		}
		switch v := props[k].(type) {
		case string, json.Number, bool:
			md[k] = v
		}
	}
	if len(md) == 0 {
		return nil
	}
	return md
}

// errorList is Intercom's error body.
type errorList struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

func (e errorList) String() string {
	parts := make([]string, 0, len(e.Errors))
	for _, x := range e.Errors {
		parts = append(parts, strings.TrimSpace(x.Code+" "+x.Message))
	}
	return strings.Join(parts, "; ")
}

// Classify reads the answer to a contact or event request (see the
// package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	r := classify(strings.HasSuffix(req.URL, "/events"), resp)
	return destinations.Fill(len(req.Events), r)
}

const checkToken = "check access_token (Developer Hub > your app > Authentication), and that api_url is the workspace's region"

// classify classifies one answer; isEvent says it answers POST /events.
func classify(isEvent bool, resp *destinations.Response) destinations.Result {
	code := resp.StatusCode
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	var e errorList
	msg := destinations.Snippet(resp.Body, 200)
	if json.Unmarshal(resp.Body, &e) == nil && len(e.Errors) > 0 {
		msg = e.String()
	}
	switch code {
	case http.StatusUnauthorized:
		r.Reason = "Intercom refused the access token (" + msg + "): " + checkToken
	case http.StatusForbidden:
		r.Reason = "Intercom refused the request (" + msg + "): the access token's app lacks a permission; grant it read and write users and events in the Developer Hub"
	case http.StatusNotFound:
		if isEvent {
			r.Reason = "Intercom has no user with this event's user_id or email (" + msg + "); send an identify call for the user first"
		} else {
			r.Reason = "Intercom has no such contact (" + msg + ")"
		}
	case http.StatusConflict:
		r = destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "Intercom already has a contact matching this one (" + msg + "); the retry searches again and updates it"}
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		r.Reason = "Intercom refused the data (" + msg + ")"
	case http.StatusTooManyRequests:
		r.Reason = "Intercom rate limit (" + msg + ")"
		// ClassifyStatus read a Retry-After, which comes first.
		if r.RetryAfter == 0 {
			r.RetryAfter = destinations.ParseRateLimitReset(resp.Header, resp.ReceivedAt)
		}
		if r.RetryAfter == 0 {
			r.RetryAfter = RateLimitWindow
		}
	}
	return r
}
