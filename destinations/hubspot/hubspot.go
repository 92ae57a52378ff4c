// Package hubspot upserts contacts in HubSpot from identify calls and sends
// track calls as custom behavioral event occurrences, through HubSpot's
// CRM v3 and Events v3 APIs.
//
// The formats come from HubSpot's public developer documentation:
//
//   - Upsert a batch of contacts,
//     https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
//     (POST /crm/v3/objects/contacts/batch/upsert with inputs of {id,
//     idProperty, properties, objectWriteTraceId}; results and, in a 207
//     multi-status answer, errors);
//   - Contacts, https://developers.hubspot.com/docs/api-reference/latest/crm/objects/contacts/guide
//     (email as the unique identifier; the default properties);
//   - Send custom event occurrences,
//     https://developers.hubspot.com/docs/api-reference/legacy/events/send-event-data/guide
//     and the endpoint reference (POST /events/v3/send with eventName, the
//     fully qualified pe<HubID>_<name>, email, occurredAt, properties, and
//     uuid: "when multiple events have the same ID within a year, the first
//     will be accepted and all others will be rejected"; no body on success);
//   - Error handling, https://developers.hubspot.com/docs/api-reference/error-handling
//     (the error body: status, message, correlationId, category, errors with
//     message, code, in, context; 207, 401, 403, 423 with its 2 s lock, 429,
//     477 with Retry-After, 502/504, 503; multi-status with
//     objectWriteTraceId);
//   - API usage guidelines, https://developers.hubspot.com/docs/api/usage-details
//     (the 429 body: "errorType": "RATE_LIMIT" and "policyName", DAILY or
//     the ten-secondly window).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with a private app's access
// token (see destinations/README.md) when you have one.
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
// error concerns. An upsert by email is idempotent: a retried batch writes
// the same values. HubSpot refuses a batch that names one email twice, so
// a second identify of the same email goes in a later request, after the
// first.
//
// Track calls whose event name the `events` setting maps to a HubSpot
// event go one per request to /events/v3/send, associated with the contact
// by email, with uuid derived from the messageId (EventUUID) so that a
// retried occurrence is not recorded twice. Other track calls are
// unsupported.
//
// # Outcomes
//
// 200 and 204 are delivered. A 207 (or a 200 listing errors) is resolved per
// event: the inputs its errors name by objectWriteTraceId are rejected
// (VALIDATION_ERROR and the like) or retried (RATE_LIMITS), the others were
// written. A 400 whose errors name inputs rejects those and retries the
// others, which HubSpot did not write because the batch failed as a whole;
// a 400 naming none rejects every event with HubSpot's message. 401 and 403
// reject with the token and scopes to check. A 409 conflict on a contact is
// rejected with HubSpot's message; on an event occurrence it means an
// occurrence with the same uuid was already accepted, so the event is
// delivered. 423 is retried after 2 s, 429 after its Retry-After (or 10 s
// for the ten-secondly window; the daily limit resets at midnight in the
// account's time zone), 477 after its Retry-After, 5xx with backoff.
package hubspot

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
	"github.com/google/uuid"
)

// MaxBatchInputs is the documented number of inputs of a batch upsert.
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
			Name:        "api_url",
			Type:        destinations.String,
			Default:     "https://api.hubapi.com",
			Description: "The API base URL, for a proxy or a test server.",
		},
	},
	EventTypes: []string{event.Identify, event.Track},
	Batch:      destinations.BatchLimits{MaxEvents: MaxBatchInputs},
	New:        New,
}

// destination is one configured HubSpot account.
type destination struct {
	base       string
	auth       string
	events     map[string]string
	properties map[string]string
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
	d := &destination{base: strings.TrimRight(base, "/"), auth: "Bearer " + token}
	d.events = s.StringMap("events")
	d.properties = s.StringMap("properties")
	for name, fq := range d.events {
		if !strings.HasPrefix(fq, "pe") || !strings.Contains(fq, "_") {
			return nil, fmt.Errorf("events: %q maps to %q; expected a fully qualified event name such as pe1234567_signed_up (HubSpot > Data Management > Custom Events > the event > Details)", name, fq)
		}
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

// Transform batches identify calls into contacts upserts and makes one
// event occurrence request per mapped track call.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	// Round n holds the n-th identify of each email, so that no batch
	// names an email twice and a later identify is written later.
	var rounds plan.Rounds
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
			req, reason, unsupported := d.occurrence(events[i].MessageID, m)
			switch {
			case unsupported:
				b.Unsupported(i, reason)
			case reason != "":
				b.Reject(i, reason)
			default:
				req.Events = []int{i}
				b.Add(req)
			}
		default:
			b.Unsupported(i, "HubSpot takes identify and track calls, not "+events[i].Type)
		}
	}
	const envelope = len(`{"inputs":[]}`)
	for _, round := range rounds.Of {
		for _, run := range plan.Batches(round, MaxBatchInputs, 0, 1, envelope) {
			inputs, idx := plan.JSONArray(run)
			body := make([]byte, 0, len(inputs)+envelope)
			body = append(append(append(body, `{"inputs":`...), inputs...), '}')
			b.Add(&destinations.Request{
				Method: http.MethodPost,
				URL:    d.base + "/crm/v3/objects/contacts/batch/upsert",
				Header: d.header(),
				Body:   body,
				Events: idx,
			})
		}
	}
	return b.Plan, nil
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

// occurrenceBody is the body of /events/v3/send.
type occurrenceBody struct {
	EventName  string         `json:"eventName"`
	Email      string         `json:"email"`
	OccurredAt string         `json:"occurredAt,omitempty"`
	UUID       string         `json:"uuid"`
	Properties map[string]any `json:"properties"`
}

// occurrence builds the event occurrence request of a track call.
func (d *destination) occurrence(messageID string, m map[string]any) (req *destinations.Request, reason string, unsupported bool) {
	name := traits.EventName(m)
	fq, ok := d.events[name]
	if !ok {
		return nil, fmt.Sprintf("the track event %q has no HubSpot custom event in the `events` setting", name), true
	}
	email := traits.Email(m)
	if email == "" {
		return nil, "the track call has no email (in properties or context.traits), which HubSpot needs to associate the occurrence with a contact", false
	}
	body := occurrenceBody{
		EventName:  fq,
		Email:      strings.ToLower(email),
		UUID:       EventUUID(messageID),
		Properties: traits.Properties(m),
	}
	if body.Properties == nil {
		body.Properties = map[string]any{}
	}
	if ts, ok := traits.Timestamp(m); ok {
		body.OccurredAt = ts.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, "the track call cannot be encoded: " + err.Error(), false
	}
	return &destinations.Request{
		Method: http.MethodPost,
		URL:    d.base + "/events/v3/send",
		Header: d.header(),
		Body:   data,
	}, "", false
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

// Classify reads an upsert's or an occurrence's answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	isEvent := strings.HasSuffix(req.URL, "/events/v3/send")
	var e apiError
	_ = json.Unmarshal(resp.Body, &e)
	reason := func(prefix string) string {
		msg := e.Message
		if msg == "" {
			return destinations.StatusReason(code, resp.Body)
		}
		return fmt.Sprintf("HTTP %d: %s%s", code, prefix, msg)
	}
	switch {
	case code == http.StatusOK || code == http.StatusMultiStatus:
		if isEvent {
			return destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
		}
		return d.batch(req, resp)
	case code >= 200 && code <= 299:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
	case code == http.StatusBadRequest:
		if isEvent {
			return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason("HubSpot refused the event occurrence: ") + details(e)})
		}
		return d.refusedBatch(req, resp, e)
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
	case code == http.StatusConflict:
		if isEvent {
			// The first occurrence with this uuid was accepted (see the
			// package doc): this is a retry of a delivered event.
			return destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
		}
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: reason("HubSpot reports a conflict: ")})
	case code == http.StatusLocked:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, RetryAfter: 2 * time.Second,
			Reason: reason("") + " (HubSpot locks a record for 2 s during a burst of writes)"})
	case code == http.StatusTooManyRequests:
		r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
		r.Reason = reason("")
		if r.RetryAfter == 0 {
			switch e.PolicyName {
			case "DAILY":
				r.Reason += " (the daily limit resets at midnight in the account's time zone)"
			case "":
			default:
				r.RetryAfter = 10 * time.Second
			}
		}
		return destinations.Fill(n, r)
	case code == 477:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			RetryAfter: destinations.ParseRetryAfter(resp.Header, resp.ReceivedAt),
			Reason:     destinations.StatusReason(code, resp.Body) + ": the account is being migrated between data centers"})
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
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

// inputs reads back the trace ids and emails of an upsert request, in the
// order of req.Events.
func inputs(req *destinations.Request) (traceIDs, emails []string, err error) {
	var body struct {
		Inputs []upsertInput `json:"inputs"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return nil, nil, err
	}
	if len(body.Inputs) != len(req.Events) {
		return nil, nil, fmt.Errorf("%d inputs for %d events", len(body.Inputs), len(req.Events))
	}
	for _, in := range body.Inputs {
		traceIDs = append(traceIDs, in.ObjectWriteTraceID)
		emails = append(emails, in.ID)
	}
	return traceIDs, emails, nil
}

// owners returns the positions in req.Events of the inputs e names: by
// objectWriteTraceId, or by email (the upsert's id), in its context or
// the contexts of its detailed errors.
func owners(e apiError, traceIDs, emails []string) []int {
	named := map[string]bool{}
	add := func(ctx map[string][]string) {
		for _, vs := range ctx {
			for _, v := range vs {
				named[v] = true
			}
		}
	}
	add(e.Context)
	for _, x := range e.Errors {
		add(x.Context)
	}
	var out []int
	for j := range traceIDs {
		if named[traceIDs[j]] || named[emails[j]] {
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
	traceIDs, emails, err := inputs(req)
	if err != nil {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: "integration bug: cannot read back the upsert to resolve HubSpot's errors: " + err.Error()})
	}
	var unplaced []string
	for _, e := range a.Errors {
		js := owners(e, traceIDs, emails)
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

// refusedBatch resolves a 400 upsert answer: HubSpot wrote none of the
// batch. The inputs its errors name are rejected; the others are retried,
// to go again without them.
func (d *destination) refusedBatch(req *destinations.Request, resp *destinations.Response, e apiError) []destinations.Result {
	n, code := len(req.Events), resp.StatusCode
	all := destinations.Result{Outcome: destinations.Rejected, StatusCode: code}
	if e.Message != "" {
		all.Reason = "HubSpot refused the batch: " + e.Message + details(e)
	} else {
		all.Reason = destinations.StatusReason(code, resp.Body)
	}
	traceIDs, emails, err := inputs(req)
	if err != nil {
		return destinations.Fill(n, all)
	}
	out := destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
		Reason: "HubSpot refused the batch because of another contact in it; this one was not written and goes again without it"})
	named := 0
	reject := func(j int, msg string) {
		if out[j].Outcome == destinations.Rejected {
			out[j].Reason += "; " + msg
		} else {
			out[j] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code, Reason: "HubSpot refused the contact: " + msg}
			named++
		}
	}
	// Each detailed error names its input in its own context; the
	// top-level context may name more.
	for _, x := range e.Errors {
		msg := x.Message
		if x.Code != "" {
			msg = x.Code + ": " + msg
		}
		for _, j := range owners(apiError{Context: x.Context}, traceIDs, emails) {
			reject(j, msg)
		}
	}
	for _, j := range owners(apiError{Context: e.Context}, traceIDs, emails) {
		if out[j].Outcome != destinations.Rejected {
			reject(j, e.Message)
		}
	}
	if named == 0 {
		// Nothing says which contact: with one, it is that one.
		return destinations.Fill(n, all)
	}
	return out
}
