// Package marketo upserts leads in Adobe Marketo Engage from identify calls,
// through the REST API.
//
// The formats come from Marketo's public developer documentation:
//
//   - Authentication,
//     https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/authentication
//     (client credentials at <instance>/identity/oauth/token, the token's
//     expires_in, the Authorization: Bearer header, the only one accepted
//     once the access_token query parameter is removed);
//   - Leads, https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/leads
//     (POST /rest/v1/leads.json with action, lookupField, partitionName,
//     input; at most 300 records per call; one result per record, in input
//     order);
//   - Error Codes,
//     https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/error-codes
//     (HTTP-, response- and record-level errors; 1 MB request limit; 6xx
//     means the request was not executed; 606, more than 100 calls in 20
//     seconds; 607, the daily quota; 615, more than 10 concurrent calls);
//   - Daily API limit reset,
//     https://experienceleague.adobe.com/en/docs/experience-cloud-kcs/kbarticles/ka-29461
//     (the quota resets at midnight US Central time: 10 PM Pacific, 1 AM
//     Eastern).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; each says which example it follows, or
// that it is modelled, not recorded. Re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Identify calls are batched, up to 300 leads and 1 MB, into
//
//	POST <base_url>/rest/v1/leads.json
//	{"action": "createOrUpdate", "lookupField": "email", "input": [{...}, ...]}
//
// Each lead carries the standard fields the trait helpers read (email,
// firstName, lastName, phone, company, title, website, address, city,
// state, postalCode, country, dateOfBirth) and the traits that the `fields`
// setting maps to Marketo fields. Other traits are left out: Marketo skips
// a whole lead that names a field it does not have (code 1006).
//
// The access token comes from the identity endpoint and is cached until a
// minute before it expires; a 600, 601 or 602 answer drops it so that the
// retry fetches a new one.
//
// # Deduplication
//
// Marketo has no idempotency key for leads, but createOrUpdate by the
// lookup field is idempotent: a retried batch updates the same leads with
// the same values, and counts nothing twice. So Integration.Deduplicates
// is true.
//
// # Outcomes
//
// Marketo answers almost every failure with HTTP 200, never delivered:
//
//   - "success": false with "errors" [{code, message}] fails the whole
//     request. 600/601/602 (token missing, invalid or expired: a new token
//     is fetched), 500, 502, 604 (timeout), 606 (rate limit: retried after
//     the 20 s window), 607 (daily quota: a Result.Quota until midnight US
//     Central time), 608, 611, 614, 615 (more than 10 concurrent calls) and
//     713 are retried; the others, such as 603 (access denied) or 609
//     (invalid JSON), are rejected with the code and message.
//   - "success": true with one "result" entry per lead, in input order (or
//     by its seq): "created" or "updated" is delivered; "skipped" is
//     rejected with its "reasons" (1003 invalid data, 1004 lead not found,
//     1006 field not found, 1007 several leads match, ...), except for the
//     few reasons that pass with time (1016, 1019, 1029), which are retried.
//   - HTTP 413 (more than 1 MB) splits a batch in halves (Result.Split);
//     other HTTP statuses are classified as usual.
//
// A failure to get a token rejects every event when the identity endpoint
// refuses the client id and secret (HTTP 401), and retries them otherwise.
package marketo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	_ "time/tzdata" // the quota's time zone, wherever the host lacks a zone database

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// The documented limits of a leads call.
const (
	MaxBatchEvents = 300
	MaxBatchBytes  = 1 << 20
)

// Integration is the Marketo integration.
var Integration = &destinations.Integration{
	Type: "marketo",
	Settings: destinations.Schema{
		{
			Name:        "base_url",
			Type:        destinations.String,
			Required:    true,
			Description: "The instance's REST endpoint without /rest, such as https://123-ABC-456.mktorest.com (Admin > Integration > Web Services).",
		},
		{
			Name:        "client_id",
			Type:        destinations.String,
			Required:    true,
			Description: "Client ID of the LaunchPoint custom service (Admin > Integration > LaunchPoint > View Details).",
		},
		{
			Name:        "client_secret",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "Client Secret of the same custom service. Its API-only user needs the Read-Write Lead permission.",
		},
		{
			Name:        "lookup_field",
			Type:        destinations.String,
			Default:     "email",
			Description: "The lead field Marketo deduplicates on. Leads without a value for it are rejected without a request.",
		},
		{
			Name:        "fields",
			Type:        destinations.StringMap,
			Description: "Maps trait names to Marketo field API names, for custom fields: {plan: planTier}. The field must exist in Marketo.",
		},
		{
			Name:        "partition_name",
			Type:        destinations.String,
			Description: "The lead partition new leads go to. Empty: the default partition.",
		},
	},
	EventTypes:   []string{event.Identify},
	Batch:        destinations.BatchLimits{MaxEvents: MaxBatchEvents, MaxBytes: MaxBatchBytes},
	Deduplicates: true,
	New:          New,
}

// destination is one configured Marketo instance.
type destination struct {
	base        string
	clientID    string
	secret      string
	lookupField string
	fields      map[string]string
	partition   string
	api         *destinations.Sender // the requests outside the Plan
	now         func() time.Time
	tokens      destinations.TokenCache
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Marketo destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	return newDestination(cfg, time.Now)
}

func newDestination(cfg destinations.Config, now func() time.Time) (*destination, error) {
	s := cfg.Settings
	d := &destination{
		base:        strings.TrimRight(s.String("base_url"), "/"),
		clientID:    s.String("client_id"),
		secret:      s.String("client_secret"),
		lookupField: s.String("lookup_field"),
		partition:   s.String("partition_name"),
		api:         cfg.Sender(now),
		now:         now,
	}
	d.fields = s.StringMap("fields")
	if !destinations.IsHTTPURL(d.base) {
		return nil, fmt.Errorf("base_url: expected the instance's https URL, such as https://123-ABC-456.mktorest.com, found %q", d.base)
	}
	d.base = strings.TrimSuffix(d.base, "/rest")
	if d.lookupField == "" {
		d.lookupField = "email"
	}
	return d, nil
}

// leadFields are Marketo's standard lead fields for the usual traits.
var leadFields = traits.ContactFields{
	Email: "email", FirstName: "firstName", LastName: "lastName", Phone: "phone",
	Company: "company", Title: "title", Website: "website",
	Street: "address", City: "city", State: "state", PostalCode: "postalCode", Country: "country",
	Birthday: "dateOfBirth",
}

// lead builds the Marketo lead of an identify call.
func (d *destination) lead(m map[string]any) map[string]any {
	lead := traits.Record{}
	lead.PutContact(m, leadFields)
	lead.Map(m, d.fields)
	return lead
}

// syncRequest is the body of a leads call.
type syncRequest struct {
	Action        string            `json:"action"`
	LookupField   string            `json:"lookupField"`
	PartitionName string            `json:"partitionName,omitempty"`
	Input         []json.RawMessage `json:"input"`
}

// Transform batches identify calls into leads calls, fetching an access
// token first when the cached one is missing or about to expire.
func (d *destination) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var items []plan.Item
	for i := range events {
		if events[i].Type != event.Identify {
			b.Unsupported(i, "Marketo takes identify calls only, not "+events[i].Type)
			continue
		}
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		lead := d.lead(m)
		if _, ok := lead[d.lookupField]; !ok {
			b.Reject(i, fmt.Sprintf("the lead has no %s, the lookup_field Marketo deduplicates leads on", d.lookupField))
			continue
		}
		body, err := json.Marshal(lead)
		if err != nil {
			b.Reject(i, "the lead cannot be encoded: "+err.Error())
			continue
		}
		items = append(items, plan.Item{Event: i, Body: body})
	}
	if len(items) == 0 {
		return b.Plan, nil
	}

	token, rejected, err := d.accessToken(ctx)
	if err != nil {
		b.Fail(items, rejected, err.Error())
		return b.Plan, nil
	}
	auth := "Bearer " + token
	const envelope = 128 // the action, lookupField and partitionName around input
	for _, run := range plan.Batches(items, MaxBatchEvents, MaxBatchBytes, 1, envelope+len(d.partition)) {
		req := syncRequest{Action: "createOrUpdate", LookupField: d.lookupField, PartitionName: d.partition}
		idx := make([]int, len(run))
		for j, it := range run {
			req.Input = append(req.Input, it.Body)
			idx[j] = it.Event
		}
		body, err := json.Marshal(req)
		if err != nil {
			return destinations.Plan{}, err
		}
		b.Add(&destinations.Request{
			Method: http.MethodPost,
			URL:    d.base + "/rest/v1/leads.json",
			Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {auth}},
			Body:   body,
			Events: idx,
		})
	}
	return b.Plan, nil
}

// tokenAnswer is the identity endpoint's answer.
type tokenAnswer struct {
	AccessToken      string `json:"access_token"`
	ExpiresIn        int    `json:"expires_in"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// accessToken returns a valid access token, fetching one when needed.
// rejected reports that the identity endpoint refused the credentials,
// which no retry fixes.
func (d *destination) accessToken(ctx context.Context) (token string, rejected bool, err error) {
	now := d.now()
	token, err = d.tokens.Get(now, func() (string, time.Time, error) {
		a, rej, err := d.fetchToken(ctx)
		rejected = rej
		if err != nil {
			return "", time.Time{}, err
		}
		// A minute's margin, so that a token does not expire between
		// Transform and the request.
		return a.AccessToken, now.Add(time.Duration(a.ExpiresIn)*time.Second - time.Minute), nil
	})
	return token, rejected, err
}

// fetchToken asks the identity endpoint for a token.
func (d *destination) fetchToken(ctx context.Context) (a tokenAnswer, rejected bool, err error) {
	q := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {d.clientID},
		"client_secret": {d.secret},
	}
	// Do's error never quotes the URL, which holds the client secret.
	resp, err := d.api.Do(ctx, &destinations.Request{Method: http.MethodGet, URL: d.base + "/identity/oauth/token?" + q.Encode()})
	if errors.Is(err, destinations.ErrInvalidRequest) {
		return a, true, fmt.Errorf("base_url: cannot build the token request: %w", err)
	}
	if err != nil {
		return a, false, fmt.Errorf("Marketo identity endpoint: %v", err)
	}
	// A read error leaves a short body, which then fails to parse: the
	// status code decides.
	body := resp.Body
	_ = json.Unmarshal(body, &a)
	switch {
	case resp.StatusCode == http.StatusOK && a.AccessToken != "":
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusBadRequest:
		msg := a.ErrorDescription
		if msg == "" {
			msg = destinations.Snippet(body, 200)
		}
		return a, true, fmt.Errorf("Marketo refused client_id and client_secret (HTTP %d: %s): copy them again from Admin > Integration > LaunchPoint > View Details, and check base_url is this instance's",
			resp.StatusCode, msg)
	case destinations.RetryableStatus(resp.StatusCode):
		return a, false, fmt.Errorf("Marketo identity endpoint: %s", destinations.StatusReason(resp.StatusCode, body))
	default:
		return a, true, fmt.Errorf("Marketo identity endpoint gave no token: %s", destinations.StatusReason(resp.StatusCode, body))
	}
	return a, false, nil
}

// answer is the body of a REST API response.
type answer struct {
	RequestID string      `json:"requestId"`
	Success   *bool       `json:"success"`
	Errors    []codedText `json:"errors"`
	Result    []struct {
		ID      json.Number `json:"id"`
		Seq     *int        `json:"seq"`
		Status  string      `json:"status"`
		Reasons []codedText `json:"reasons"`
	} `json:"result"`
}

// codedText is an error or a reason: Marketo quotes its codes ("601").
type codedText struct {
	Code    json.Number `json:"code"`
	Message string      `json:"message"`
}

func (c codedText) String() string { return string(c.Code) + " " + c.Message }

// Classify reads a leads call's answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	if resp.StatusCode == http.StatusRequestEntityTooLarge && n > 1 {
		// More than 1 MB, which the batching should have prevented: send
		// the leads again in halves.
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: resp.StatusCode, Split: true,
			Reason: destinations.StatusReason(resp.StatusCode, resp.Body) + " (Marketo takes at most 1 MB per call: the leads go again in halves)"})
	}
	if resp.StatusCode != http.StatusOK {
		return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
	}
	var a answer
	if err := json.Unmarshal(resp.Body, &a); err != nil || a.Success == nil {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: resp.StatusCode,
			Reason: "Marketo answered 200 with a body that is not its JSON envelope: " + destinations.Snippet(resp.Body, 200)})
	}
	if !*a.Success {
		var e codedText
		if len(a.Errors) > 0 {
			e = a.Errors[0]
		}
		r := d.requestError(e, req, resp.ReceivedAt)
		r.StatusCode = resp.StatusCode
		return destinations.Fill(n, r)
	}
	if len(a.Result) != n {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: resp.StatusCode,
			Reason: fmt.Sprintf("Marketo answered %d results for %d leads, so the outcome of each is unknown", len(a.Result), n)})
	}
	out := make([]destinations.Result, n)
	for j, rec := range a.Result {
		k := j
		if rec.Seq != nil && *rec.Seq >= 0 && *rec.Seq < n {
			k = *rec.Seq
		}
		out[k] = recordResult(rec.Status, rec.Reasons)
		out[k].StatusCode = resp.StatusCode
	}
	for i := range out {
		if out[i].Outcome == 0 {
			// Two results claimed one seq: the other lead's fate is unknown.
			out[i] = destinations.Result{Outcome: destinations.Retryable, StatusCode: resp.StatusCode,
				Reason: "Marketo's answer has no result for this lead"}
		}
	}
	return out
}

// central is US Central time, where Marketo's daily quota resets at
// midnight ("12:00 AM Central"; 10:00 PM Pacific, 01:00 AM Eastern, so
// daylight saving time included).
var central = mustLoad("America/Chicago")

func mustLoad(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err) // time/tzdata is linked in: it has every zone
	}
	return loc
}

// rateWindow is the window of Marketo's rate limit (100 calls per 20 s).
const rateWindow = 20 * time.Second

// requestError classifies a response-level error, which fails the whole
// request: Marketo did not execute it ("6xx codes always indicate that a
// request failed completely").
func (d *destination) requestError(e codedText, req *destinations.Request, now time.Time) destinations.Result {
	reason := "Marketo refused the request: " + e.String()
	retry := func(after time.Duration, hint string) destinations.Result {
		return destinations.Result{Outcome: destinations.Retryable, Reason: reason + hint, RetryAfter: after}
	}
	switch e.Code {
	case "600", "601", "602":
		// Forget the token, so that the next Transform fetches another.
		d.tokens.Failed(req.Header.Get("Authorization"))
		return retry(0, "; a new access token is fetched for the retry")
	case "606":
		// The window is 20 seconds: waiting it out is enough.
		return retry(rateWindow, "")
	case "607":
		r := retry(untilMidnight(now, central), "; the daily quota resets at midnight US Central time")
		r.Quota = true
		return r
	case "615":
		return retry(0, "; another integration of this instance is also calling the API (10 calls at once at most)")
	case "500", "502", "604", "608", "611", "614", "713":
		return retry(0, "")
	case "603":
		return destinations.Result{Outcome: destinations.Rejected,
			Reason: reason + ": the custom service's API-only user needs a role with the Read-Write Lead permission, and the IP allowlist (if on) must let fanout in"}
	case "":
		return destinations.Result{Outcome: destinations.Retryable,
			Reason: "Marketo answered success: false without an error code"}
	}
	return destinations.Result{Outcome: destinations.Rejected, Reason: reason}
}

// untilMidnight is the time from now to the next midnight in loc.
func untilMidnight(now time.Time, loc *time.Location) time.Duration {
	t := now.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc).Sub(t)
}

// recordResult classifies one lead's entry of a successful call.
func recordResult(status string, reasons []codedText) destinations.Result {
	switch status {
	case "created", "updated":
		return destinations.Result{Outcome: destinations.Delivered}
	}
	parts := make([]string, len(reasons))
	retry := len(reasons) > 0
	for i, r := range reasons {
		parts[i] = r.String()
		switch r.Code {
		case "1016", "1019", "1029": // too many imports, import in progress, queue full
		default:
			retry = false
		}
	}
	reason := fmt.Sprintf("Marketo %s the lead", status)
	if len(parts) > 0 {
		reason += ": " + strings.Join(parts, "; ")
	}
	if hint := hints[firstCode(reasons)]; hint != "" {
		reason += " (" + hint + ")"
	}
	if retry {
		return destinations.Result{Outcome: destinations.Retryable, Reason: reason}
	}
	return destinations.Result{Outcome: destinations.Rejected, Reason: reason}
}

func firstCode(reasons []codedText) json.Number {
	if len(reasons) == 0 {
		return ""
	}
	return reasons[0].Code
}

// hints say what to do about the commonest record-level reasons.
var hints = map[json.Number]string{
	"1003": "a value is not valid for its Marketo field: check the trait's type and format",
	"1004": "no lead matches the lookup field",
	"1005": "the lead already exists",
	"1006": "a field in the `fields` setting does not exist in Marketo: create it, or fix the mapping",
	"1007": "several leads share this lookup value in Marketo: merge them, or choose another lookup_field",
	"1008": "the API-only user has no access to the partition: check partition_name",
}
