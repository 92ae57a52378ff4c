// Package hubspot upserts contacts in HubSpot from identify calls and sends
// track calls as custom event occurrences, through HubSpot's CRM v3 and
// Events v3 APIs.
//
// The formats come from HubSpot's public developer documentation:
//
//   - Upsert a batch of contacts,
//     https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
//     (POST /crm/v3/objects/contacts/batch/upsert with inputs of {id,
//     idProperty, properties, objectWriteTraceId}, at most 100; results
//     and, in a 207 multi-status answer, errors);
//   - Contacts, https://developers.hubspot.com/docs/api-reference/latest/crm/objects/contacts/guide
//     (email as the unique identifier; the default properties);
//   - Send custom event occurrences,
//     https://developers.hubspot.com/docs/api-reference/legacy/events/send-event-data/guide,
//     and Send a batch of event occurrences,
//     https://developers.hubspot.com/docs/api-reference/legacy/events/send-event-data/batch-send-occurrences
//     (POST /events/v3/send/batch with inputs of {eventName, the fully
//     qualified pe<HubID>_<name>; email; occurredAt, ISO 8601 in UTC;
//     uuid; properties}; "this response has no body data"; of uuid: "when
//     multiple events have the same ID within a year, the first will be
//     accepted and all others will be rejected");
//   - Define custom events, https://developers.hubspot.com/docs/api/events/custom-events,
//     and the property limits of
//     https://developers.hubspot.com/changelog/new-property-limits-for-the-custom-behavioural-events-api
//     (an occurrence may only name properties of its event definition, at
//     most 50; internal names start with a letter and hold lowercase
//     letters, digits and underscores, at most 50 characters; names equal
//     once lower-cased are one property);
//   - Error handling, https://developers.hubspot.com/docs/api-reference/error-handling
//     (the error body: status, message, correlationId, category, errors with
//     message, in, code, context, every field optional; 207 with
//     objectWriteTraceId; 401, 403; 423: "locks will last for 2 seconds";
//     429; 477 with a Retry-After "typically up to 24 hours"; 502/504, 503);
//   - API usage guidelines, https://developers.hubspot.com/docs/api/usage-details
//     (the 429 body: "errorType": "RATE_LIMIT" and "policyName", DAILY or
//     the ten-secondly window; "the daily limit resets at midnight based on
//     your time zone setting").
//
// The tapes in testdata/ were written by hand, since the live API cannot be
// reached from where this integration was written; each says which page's
// example it follows, or that it is modelled, not recorded, where the
// documentation shows no such answer. Re-record them with a private app's
// access token (see destinations/README.md) when you have one.
//
// # Requests
//
// Identify calls are batched, up to 100 per request, into a contacts upsert
// keyed by email (idProperty email, id the email), with HubSpot's default
// contact properties read through the trait helpers (email, firstname,
// lastname, phone, company, jobtitle, website, address, city, state, zip,
// country, date_of_birth) and the traits the `properties` setting maps to
// custom properties. Each input's objectWriteTraceId is the event's
// messageId, which turns on multi-status answers and says which input each
// error concerns. HubSpot refuses a batch that names one email twice, so a
// second identify of the same email goes in a later request, after the
// first.
//
// Track calls whose event name the `events` setting maps to a HubSpot
// event are batched, up to 100 per request, into /events/v3/send/batch,
// associated with the contact by email. Only the properties that the
// `event_properties` setting maps to event properties are sent (HubSpot
// refuses an occurrence naming a property its definition lacks), at most
// 50; the others are dropped (an email property is sent as the
// occurrence's email). An occurrence delivered without some of its
// properties carries a warning as its Result.Reason, "delivered without
// properties not in event_properties (or beyond HubSpot's 50 per event):
// referrer_code", which the delivery issues group under the outcome
// delivered and the debugger shows. Other track calls are unsupported.
//
// # Deduplication
//
// HubSpot deduplicates occurrences by uuid, for a year: uuid is derived
// from the messageId (EventUUID), the same on every retry. A contact upsert
// by email is idempotent: a retried batch writes the same values. So
// Integration.Deduplicates is true.
//
// # Outcomes
//
// 200, 204 and other 2xx are delivered. A 207 (or a 200 listing errors) to
// an upsert is resolved per event: the inputs its errors name by
// objectWriteTraceId are rejected (VALIDATION_ERROR and the like) or
// retried (RATE_LIMITS), the others were written; errors naming no input
// retry the inputs not resolved. A 400 fails the whole batch: the inputs
// its errors name (objectWriteTraceId or email for a contact, uuid for an
// occurrence) are rejected and the others retried; a 400 naming none
// splits the batch in halves (Result.Split) until the refused input is
// alone, and rejects it then with HubSpot's message. 401 and 403 reject
// with the token and scopes to check. A 409 conflict on a contact is
// rejected with HubSpot's message; on an occurrence it means one with the
// same uuid was already accepted, so that occurrence is delivered (a batch
// naming none is split). 423 waits 2 s, 477 its Retry-After (10 minutes
// when it has none), and a 429 its Retry-After, or 10 s for the
// ten-secondly window; the daily limit is a Result.Quota, until midnight in
// the `time_zone` setting or, without it, the next midnight UTC. 5xx are
// retried with backoff.
package hubspot

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // time_zone names, wherever the host lacks a zone database
	"weak"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
	"github.com/google/uuid"
)

// MaxBatchInputs is the documented number of inputs of a batch upsert,
// also used for occurrence batches.
const MaxBatchInputs = 100

// Integration is the HubSpot integration.
var Integration = &destinations.Integration{
	Type: "hubspot",
	Settings: destinations.Schema{
		{
			Name:        "access_token",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The access token of a private app (Settings > Integrations > Private Apps > the app > Auth) with the crm.objects.contacts.write scope, and analytics.behavioral_events.send for track calls.",
		},
		{
			Name:        "events",
			Type:        destinations.StringMap,
			Description: "Maps track event names to the fully qualified names of HubSpot custom events: {\"Signed Up\": pe1234567_signed_up}. Track calls not listed are unsupported.",
		},
		{
			Name:        "properties",
			Type:        destinations.StringMap,
			Description: "Maps trait names to contact property internal names, for custom properties: {plan: plan_tier}. The property must exist in HubSpot.",
		},
		{
			Name:        "event_properties",
			Type:        destinations.StringMap,
			Description: "Maps track call property names to the internal names of the custom event's properties: {plan: plan_tier}. Each property must exist on the event's definition in HubSpot; names are lower-cased, and must then start with a letter and hold only a-z, 0-9 and _ (at most 50 characters). Properties not listed are not sent, and at most 50 are sent per event; an event delivered without some says which in the delivery issues, as a warning.",
		},
		{
			Name:        "time_zone",
			Type:        destinations.String,
			Description: "The HubSpot account's time zone (Settings > Account Defaults > General), as an IANA name such as America/New_York: the daily API limit resets at midnight there. Empty: deliveries held by the daily limit resume at the next midnight UTC.",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Default:     "https://api.hubapi.com",
			Description: "The API base URL, for a proxy or a test server.",
		},
	},
	EventTypes:   []string{event.Identify, event.Track},
	Batch:        destinations.BatchLimits{MaxEvents: MaxBatchInputs},
	Deduplicates: true,
	New:          New,
}

// destination is one configured HubSpot account.
type destination struct {
	base       string
	auth       string
	events     map[string]string
	properties map[string]string
	eventProps map[string]string // track property name to event property internal name
	zone       *time.Location    // where the daily limit resets; nil: UTC

	// warnings holds, for each occurrence batch carrying an event whose
	// properties were dropped, the warning of each of its events in the
	// order of req.Events ("" for none), which Classify gives those
	// delivered. An entry goes when its request is garbage collected, so
	// a request never classified (a transport error) leaves nothing.
	mu       sync.Mutex
	warnings map[weak.Pointer[destinations.Request]][]string
}

var _ destinations.Destination = (*destination)(nil)

// New builds a HubSpot destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	base := s.String("api_url")
	if base == "" {
		base = "https://api.hubapi.com"
	}
	if err := destinations.CheckURL("api_url", base); err != nil {
		return nil, err
	}
	token := s.String("access_token")
	if strings.HasPrefix(strings.ToLower(token), "bearer ") {
		return nil, fmt.Errorf("access_token: expected the token alone, found it with a \"Bearer \" prefix: give it without")
	}
	d := &destination{base: strings.TrimRight(base, "/"), auth: "Bearer " + token,
		warnings: map[weak.Pointer[destinations.Request]][]string{}}
	d.events = s.StringMap("events")
	d.properties = s.StringMap("properties")
	for name, fq := range d.events {
		if !strings.HasPrefix(fq, "pe") || !strings.Contains(fq, "_") {
			return nil, fmt.Errorf("events: %q maps to %q; expected a fully qualified event name such as pe1234567_signed_up (HubSpot > Data Management > Custom Events > the event > Details)", name, fq)
		}
	}
	d.eventProps = map[string]string{}
	for name, target := range s.StringMap("event_properties") {
		n, ok := NormalizeEventProperty(target)
		if !ok {
			return nil, fmt.Errorf("event_properties: %q maps to %q; expected an event property's internal name: a letter, then lowercase letters, digits and underscores, at most 50 characters", name, target)
		}
		d.eventProps[name] = n
	}
	if tz := s.String("time_zone"); tz != "" {
		loc, err := time.LoadLocation(tz)
		if err != nil || tz == "Local" {
			return nil, fmt.Errorf("time_zone: expected an IANA time zone name such as America/New_York, found %q", tz)
		}
		d.zone = loc
	}
	return d, nil
}

// upsertInput is one input of a contacts batch upsert.
type upsertInput struct {
	ID                 string         `json:"id"`
	IDProperty         string         `json:"idProperty"`
	ObjectWriteTraceID string         `json:"objectWriteTraceId"`
	Properties         map[string]any `json:"properties"`
}

// Transform batches identify calls into contacts upserts, and mapped
// track calls into occurrence batches.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	// Round n holds the n-th identify of each email, so that no batch
	// names an email twice and a later identify is written later.
	var rounds plan.Rounds
	var occurrences []plan.Item
	warnings := map[int]string{} // by event index
	for i := range events {
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		switch events[i].Type {
		case event.Identify:
			in, reason := d.contact(events[i].MessageID, m)
			if reason != "" {
				b.Reject(i, reason)
				continue
			}
			body, err := json.Marshal(in)
			if err != nil {
				b.Reject(i, "the contact cannot be encoded: "+err.Error())
				continue
			}
			rounds.Add(in.ID, plan.Item{Event: i, Body: body})
		case event.Track:
			in, dropped, reason, unsupported := d.occurrence(events[i].MessageID, m)
			switch {
			case unsupported:
				b.Unsupported(i, reason)
			case reason != "":
				b.Reject(i, reason)
			default:
				body, err := json.Marshal(in)
				if err != nil {
					b.Reject(i, "the track call cannot be encoded: "+err.Error())
					continue
				}
				occurrences = append(occurrences, plan.Item{Event: i, Body: body})
				if len(dropped) > 0 {
					warnings[i] = droppedWarning(dropped)
				}
			}
		default:
			b.Unsupported(i, "HubSpot takes identify and track calls, not "+events[i].Type)
		}
	}
	for _, round := range rounds.Of {
		for _, run := range plan.Batches(round, MaxBatchInputs, 0, 1, envelope) {
			b.Add(d.batchRequest(contactsPath, run))
		}
	}
	for _, run := range plan.Batches(occurrences, MaxBatchInputs, 0, 1, envelope) {
		req := d.batchRequest(eventsPath, run)
		d.keepWarnings(req, warnings)
		b.Add(req)
	}
	return b.Plan, nil
}

// maxNamed is how many dropped properties a warning names.
const maxNamed = 10

// droppedWarning is the Result.Reason of an occurrence delivered without
// the properties dropped.
func droppedWarning(dropped []string) string {
	names := strings.Join(dropped[:min(len(dropped), maxNamed)], ", ")
	if len(dropped) > maxNamed {
		names += fmt.Sprintf(" and %d more", len(dropped)-maxNamed)
	}
	return "delivered without properties not in event_properties (or beyond HubSpot's 50 per event): " + names
}

// keepWarnings keeps the warnings, by event index, of the events req
// carries, for Classify.
func (d *destination) keepWarnings(req *destinations.Request, byEvent map[int]string) {
	var ws []string
	for j, i := range req.Events {
		if w := byEvent[i]; w != "" {
			if ws == nil {
				ws = make([]string, len(req.Events))
			}
			ws[j] = w
		}
	}
	if ws == nil {
		return
	}
	key := weak.Make(req)
	d.mu.Lock()
	d.warnings[key] = ws
	d.mu.Unlock()
	runtime.AddCleanup(req, func(key weak.Pointer[destinations.Request]) {
		d.mu.Lock()
		delete(d.warnings, key)
		d.mu.Unlock()
	}, key)
}

// The endpoints, below api_url.
const (
	contactsPath = "/crm/v3/objects/contacts/batch/upsert"
	eventsPath   = "/events/v3/send/batch"
)

// envelope is the size of a batch body without its inputs.
const envelope = len(`{"inputs":[]}`)

// batchRequest builds the {"inputs": [...]} request of run to path.
func (d *destination) batchRequest(path string, run []plan.Item) *destinations.Request {
	inputs, idx := plan.JSONArray(run)
	body := make([]byte, 0, len(inputs)+envelope)
	body = append(append(append(body, `{"inputs":`...), inputs...), '}')
	return &destinations.Request{
		Method: http.MethodPost,
		URL:    d.base + path,
		Header: d.header(),
		Body:   body,
		Events: idx,
	}
}

func (d *destination) header() http.Header {
	return http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}}
}

// contactFields are HubSpot's default contact properties for the usual
// traits; email, lower-cased, is the upsert's key.
var contactFields = traits.ContactFields{
	FirstName: "firstname", LastName: "lastname", Phone: "phone", Company: "company",
	Title: "jobtitle", Website: "website",
	Street: "address", City: "city", State: "state", PostalCode: "zip", Country: "country",
	Birthday: "date_of_birth",
}

// contact builds the upsert input of an identify call.
func (d *destination) contact(messageID string, m map[string]any) (upsertInput, string) {
	email := strings.ToLower(traits.Email(m))
	if email == "" {
		return upsertInput{}, "the identify call has no email, which HubSpot needs to find or create the contact"
	}
	props := traits.Record{"email": email}
	props.PutContact(m, contactFields)
	props.Map(m, d.properties)
	return upsertInput{ID: email, IDProperty: "email", ObjectWriteTraceID: messageID, Properties: props}, ""
}

// occurrenceInput is one input of /events/v3/send/batch.
type occurrenceInput struct {
	EventName  string         `json:"eventName"`
	Email      string         `json:"email"`
	OccurredAt string         `json:"occurredAt,omitempty"`
	UUID       string         `json:"uuid"`
	Properties map[string]any `json:"properties"`
}

// MaxEventProperties is the documented number of properties one event
// occurrence may carry.
const MaxEventProperties = 50

// occurrence builds the batch input of a track call. dropped lists the
// event's properties left out: unmapped, or beyond MaxEventProperties; an
// unmapped email property that is the occurrence's email is not left out.
func (d *destination) occurrence(messageID string, m map[string]any) (in occurrenceInput, dropped []string, reason string, unsupported bool) {
	name := traits.EventName(m)
	fq, ok := d.events[name]
	if !ok {
		return in, nil, fmt.Sprintf("the track event %q has no HubSpot custom event in the `events` setting", name), true
	}
	email := traits.Email(m)
	if email == "" {
		return in, nil, "the track call has no email (in properties or context.traits), which HubSpot needs to associate the occurrence with a contact", false
	}
	in = occurrenceInput{EventName: fq, Email: strings.ToLower(email), UUID: EventUUID(messageID)}
	props := traits.Properties(m)
	in.Properties, dropped = eventProperties(props, d.eventProps)
	if e, _ := props["email"].(string); strings.EqualFold(e, email) {
		// Sent as the occurrence's email, not left out.
		dropped = slices.DeleteFunc(dropped, func(k string) bool { return k == "email" })
	}
	if ts, ok := traits.Timestamp(m); ok {
		in.OccurredAt = ts.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	return in, dropped, "", false
}

// eventProperties maps the track call's properties through mapping
// (property name to event property internal name). HubSpot refuses an
// occurrence naming a property its event definition lacks, so unmapped
// properties are dropped; so are those beyond the first
// MaxEventProperties internal names in sorted order. Objects and arrays,
// which no event property type holds, are sent as their JSON text.
func eventProperties(props map[string]any, mapping map[string]string) (out map[string]any, dropped []string) {
	out = map[string]any{}
	names := slices.Sorted(maps.Keys(props))
	for _, k := range names {
		v := props[k]
		target, ok := mapping[k]
		if !ok {
			dropped = append(dropped, k)
			continue
		}
		if v == nil {
			continue
		}
		if _, taken := out[target]; taken {
			dropped = append(dropped, k)
			continue
		}
		switch v.(type) {
		case map[string]any, []any:
			data, err := json.Marshal(v)
			if err != nil {
				dropped = append(dropped, k)
				continue
			}
			v = string(data)
		}
		out[target] = v
	}
	if len(out) > MaxEventProperties {
		for _, target := range slices.Sorted(maps.Keys(out))[MaxEventProperties:] {
			delete(out, target)
			dropped = append(dropped, target)
		}
	}
	return out, dropped
}

// NormalizeEventProperty returns name as HubSpot stores an event
// property's internal name (lower-cased) and whether the result follows
// HubSpot's rules: a letter first, then lowercase letters, digits and
// underscores, at most 50 characters.
func NormalizeEventProperty(name string) (string, bool) {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" || len(n) > 50 || n[0] < 'a' || n[0] > 'z' {
		return n, false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return n, false
		}
	}
	return n, true
}

// EventUUID returns the uuid of the occurrence with messageID: the
// messageId itself when it is a UUID (lower-cased), and otherwise the
// version 5 (SHA-1, name-based) UUID of the messageId in the URL
// namespace, the same on every retry.
func EventUUID(messageID string) string {
	if isUUID(messageID) {
		return strings.ToLower(messageID)
	}
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte(messageID)).String()
}

// isUUID reports whether s is a UUID in its 36-character form, the one
// HubSpot takes.
func isUUID(s string) bool {
	return len(s) == 36 && uuid.Validate(s) == nil
}

// apiError is HubSpot's error body, also the shape of one error of a
// multi-status answer. Every field is optional.
type apiError struct {
	Status     string              `json:"status"`
	Message    string              `json:"message"`
	Category   string              `json:"category"`
	ErrorType  string              `json:"errorType"`
	PolicyName string              `json:"policyName"`
	Context    map[string][]string `json:"context"`
	Errors     []struct {
		Message string              `json:"message"`
		Code    string              `json:"code"`
		In      string              `json:"in"`
		Context map[string][]string `json:"context"`
	} `json:"errors"`
}

// batchAnswer is the body of a 200 or 207 batch answer.
type batchAnswer struct {
	Status    string     `json:"status"`
	NumErrors int        `json:"numErrors"`
	Errors    []apiError `json:"errors"`
	Results   []struct {
		ID                 string `json:"id"`
		ObjectWriteTraceID string `json:"objectWriteTraceId"`
	} `json:"results"`
}

// Waits HubSpot documents, or that fanout chooses where it documents none.
const (
	// lockWait is how long HubSpot locks a record during a burst of writes.
	lockWait = 2 * time.Second
	// secondlyWait is the ten-secondly window of the 429 policies.
	secondlyWait = 10 * time.Second
	// migrationWait stands in for the Retry-After that a 477 should carry.
	migrationWait = 10 * time.Minute
)

// Classify reads an upsert's or an occurrence batch's answer (see the
// package doc). An occurrence delivered without some of its properties
// carries Transform's warning as its reason.
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	out := d.classify(req, resp)
	d.mu.Lock()
	ws := d.warnings[weak.Make(req)]
	d.mu.Unlock()
	if len(ws) == len(out) {
		for j := range out {
			if out[j].Outcome == destinations.Delivered && out[j].Reason == "" {
				out[j].Reason = ws[j]
			}
		}
	}
	return out
}

func (d *destination) classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	isEvent := strings.HasSuffix(req.URL, eventsPath)
	var e apiError
	_ = json.Unmarshal(resp.Body, &e)
	reason := func(prefix string) string {
		msg := e.Message
		if msg == "" {
			return destinations.StatusReason(code, resp.Body)
		}
		return fmt.Sprintf("HTTP %d: %s%s", code, prefix, msg)
	}
	wait := func(fallback time.Duration) time.Duration {
		if after := destinations.ParseRetryAfter(resp.Header, resp.ReceivedAt); after > 0 {
			return after
		}
		return fallback
	}
	switch {
	case (code == http.StatusOK || code == http.StatusMultiStatus) && !isEvent:
		return d.batch(req, resp)
	case code >= 200 && code <= 299:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
	case code == http.StatusBadRequest:
		return refused(req, resp, e, isEvent)
	case code == http.StatusUnauthorized:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: reason("") + ": check access_token: a private app's access token (Settings > Integrations > Private Apps > the app > Auth); a rotated token or a deleted app stops working"})
	case code == http.StatusForbidden:
		scope := "crm.objects.contacts.write"
		if isEvent {
			scope = "analytics.behavioral_events.send"
		}
		r := reason("") + ": the private app needs the " + scope + " scope (Settings > Integrations > Private Apps > the app > Scopes)"
		if missing := e.Context["missingScopes"]; len(missing) > 0 {
			r += "; missing: " + strings.Join(missing, ", ")
		}
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: r})
	case code == http.StatusConflict && isEvent:
		return repeated(req, resp, e)
	case code == http.StatusConflict:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason("HubSpot reports a conflict: ")})
	case code == http.StatusLocked:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, RetryAfter: wait(lockWait),
			Reason: reason("") + " (HubSpot locks a record for 2 s during a burst of writes)"})
	case code == http.StatusTooManyRequests:
		r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
		r.Reason = reason("")
		switch e.PolicyName {
		case "DAILY":
			r.Quota = true
			if r.RetryAfter == 0 && d.zone != nil {
				r.RetryAfter = untilMidnight(resp.ReceivedAt, d.zone)
			}
			r.Reason += " (the daily limit resets at midnight in the account's time zone: set time_zone to wait exactly that long)"
		case "":
		default:
			if r.RetryAfter == 0 {
				r.RetryAfter = secondlyWait
			}
		}
		return destinations.Fill(n, r)
	case code == 477:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, RetryAfter: wait(migrationWait),
			Reason: destinations.StatusReason(code, resp.Body) + ": the account is being migrated between data centers (HubSpot says: typically up to 24 hours)"})
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

// untilMidnight is the time from now to the next midnight in loc.
func untilMidnight(now time.Time, loc *time.Location) time.Duration {
	t := now.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc).Sub(t)
}

// details lists the detailed errors of e, if any.
func details(e apiError) string {
	var parts []string
	for _, x := range e.Errors {
		p := x.Message
		if x.Code != "" {
			p = x.Code + ": " + p
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

// batchInput holds the fields of an input, contact or occurrence, that
// identify it in HubSpot's errors.
type batchInput struct {
	ID                 string `json:"id"`
	ObjectWriteTraceID string `json:"objectWriteTraceId"`
	UUID               string `json:"uuid"`
}

// inputs reads back the inputs of a batch request, in the order of
// req.Events.
func inputs(req *destinations.Request) ([]batchInput, error) {
	var body struct {
		Inputs []batchInput `json:"inputs"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return nil, err
	}
	if len(body.Inputs) != len(req.Events) {
		return nil, fmt.Errorf("%d inputs for %d events", len(body.Inputs), len(req.Events))
	}
	return body.Inputs, nil
}

// owners returns the positions in req.Events of the inputs e names: a
// contact by objectWriteTraceId or by email (the upsert's id), an
// occurrence by uuid, in its context or the contexts of its detailed
// errors; an occurrence also by a uuid quoted in a message.
func owners(e apiError, ins []batchInput) []int {
	named := map[string]bool{}
	add := func(ctx map[string][]string) {
		for _, vs := range ctx {
			for _, v := range vs {
				named[v] = true
			}
		}
	}
	add(e.Context)
	texts := []string{e.Message}
	for _, x := range e.Errors {
		add(x.Context)
		texts = append(texts, x.Message)
	}
	var out []int
	for j, in := range ins {
		switch {
		case in.UUID != "":
			if named[in.UUID] || slices.ContainsFunc(texts, func(t string) bool { return strings.Contains(t, in.UUID) }) {
				out = append(out, j)
			}
		case named[in.ObjectWriteTraceID] || named[in.ID]:
			out = append(out, j)
		}
	}
	return out
}

// errorResult is the outcome of an input an error names.
func errorResult(e apiError, code int) destinations.Result {
	msg := e.Message
	if e.Category != "" {
		msg = e.Category + ": " + msg
	}
	msg = "HubSpot refused the contact: " + msg + details(e)
	if e.Category == "RATE_LIMITS" {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Reason: msg}
	}
	return destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: msg}
}

// batch resolves a 200 or 207 upsert answer per event.
func (d *destination) batch(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n, code := len(req.Events), resp.StatusCode
	var a batchAnswer
	if err := json.Unmarshal(resp.Body, &a); err != nil || (a.Status == "" && a.Results == nil && a.Errors == nil) {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: fmt.Sprintf("HubSpot answered %d with a body that is not a batch answer: %s", code, destinations.Snippet(resp.Body, 200))})
	}
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
	if len(a.Errors) == 0 {
		return out
	}
	ins, err := inputs(req)
	if err != nil {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "integration bug: cannot read back the upsert to resolve HubSpot's errors: " + err.Error()})
	}
	var unplaced []string
	for _, e := range a.Errors {
		js := owners(e, ins)
		if len(js) == 0 {
			unplaced = append(unplaced, e.Message)
			continue
		}
		for _, j := range js {
			out[j] = errorResult(e, code)
		}
	}
	if len(unplaced) > 0 {
		// An error that names no input may concern any contact not
		// already resolved: an upsert is idempotent, so send them again.
		destinations.RetryUnresolved(out, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "HubSpot reported errors that name no contact: " + strings.Join(unplaced, "; ")})
	}
	return out
}

// refused resolves a 400 batch answer: HubSpot wrote none of the batch.
// The inputs its errors name are rejected and the others retried, to go
// again without them. When the errors name none, the batch is split in
// halves until the bad input is alone (Result.Split); an input alone is
// rejected with HubSpot's message.
func refused(req *destinations.Request, resp *destinations.Response, e apiError, isEvent bool) []destinations.Result {
	n, code := len(req.Events), resp.StatusCode
	what, whats := "contact", "contacts"
	if isEvent {
		what, whats = "event occurrence", "event occurrences"
	}
	msg := destinations.StatusReason(code, resp.Body)
	if e.Message != "" {
		refusedWhat := "the " + what
		if n > 1 {
			refusedWhat = "the batch"
		}
		msg = fmt.Sprintf("HTTP %d: HubSpot refused %s: %s%s", code, refusedWhat, e.Message, details(e))
	}
	ins, err := inputs(req)
	if err != nil || n == 1 {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: msg})
	}
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
		Reason: "HubSpot refused the batch because of another " + what + " in it; this one was not written and goes again without it"})
	named := 0
	reject := func(j int, m string) {
		if out[j].Outcome == destinations.Rejected {
			out[j].Reason += "; " + m
			return
		}
		out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: "HubSpot refused the " + what + ": " + m}
		named++
	}
	// Each detailed error names its input in its own context; the
	// top-level context and message may name more.
	for _, x := range e.Errors {
		m := x.Message
		if x.Code != "" {
			m = x.Code + ": " + m
		}
		for _, j := range owners(apiError{Context: x.Context, Message: x.Message}, ins) {
			reject(j, m)
		}
	}
	for _, j := range owners(apiError{Context: e.Context, Message: e.Message}, ins) {
		if out[j].Outcome != destinations.Rejected {
			reject(j, e.Message)
		}
	}
	if named == 0 {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: msg + fmt.Sprintf(" (the error names none of the %d %s: the batch goes again in halves to find the one refused)", n, whats)})
	}
	return out
}

// repeated resolves a 409 to an occurrence batch: an occurrence whose
// uuid HubSpot already accepted (see the package doc) is delivered. The
// others of a batch are retried; when the answer names none, the batch is
// split until the repeated occurrence is alone.
func repeated(req *destinations.Request, resp *destinations.Response, e apiError) []destinations.Result {
	n, code := len(req.Events), resp.StatusCode
	done := destinations.Result{Outcome: destinations.Delivered, StatusCode: code}
	ins, err := inputs(req)
	if err != nil || n == 1 {
		return destinations.Fill(n, done)
	}
	js := owners(e, ins)
	if len(js) == 0 {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: destinations.StatusReason(code, resp.Body) + " (HubSpot already has one of these occurrences but does not say which: the batch goes again in halves)"})
	}
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
		Reason: "HubSpot refused the batch because another occurrence in it was already recorded; this one goes again without it"})
	for _, j := range js {
		out[j] = done
	}
	return out
}
