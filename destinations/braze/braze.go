// Package braze delivers user attributes, custom events and purchases to
// Braze through the /users/track endpoint of its REST API.
//
// The formats come from Braze's public documentation:
//
//   - User track, https://www.braze.com/docs/api/endpoints/user_data/post_user_track/
//     (POST <rest endpoint>/users/track with Authorization: Bearer <REST API
//     key>; "attributes", "events" and "purchases" arrays of objects naming
//     the user by external_id or user_alias; 75 objects per request);
//   - API errors and responses, https://www.braze.com/docs/api/errors/
//     ({"message": "success"}; {"message": "success", "errors": [...]} when
//     some objects were invalid, the others being processed; a fatal
//     error's message; the 4XX and 5XX codes);
//   - Rate limits, https://www.braze.com/docs/api/api_limits/ (429, the
//     X-RateLimit-* headers, X-RateLimit-Reset in UTC epoch seconds; the
//     4 MB payload limit);
//   - API overview, https://www.braze.com/docs/api/basics/ (the instance's
//     REST endpoint, such as rest.iad-01.braze.com, and API key permissions).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Identify and track calls are batched into /users/track requests:
//
//   - identify: an attributes object with the standard attributes read
//     through the trait helpers (first_name, last_name, email, phone,
//     gender, dob, country, home_city) and the other traits as custom
//     attributes;
//   - track: an events object (name, time, properties); an "Order
//     Completed" call with a products array becomes one purchases object per
//     product (product_id, price, currency, quantity), as Braze records
//     purchases.
//
// The user is external_id = userId, or, without a userId, a user alias
// {alias_name: anonymousId, alias_label: "anonymous_id"} with
// _update_existing_only false so that Braze creates the alias-only user.
// A request carries at most 75 objects in all (the current limit; older
// workspaces may take 75 of each) and 4 MB; one event's objects are never
// split across requests, and a request carries the purchases of one order
// at most, so that the indexes of Braze's errors lead back to events. Braze has no idempotency key for /users/track: a
// retried request records its events again, so fanout retries only what
// Braze did not take.
//
// # Outcomes
//
// A 2xx with "message": "success" (or "queued", during maintenance) is
// delivered, except for the objects its "errors" array names by input_array
// and index: those events are rejected with Braze's error type, while the
// others were processed. A 2xx with any other message is a fatal error and
// rejects every event. 400 rejects with Braze's message; 401, 403 and 404
// reject with the settings to check; 429 is retried after X-RateLimit-Reset
// (or Retry-After); 5xx is retried.
package braze

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// The documented limits of a /users/track request.
const (
	MaxObjects = 75
	MaxBytes   = 4 << 20
)

// Integration is the Braze integration.
var Integration = &destinations.Integration{
	Type: "braze",
	Settings: destinations.Schema{
		{
			Name:        "rest_endpoint",
			Type:        destinations.String,
			Required:    true,
			Description: "The instance's REST endpoint, such as rest.iad-01.braze.com or https://rest.fra-01.braze.eu (Settings > APIs and Identifiers, or the API overview's instance table). A bare host means https.",
		},
		{
			Name:        "api_key",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "A REST API key with the users.track permission (Settings > APIs and Identifiers > API Keys).",
		},
		{
			Name:        "app_id",
			Type:        destinations.String,
			Description: "The app identifier events and purchases are recorded against. Empty: none, as the API allows.",
		},
	},
	EventTypes: []string{event.Identify, event.Track},
	Batch:      destinations.BatchLimits{MaxEvents: MaxObjects, MaxBytes: MaxBytes},
	New:        New,
}

// destination is one configured Braze workspace.
type destination struct {
	url   string
	auth  string
	appID string
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Braze destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	base := s.String("rest_endpoint")
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(u.Host, " /") {
		return nil, fmt.Errorf("rest_endpoint: expected the instance's REST endpoint, such as rest.iad-01.braze.com, found %q", s.String("rest_endpoint"))
	}
	if strings.HasPrefix(u.Host, "dashboard") {
		return nil, fmt.Errorf("rest_endpoint: expected the REST endpoint (rest.<instance>.braze.com), found the dashboard's address %q", u.Host)
	}
	return &destination{
		url:   strings.TrimSuffix(strings.TrimRight(base, "/"), "/users/track") + "/users/track",
		auth:  "Bearer " + s.String("api_key"),
		appID: s.String("app_id"),
	}, nil
}

// Arrays of a /users/track request, in the order Braze processes them.
const (
	attributes = "attributes"
	events     = "events"
	purchases  = "purchases"
)

// object is one encoded object of a request and the event it comes from.
type object struct {
	array string
	body  json.RawMessage
}

// encoded is one event's objects.
type encoded struct {
	event   int
	objects []object
	size    int
}

// Transform turns each event into its objects and cuts them into requests
// of at most MaxObjects objects and MaxBytes bytes, and one order.
func (d *destination) Transform(_ context.Context, evs []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var run []encoded
	count, size := 0, 0
	// A request carries the purchases of one order at most (see request).
	hasOrder := false
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		req, err := d.request(run)
		if err != nil {
			return err
		}
		b.Add(req)
		run, count, size, hasOrder = nil, 0, 0, false
		return nil
	}
	const envelope = 64 // the three array names and brackets
	for i := range evs {
		m, ok := b.Fields(i, &evs[i])
		if !ok {
			continue
		}
		var objs []object
		var reason string
		switch evs[i].Type {
		case event.Identify:
			objs, reason = d.identify(m)
		case event.Track:
			objs, reason = d.track(m)
		default:
			b.Unsupported(i, "Braze takes identify and track calls, not "+evs[i].Type)
			continue
		}
		if reason != "" {
			b.Reject(i, reason)
			continue
		}
		e := encoded{event: i, objects: objs}
		for _, o := range objs {
			e.size += len(o.body) + 1
		}
		if len(objs) > MaxObjects {
			b.Reject(i, fmt.Sprintf("the event makes %d Braze objects (one per product), more than the %d a request takes", len(objs), MaxObjects))
			continue
		}
		isOrder := objs[0].array == purchases
		if count+len(objs) > MaxObjects || (count > 0 && envelope+size+e.size > MaxBytes) || (isOrder && hasOrder) {
			if err := flush(); err != nil {
				return destinations.Plan{}, err
			}
		}
		run = append(run, e)
		hasOrder = hasOrder || isOrder
		count += len(objs)
		size += e.size
	}
	if err := flush(); err != nil {
		return destinations.Plan{}, err
	}
	return b.Plan, nil
}

// trackRequest is the body of a /users/track request.
type trackRequest struct {
	Attributes []json.RawMessage `json:"attributes,omitempty"`
	Events     []json.RawMessage `json:"events,omitempty"`
	Purchases  []json.RawMessage `json:"purchases,omitempty"`
}

// request builds the /users/track request of run. Its Events list the
// events of attributes objects, then those of events objects, then the
// order whose products are the purchases objects (Transform puts at most
// one in a request), so that Classify can tell which event an object of
// Braze's errors came from by counting (see layout).
func (d *destination) request(run []encoded) (*destinations.Request, error) {
	var body trackRequest
	var byAttr, byEvent, byPurchase []int
	for _, e := range run {
		for _, o := range e.objects {
			switch o.array {
			case attributes:
				body.Attributes = append(body.Attributes, o.body)
			case events:
				body.Events = append(body.Events, o.body)
			case purchases:
				body.Purchases = append(body.Purchases, o.body)
			}
		}
		switch e.objects[0].array {
		case attributes:
			byAttr = append(byAttr, e.event)
		case events:
			byEvent = append(byEvent, e.event)
		case purchases:
			byPurchase = append(byPurchase, e.event)
		}
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return &destinations.Request{
		Method: http.MethodPost,
		URL:    d.url,
		Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}},
		Body:   data,
		Events: append(append(byAttr, byEvent...), byPurchase...),
	}, nil
}

// user sets the user's identifier in obj, or says why there is none.
func user(m map[string]any, obj map[string]any) string {
	if id := traits.UserID(m); id != "" {
		obj["external_id"] = id
		return ""
	}
	if a := traits.AnonymousID(m); a != "" {
		obj["user_alias"] = map[string]string{"alias_name": a, "alias_label": "anonymous_id"}
		// Braze updates only existing users when a user alias is given,
		// unless told otherwise.
		obj["_update_existing_only"] = false
		return ""
	}
	return "the event has neither userId nor anonymousId, one of which Braze needs as external_id or user alias"
}

// genders maps the values users send to Braze's gender codes.
var genders = map[string]string{
	"m": "M", "male": "M", "man": "M",
	"f": "F", "female": "F", "woman": "F",
	"o": "O", "other": "O",
	"n": "N", "not applicable": "N",
	"p": "P", "prefer not to say": "P",
	"u": "U", "unknown": "U",
}

// mappedTraits are the traits carried under Braze's standard attributes,
// not also copied as custom attributes.
var mappedTraits = map[string]bool{
	"email": true, "firstName": true, "first_name": true, "lastName": true, "last_name": true,
	"phone": true, "gender": true, "birthday": true, "address": true, "city": true, "country": true,
	"name": true, "userId": true, "id": true,
}

// attributeFields are Braze's standard attributes for the usual traits.
var attributeFields = traits.ContactFields{
	Email: "email", FirstName: "first_name", LastName: "last_name", Phone: "phone",
	City: "home_city", Country: "country", Birthday: "dob",
}

// identify builds the attributes object of an identify call.
func (d *destination) identify(m map[string]any) ([]object, string) {
	obj := map[string]any{}
	for k, v := range traits.Traits(m) {
		if !mappedTraits[k] {
			obj[k] = v
		}
	}
	if reason := user(m, obj); reason != "" {
		return nil, reason
	}
	traits.Record(obj).PutContact(m, attributeFields)
	if g := traits.Gender(m); g != "" {
		if code, ok := genders[strings.ToLower(g)]; ok {
			obj["gender"] = code
		}
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return nil, "the identify call cannot be encoded: " + err.Error()
	}
	return []object{{array: attributes, body: body}}, ""
}

// brazeTime is the time format Braze documents (ISO 8601).
const brazeTime = "2006-01-02T15:04:05.000Z07:00"

// track builds the events object of a track call, or the purchases
// objects of an "Order Completed" call with products.
func (d *destination) track(m map[string]any) ([]object, string) {
	name := traits.EventName(m)
	if name == "" {
		return nil, "the track call has no event name"
	}
	ts, ok := traits.Timestamp(m)
	if !ok {
		return nil, "the event has no readable timestamp, which Braze needs as time"
	}
	props := traits.Properties(m)
	products, _ := props["products"].([]any)
	if name == "Order Completed" && len(products) > 0 {
		return d.purchases(m, ts, products)
	}
	obj := map[string]any{"name": name, "time": ts.UTC().Format(brazeTime)}
	if reason := user(m, obj); reason != "" {
		return nil, reason
	}
	if len(props) > 0 {
		obj["properties"] = props
	}
	if d.appID != "" {
		obj["app_id"] = d.appID
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return nil, "the track call cannot be encoded: " + err.Error()
	}
	return []object{{array: events, body: body}}, ""
}

// purchases builds one purchase object per product of an order.
func (d *destination) purchases(m map[string]any, ts time.Time, products []any) ([]object, string) {
	currency := traits.Currency(m)
	if currency == "" {
		currency = "USD"
	}
	orderID := traits.String(traits.Get(m, "properties", "order_id"))
	out := make([]object, 0, len(products))
	for n, p := range products {
		prod, _ := p.(map[string]any)
		id := traits.String(prod["product_id"])
		if id == "" {
			id = traits.String(prod["sku"])
		}
		price, ok := traits.Number(prod["price"])
		if id == "" || !ok {
			return nil, fmt.Sprintf("product %d of the order has no product_id (or sku) or no price, which Braze needs for a purchase", n)
		}
		qty := 1
		if q, ok := traits.Number(prod["quantity"]); ok && q >= 1 && q == math.Trunc(q) {
			qty = int(q)
		}
		obj := map[string]any{
			"product_id": id,
			"currency":   currency,
			"price":      price,
			"quantity":   qty,
			"time":       ts.UTC().Format(brazeTime),
		}
		if reason := user(m, obj); reason != "" {
			return nil, reason
		}
		props := map[string]any{}
		for k, v := range prod {
			switch k {
			case "product_id", "sku", "price", "quantity":
			default:
				props[k] = v
			}
		}
		if orderID != "" {
			props["order_id"] = orderID
		}
		if len(props) > 0 {
			obj["properties"] = props
		}
		if d.appID != "" {
			obj["app_id"] = d.appID
		}
		body, err := json.Marshal(obj)
		if err != nil {
			return nil, "the order cannot be encoded: " + err.Error()
		}
		out = append(out, object{array: purchases, body: body})
	}
	return out, ""
}

// answer is the body of a /users/track response.
type answer struct {
	Message *string           `json:"message"`
	Errors  []json.RawMessage `json:"errors"`
}

// minorError is one entry of "errors" in a successful answer.
type minorError struct {
	Type       string `json:"type"`
	InputArray string `json:"input_array"`
	Index      *int   `json:"index"`
}

// Classify reads a /users/track answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	var a answer
	parsed := json.Unmarshal(resp.Body, &a) == nil && a.Message != nil
	msg := ""
	if parsed {
		msg = *a.Message
	}
	switch {
	case code >= 200 && code <= 299:
		if !parsed {
			return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
				Reason: fmt.Sprintf("Braze answered %d with a body that is not its JSON answer: %s", code, destinations.Snippet(resp.Body, 200))})
		}
		if msg != "success" && msg != "queued" {
			return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
				Reason: fmt.Sprintf("Braze answered %d with a fatal error: %s", code, msg)})
		}
		return minorErrors(req, resp, a.Errors)
	case code == http.StatusTooManyRequests:
		r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
		r.RetryAfter = retryAfter(resp)
		return destinations.Fill(n, r)
	case code == http.StatusUnauthorized, code == http.StatusNotFound:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) +
				": check api_key (a REST API key from Settings > APIs and Identifiers > API Keys) and that rest_endpoint is the REST endpoint of the instance the key belongs to"})
	case code == http.StatusForbidden:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) +
				": give the API key the users.track permission, and allow fanout's address if the key has an IP allowlist"})
	case code == http.StatusBadRequest && parsed && msg != "":
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: "Braze refused the request: " + msg})
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

// minorErrors resolves a successful answer per event: the objects its
// errors name belong to rejected events, the others were processed.
func minorErrors(req *destinations.Request, resp *destinations.Response, errs []json.RawMessage) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
	if len(errs) == 0 {
		return out
	}
	owners, err := layout(req)
	if err != nil {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "integration bug: cannot read back the request to resolve Braze's errors: " + err.Error()})
	}
	var unplaced []string
	for _, raw := range errs {
		var e minorError
		if json.Unmarshal(raw, &e) != nil || e.Index == nil {
			unplaced = append(unplaced, destinations.Snippet(raw, 200))
			continue
		}
		objs := owners[e.InputArray]
		if *e.Index < 0 || *e.Index >= len(objs) {
			unplaced = append(unplaced, destinations.Snippet(raw, 200))
			continue
		}
		j := objs[*e.Index]
		reason := "Braze refused the " + strings.TrimSuffix(e.InputArray, "s") + " object: " + e.Type
		if prev := out[j]; prev.Outcome == destinations.Rejected {
			reason = prev.Reason + "; " + e.Type
		}
		out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason}
	}
	if len(unplaced) > 0 {
		// An error that names no object may concern any event not already
		// rejected: their fate is unknown.
		destinations.RetryUnresolved(out, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "Braze answered success with errors that name no object: " + strings.Join(unplaced, "; ")})
	}
	return out
}

// layout maps each array of the request's body to the position, in
// req.Events, of the event each of its objects came from. request lists
// the events of attributes objects first, in their order, then those of
// events objects, then the one event whose products are the purchases, so
// counting the objects recovers it.
func layout(req *destinations.Request) (map[string][]int, error) {
	var body trackRequest
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return nil, err
	}
	na, ne, np := len(body.Attributes), len(body.Events), len(body.Purchases)
	orders := 0
	if np > 0 {
		orders = 1
	}
	if na+ne+orders != len(req.Events) {
		return nil, fmt.Errorf("%d events do not account for %d attributes, %d events and %d purchases objects",
			len(req.Events), na, ne, np)
	}
	owners := map[string][]int{}
	for k := 0; k < na; k++ {
		owners[attributes] = append(owners[attributes], k)
	}
	for k := 0; k < ne; k++ {
		owners[events] = append(owners[events], na+k)
	}
	for k := 0; k < np; k++ {
		owners[purchases] = append(owners[purchases], na+ne)
	}
	return owners, nil
}

// retryAfter is how long a 429 asks to wait: Retry-After or
// X-RateLimit-Retry-After in seconds, else until X-RateLimit-Reset, the
// UTC epoch second when the window resets.
func retryAfter(resp *destinations.Response) time.Duration {
	if d := destinations.ParseRetryAfter(resp.Header, resp.ReceivedAt); d > 0 {
		return d
	}
	if s, err := strconv.ParseUint(strings.TrimSpace(resp.Header.Get("X-RateLimit-Retry-After")), 10, 32); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return destinations.ParseRateLimitReset(resp.Header, resp.ReceivedAt)
}
