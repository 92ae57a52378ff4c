// Package braze delivers user attributes, custom events and purchases to
// Braze through the /users/track endpoint of its REST API, and links
// anonymous profiles to known users through /users/identify.
//
// The formats come from Braze's public documentation:
//
//   - User track, https://www.braze.com/docs/api/endpoints/user_data/post_user_track/
//     (POST <rest endpoint>/users/track with Authorization: Bearer <REST API
//     key>; "attributes", "events" and "purchases" arrays of objects naming
//     the user by external_id or user_alias; the three responses: success
//     with the counts processed, success with non-fatal errors, "any data
//     not affected by an error in the errors array will still be
//     processed", and fatal errors; "Monthly Active Users CY 24-25": up to
//     50 objects per request, attributes, events and purchases combined;
//     duplicate events are "treated as separate, unique events");
//   - Rate limits, https://www.braze.com/docs/api/api_limits/ (/users/track:
//     75 objects per request, the three arrays combined, or 75 in each for
//     workspaces on the legacy limits; /users/identify shares 20,000
//     requests a minute with four other endpoints; 429, the X-RateLimit-*
//     headers, X-RateLimit-Reset in UTC epoch seconds; the 4 MB payload
//     limit);
//   - Purchase object, https://www.braze.com/docs/api/objects_filters/purchase_object/
//     (product_id, currency, price, quantity "must be <= 100"; Braze counts
//     a quantity X as X purchases of 1);
//   - Identify users, https://www.braze.com/docs/api/endpoints/user_data/post_user_identify/
//     (aliases_to_identify of {external_id, user_alias}, up to 50 a
//     request; merge_behavior "merge"; the users.identify permission);
//   - API errors and responses, https://www.braze.com/docs/api/errors/
//     ({"message": "success"}; "queued" with 202 during maintenance; the
//     fatal 4XX and 5XX codes);
//   - API overview, https://www.braze.com/docs/api/basics/ (the instance's
//     REST endpoint, such as rest.iad-01.braze.com, and API key permissions).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; each says which page its answer copies, or
// that it is modelled, not recorded. Re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Deduplication
//
// Braze does not deduplicate: /users/track has no idempotency key, and a
// repeated event object is recorded as a new event
// (Integration.Deduplicates is false). So fanout resends only what
// Braze's answer says it did not take, and splits a batch rather than
// resending it whole when an error names no object.
//
// # Requests
//
// Identify and track calls are batched into /users/track requests:
//
//   - identify: an attributes object with the standard attributes read
//     through the trait helpers (first_name, last_name, email, phone,
//     gender, dob, country, home_city) and the other traits as custom
//     attributes;
//   - track: an events object (name, time in ISO 8601, properties); an
//     "Order Completed" call with a products array becomes one purchases
//     object per product (product_id, price, currency, quantity), as Braze
//     records purchases, and a product whose quantity is over the 100 a
//     purchase object takes becomes several objects of at most 100 each
//     (Braze would refuse the order otherwise, and counts them the same).
//
// The user is external_id = userId, or, without a userId, a user alias
// {alias_name: anonymousId, alias_label: "anonymous_id"} with
// _update_existing_only false so that Braze creates the alias-only user.
// An identify call with both a userId and an anonymousId first merges that
// alias-only user into the known one: Transform sends /users/identify
// with {external_id, user_alias} for each (50 a request, merge_behavior
// "merge") before the batch, unless the identify_aliases setting is off.
// When that request fails, the identify call is retried (or rejected, for
// a refusal) before its attributes are sent.
//
// A request carries at most objects_per_request objects in all (75 by
// default, 50 for Monthly Active Users CY 24-25 workspaces) and 4 MB; one
// event's objects are never split across requests, and a request carries
// the purchases of one order at most, so that the indexes of Braze's
// errors lead back to events.
//
// # Outcomes
//
// A 2xx with "message": "success" (or "queued", during maintenance) is
// delivered, except for the objects its "errors" array names by
// input_array and index: those events are rejected with Braze's error
// type, while the others were processed. An error that names no object
// leaves unknown which object it concerns: the events of an array whose
// *_processed count accounts for every object not named are delivered,
// the others are split (Result.Split), so that the engine sends them again
// in halves until the bad one is alone. A 2xx with any other message is a
// fatal error and rejects every event. A 400 is fatal, nothing of the
// request was processed: the objects its errors name are rejected and the
// other events retried; when nothing is named, the batch is split (an
// event alone is rejected with Braze's message). 401, 403 and 404 reject
// with the settings to check; 429 is retried after Retry-After (or
// X-RateLimit-Reset); 5xx is retried.
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

// The documented limits of a /users/track request: MaxObjects in the
// three arrays combined (SmallObjects for Monthly Active Users CY 24-25
// workspaces), MaxBytes in all; MaxQuantity per purchase object.
const (
	MaxObjects   = 75
	SmallObjects = 50
	MaxBytes     = 4 << 20
	MaxQuantity  = 100
)

// MaxAliases is how many aliases one /users/identify request takes.
const MaxAliases = 50

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
			Name:        "objects_per_request",
			Type:        destinations.Int,
			Default:     MaxObjects,
			Description: "The most objects (attributes, events and purchases combined) a /users/track request carries: 75, Braze's default limit, or 50 for workspaces on Monthly Active Users CY 24-25 contracts (Settings > APIs and Identifiers > API Usage Dashboard shows the workspace's limits).",
		},
		{
			Name:        "identify_aliases",
			Type:        destinations.Bool,
			Default:     true,
			Description: "On an identify call with both userId and anonymousId, merge the alias-only user (alias_label anonymous_id) into the known user through /users/identify first. Needs the users.identify permission on the API key.",
		},
		{
			Name:        "app_id",
			Type:        destinations.String,
			Description: "The app identifier events and purchases are recorded against. Empty: none, as the API allows.",
		},
	},
	EventTypes: []string{event.Identify, event.Track},
	Batch:      destinations.BatchLimits{MaxEvents: MaxObjects, MaxBytes: MaxBytes},
	// Braze records a repeated event again (see the package doc).
	Deduplicates: false,
	New:          New,
}

// destination is one configured Braze workspace.
type destination struct {
	url         string
	identifyURL string
	auth        string
	appID       string
	// objects is objects_per_request.
	objects int
	// identify is identify_aliases.
	identify bool
	api      *destinations.Sender
}

var (
	_ destinations.Destination = (*destination)(nil)
	_ destinations.Batcher     = (*destination)(nil)
)

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
	objects := s.Int("objects_per_request")
	if objects < 1 || objects > MaxObjects {
		return nil, fmt.Errorf("objects_per_request: expected 1 to %d (%d for Monthly Active Users CY 24-25 workspaces), found %d", MaxObjects, SmallObjects, objects)
	}
	root := strings.TrimSuffix(strings.TrimRight(base, "/"), "/users/track")
	return &destination{
		url:         root + "/users/track",
		identifyURL: root + "/users/identify",
		auth:        "Bearer " + s.String("api_key"),
		appID:       s.String("app_id"),
		objects:     objects,
		identify:    s.Bool("identify_aliases"),
		api:         cfg.Sender(nil),
	}, nil
}

// BatchLimits gives the engine batches of at most objects_per_request
// events: most events make one object.
func (d *destination) BatchLimits() destinations.BatchLimits {
	return destinations.BatchLimits{MaxEvents: d.objects, MaxBytes: MaxBytes}
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
func (d *destination) Transform(ctx context.Context, evs []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var run []encoded
	var all []encoded
	// aliases are the identify calls whose alias-only user is merged first.
	var aliases []alias
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
			objs, reason = d.identifyObject(m)
			if a, ok := d.aliasOf(i, m); ok && reason == "" {
				aliases = append(aliases, a)
			}
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
		if len(objs) > d.objects {
			b.Reject(i, fmt.Sprintf("the event makes %d Braze objects (one per product, and one per %d of a product's quantity), more than the %d a request takes (objects_per_request)", len(objs), MaxQuantity, d.objects))
			continue
		}
		all = append(all, e)
	}
	// The alias-only users are merged before anything is sent about them.
	held := d.merge(ctx, &b, aliases)
	for _, e := range all {
		if held[e.event] {
			continue
		}
		isOrder := e.objects[0].array == purchases
		if count+len(e.objects) > d.objects || (count > 0 && envelope+size+e.size > MaxBytes) || (isOrder && hasOrder) {
			if err := flush(); err != nil {
				return destinations.Plan{}, err
			}
		}
		run = append(run, e)
		hasOrder = hasOrder || isOrder
		count += len(e.objects)
		size += e.size
	}
	if err := flush(); err != nil {
		return destinations.Plan{}, err
	}
	return b.Plan, nil
}

// alias is an identify call's {external_id, user_alias} for /users/identify.
type alias struct {
	event int
	body  json.RawMessage
}

// aliasOf returns the aliases_to_identify object of identify call i when
// it has both a userId and an anonymousId and identify_aliases is on.
func (d *destination) aliasOf(i int, m map[string]any) (alias, bool) {
	userID, anonID := traits.UserID(m), traits.AnonymousID(m)
	if !d.identify || userID == "" || anonID == "" {
		return alias{}, false
	}
	body, err := json.Marshal(map[string]any{
		"external_id": userID,
		"user_alias":  map[string]string{"alias_name": anonID, "alias_label": "anonymous_id"},
	})
	return alias{event: i, body: body}, err == nil
}

// identifyRequest is the body of a /users/identify request.
type identifyRequest struct {
	AliasesToIdentify []json.RawMessage `json:"aliases_to_identify"`
	MergeBehavior     string            `json:"merge_behavior"`
}

// merge sends the aliases to /users/identify, MaxAliases a request, and
// gives an outcome to each identify call whose merge did not go through;
// it returns them, so that their attributes are not sent before the
// merge is. Braze answers success with non-fatal errors for aliases that
// need no merge (no such alias-only user, or one already merged): those
// identify calls go on.
func (d *destination) merge(ctx context.Context, b *plan.Builder, aliases []alias) map[int]bool {
	held := map[int]bool{}
	for start := 0; start < len(aliases); start += MaxAliases {
		group := aliases[start:min(start+MaxAliases, len(aliases))]
		body := identifyRequest{MergeBehavior: "merge"}
		for _, a := range group {
			body.AliasesToIdentify = append(body.AliasesToIdentify, a.body)
		}
		data, err := json.Marshal(body)
		if err != nil {
			continue
		}
		resp, err := d.api.Do(ctx, &destinations.Request{
			Method: http.MethodPost,
			URL:    d.identifyURL,
			Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}},
			Body:   data,
		})
		var r destinations.Result
		if err != nil {
			r = destinations.Result{Outcome: destinations.Retryable, Reason: err.Error()}
		} else {
			r = classifyIdentify(resp)
		}
		if r.Outcome == destinations.Delivered {
			continue
		}
		r.Reason = "merging the anonymous user into the known one (/users/identify) did not go through, so the attributes were not sent either: " + r.Reason
		for _, a := range group {
			if b.Plan.Results == nil {
				b.Plan.Results = map[int]destinations.Result{}
			}
			b.Plan.Results[a.event] = r
			held[a.event] = true
		}
	}
	return held
}

// classifyIdentify reads a /users/identify answer.
func classifyIdentify(resp *destinations.Response) destinations.Result {
	code := resp.StatusCode
	var a answer
	parsed := json.Unmarshal(resp.Body, &a) == nil && a.Message != nil
	switch {
	case code >= 200 && code <= 299:
		if !parsed {
			return destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
				Reason: fmt.Sprintf("Braze answered %d with a body that is not its JSON answer: %s", code, destinations.Snippet(resp.Body, 200))}
		}
		if *a.Message != "success" && *a.Message != "queued" {
			return destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: "Braze answered a fatal error: " + *a.Message}
		}
		return destinations.Result{Outcome: destinations.Delivered, StatusCode: code}
	case code == http.StatusTooManyRequests:
		r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
		r.RetryAfter = retryAfter(resp)
		return r
	case code == http.StatusUnauthorized, code == http.StatusForbidden, code == http.StatusNotFound:
		return destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) +
				": give the API key the users.identify permission (Settings > APIs and Identifiers > API Keys), or turn identify_aliases off"}
	case code == http.StatusBadRequest && parsed:
		return destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: "Braze refused the merge: " + *a.Message}
	}
	return destinations.ClassifyStatus(resp, resp.ReceivedAt)
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

// identifyObject builds the attributes object of an identify call.
func (d *destination) identifyObject(m map[string]any) ([]object, string) {
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
	products := traits.Products(m)
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
func (d *destination) purchases(m map[string]any, ts time.Time, products []map[string]any) ([]object, string) {
	currency := traits.Currency(m)
	if currency == "" {
		currency = "USD"
	}
	orderID := traits.String(traits.Get(m, "properties", "order_id"))
	out := make([]object, 0, len(products))
	for n, prod := range products {
		id := traits.ProductID(prod)
		price, ok := traits.Number(prod["price"])
		if id == "" || !ok {
			return nil, fmt.Sprintf("product %d of the order has no product_id (or sku) or no price, which Braze needs for a purchase", n)
		}
		qty := 1
		if q, ok := traits.Number(prod["quantity"]); ok && q >= 1 && q == math.Trunc(q) {
			if q > float64(MaxObjects*MaxQuantity) {
				return nil, fmt.Sprintf("product %d of the order has a quantity of %v, more than the %d purchases of %d a request can carry", n, q, MaxObjects, MaxQuantity)
			}
			qty = int(q)
		}
		obj := map[string]any{
			"product_id": id,
			"currency":   currency,
			"price":      price,
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
		// A purchase object takes a quantity of MaxQuantity at most, and
		// Braze refuses the whole order over it: more goes in several.
		for left := qty; left > 0; left -= MaxQuantity {
			obj["quantity"] = min(left, MaxQuantity)
			body, err := json.Marshal(obj)
			if err != nil {
				return nil, "the order cannot be encoded: " + err.Error()
			}
			out = append(out, object{array: purchases, body: body})
		}
	}
	return out, ""
}

// answer is the body of a /users/track response.
type answer struct {
	Message *string           `json:"message"`
	Errors  []json.RawMessage `json:"errors"`
	// The objects of each array Braze queued to be processed, when it says.
	AttributesProcessed *int `json:"attributes_processed"`
	EventsProcessed     *int `json:"events_processed"`
	PurchasesProcessed  *int `json:"purchases_processed"`
}

// processed is the count a successful answer gives for array, nil when
// it gives none.
func (a *answer) processed(array string) *int {
	switch array {
	case attributes:
		return a.AttributesProcessed
	case events:
		return a.EventsProcessed
	case purchases:
		return a.PurchasesProcessed
	}
	return nil
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
		return minorErrors(req, resp, &a)
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
		return fatal(req, resp, &a)
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

// place reads the errors of an answer: the reasons of the events whose
// objects they name, by position in req.Events, how many objects of each
// array they name, and those that name no object.
func place(req *destinations.Request, errs []json.RawMessage) (reasons map[int]string, named map[string]int, unplaced []string, err error) {
	owners, err := layout(req)
	if err != nil {
		return nil, nil, nil, err
	}
	reasons, named = map[int]string{}, map[string]int{}
	for _, raw := range errs {
		var e minorError
		if json.Unmarshal(raw, &e) != nil || e.Index == nil || *e.Index < 0 || *e.Index >= len(owners[e.InputArray]) {
			unplaced = append(unplaced, destinations.Snippet(raw, 200))
			continue
		}
		j := owners[e.InputArray][*e.Index]
		if prev, ok := reasons[j]; ok {
			reasons[j] = prev + "; " + e.Type
		} else {
			reasons[j] = "Braze refused the " + strings.TrimSuffix(e.InputArray, "s") + " object: " + e.Type
		}
		named[e.InputArray]++
	}
	return reasons, named, unplaced, nil
}

// minorErrors resolves a successful answer per event: the objects its
// errors name belong to rejected events, the others were processed. An
// error that names no object leaves the events of an array in doubt,
// unless the array's *_processed count shows every object not named was
// processed: those in doubt are split (see the package doc).
func minorErrors(req *destinations.Request, resp *destinations.Response, a *answer) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
	if len(a.Errors) == 0 {
		return out
	}
	reasons, named, unplaced, err := place(req, a.Errors)
	if err != nil {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "integration bug: cannot read back the request to resolve Braze's errors: " + err.Error()})
	}
	for j, reason := range reasons {
		out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason}
	}
	if len(unplaced) == 0 {
		return out
	}
	owners, _ := layout(req)
	for array, objs := range owners {
		if p := a.processed(array); p != nil && *p >= len(objs)-named[array] {
			continue // every object of the array not named was processed
		}
		for _, j := range objs {
			if out[j].Outcome == destinations.Delivered {
				out[j] = destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
					Reason: "Braze answered success with errors that name no object (" + strings.Join(unplaced, "; ") +
						"): the batch is sent again in halves to find the object concerned"}
			}
		}
	}
	return out
}

// fatal resolves a 400: Braze processed nothing of the request. The events
// whose objects its errors name are rejected and the others retried; when
// none is named, the batch is split, and an event alone is rejected.
func fatal(req *destinations.Request, resp *destinations.Response, a *answer) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	msg := *a.Message
	reasons, _, _, err := place(req, a.Errors)
	if err == nil && len(reasons) > 0 {
		out := destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "Braze refused the request because of other events in it (" + msg + "); this event is sent again without them"})
		for j, reason := range reasons {
			out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason + " (" + msg + ")"}
		}
		return out
	}
	if n > 1 {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: "Braze refused the request without naming an object (" + msg + "): it is sent again in halves to find the event concerned"})
	}
	return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
		Reason: "Braze refused the request: " + msg})
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
