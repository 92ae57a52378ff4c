// Package salesforce upserts Leads or Contacts in Salesforce from identify
// calls, in batches, through the REST API's sObject Collections.
//
// The formats come from Salesforce's public documentation:
//
//   - Upsert Records Using sObject Collections,
//     https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_upsert.htm
//     (PATCH /services/data/vXX.X/composite/sobjects/<object>/<external ID
//     field>, API version 46.0 and later, with {"allOrNone": false,
//     "records": [...]}: up to 200 records of the object in the URL, each
//     with an attributes map naming its type and the external ID field in
//     the body; records are upserted in order, and the answer is 200 with
//     one result per record in the same order, {"id", "success", "errors",
//     "created"}, the errors of a failed record as {"statusCode",
//     "message", "fields"}; 400 when the request is not well formed);
//   - Status Codes and Error Responses,
//     https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm
//     (the [{"message", "errorCode", "fields"}] error body; 401 for an
//     expired or invalid session; 403 REQUEST_LIMIT_EXCEEDED when the org's
//     API request limit is used up; 404 for an unknown object or field);
//   - API Request Limits and Allocations,
//     https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/salesforce-app-limits-platform-api.html
//     (REQUEST_LIMIT_EXCEEDED for the total API request allocation, counted
//     over the last 24 hours, and for the concurrent limit on requests of
//     20 seconds or longer), and System Overview: API Usage,
//     https://help.salesforce.com/s/articleView?id=xcloud.setup_system_overview_api.htm
//     (calls stay blocked until the usage of the preceding 24 hours drops
//     below the limit);
//   - OAuth 2.0 Client Credentials Flow for Server-to-Server Integration,
//     https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_client_credentials_flow.htm,
//     and OAuth 2.0 Username-Password Flow for Special Scenarios,
//     https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_username_password_flow.htm
//     (POST /services/oauth2/token as a form; the token answer, which has
//     no expiry; the {"error", "error_description"} failures);
//   - the Lead and Contact pages of the Object Reference,
//     https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_lead.htm
//     (field names; LastName and, on a Lead, Company are required).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Identify calls are batched, up to MaxBatchRecords per request, into one
// upsert on the external ID field:
//
//	PATCH <instance_url>/services/data/v62.0/composite/sobjects/Lead/Email
//	{"allOrNone": false, "records": [{"attributes": {"type": "Lead"},
//	 "Email": "ada@example.com", "FirstName": "Ada", "LastName": "Lovelace", ...}]}
//
// allOrNone is false so that one refused record does not roll back the
// others. Each record carries the external ID field with the event's value
// (its email, or its userId: external_id_value), the standard fields the
// trait helpers read (names, email, phone, title, website, postal address,
// and a Contact's Birthdate) and the traits that the `fields` setting maps
// to Salesforce fields. Salesforce requires LastName, and Company on a
// Lead: an identify call without them sends "[not provided]", as is common
// practice. Because the upsert cannot tell creating from updating in
// advance, that placeholder also overwrites the field of an existing record
// when a later identify call lacks it. A request never names one external
// ID value twice (Salesforce refuses a duplicate external ID in one
// request): a second identify call of the same value goes in a later
// request, after the first.
//
// The upsert is idempotent by construction: a retried event updates the
// record it created. Salesforce has no other idempotency key; the upsert
// is why Integration.Deduplicates is true. A batch also
// spends one call of the org's daily API request limit where single
// upserts spent one per event.
//
// The access token comes from <instance_url>/services/oauth2/token by the
// client credentials flow or the username-password flow (auth_flow) and is
// cached: Salesforce tokens last as long as the session, with no expiry in
// the answer, so a 401 is what says a token has expired.
//
// # Outcomes
//
//   - 200 is resolved per record, from its result: success true is
//     delivered; success false is rejected with each error's code, message
//     and fields, and a hint for the common codes (REQUIRED_FIELD_MISSING,
//     DUPLICATE_EXTERNAL_ID when several records share the value, ...),
//     except UNABLE_TO_LOCK_ROW and ALL_OR_NONE_OPERATION_ROLLED_BACK,
//     which pass and are retried. A 2xx that is not one result per record
//     is retried.
//   - 400 (the request is not well formed) rejects every event of the
//     request with each error's code, message and fields and the hint,
//     except UNABLE_TO_LOCK_ROW, which is retried.
//   - 401 (INVALID_SESSION_ID) drops the cached token. If the token had
//     worked before, it expired: the events are retried with a new one. If
//     it never worked, the failure persists past a refresh and is rejected
//     with the settings to check.
//   - 403 REQUEST_LIMIT_EXCEEDED: the concurrent limit (a message naming
//     ConcurrentRequests) is retried after ConcurrentWait, since the long
//     requests it counts last 20 seconds or more. Otherwise the org's
//     total allocation is spent: a Quota, so that the queue pauses without
//     spending its attempts, for QuotaWait (or the Retry-After given). The
//     allocation counts the last 24 hours and has no reset time:
//     requests pass again as the org's older calls age out, so an hour
//     lets some age out without hammering the org, whose other
//     integrations share the allocation. Any other 403 is rejected as a
//     permission to grant.
//   - 404 is rejected: no such object or external ID field, or the
//     integration user cannot see it.
//   - 413 to several records splits them (Result.Split): the engine sends
//     them again in halves; a record alone is rejected.
//   - 5xx is retried, after a Retry-After if one is given.
//
// A failure to get a token rejects the events when the token endpoint
// refuses the credentials (invalid_client, invalid_grant, ...) and retries
// them otherwise.
package salesforce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// NotProvided is the value sent for a required field the event lacks.
const NotProvided = "[not provided]"

// MaxBatchRecords is the documented number of records of an sObject
// Collections upsert.
const MaxBatchRecords = 200

// The waits after a 403 REQUEST_LIMIT_EXCEEDED: ConcurrentWait for the
// concurrent limit on long requests (those of 20 seconds or more),
// QuotaWait for the total allocation of the last 24 hours, which frees
// calls as older ones age out and gives no reset time.
const (
	ConcurrentWait = 20 * time.Second
	QuotaWait      = time.Hour
)

// minVersion is the first API version with the sObject Collections upsert.
const minVersion = 46

// The values of the auth_flow setting.
const (
	ClientCredentials = "client_credentials"
	Password          = "password"
)

// Integration is the Salesforce integration.
var Integration = &destinations.Integration{
	Type: "salesforce",
	Settings: destinations.Schema{
		{
			Name:        "instance_url",
			Type:        destinations.String,
			Required:    true,
			Description: "The org's My Domain URL, such as https://acme.my.salesforce.com (Setup > My Domain), or https://acme--dev.sandbox.my.salesforce.com for a sandbox. Token and API requests both go there.",
		},
		{
			Name:        "api_version",
			Type:        destinations.String,
			Default:     "62.0",
			Description: "The REST API version, such as 62.0; 46.0 or later, which has the sObject Collections upsert.",
		},
		{
			Name:        "auth_flow",
			Type:        destinations.String,
			Default:     ClientCredentials,
			Description: "How the access token is obtained: client_credentials (the app's Run As user; enable Client Credentials Flow in the app's OAuth settings) or password (username and password below; enable OAuth Username-Password Flows).",
		},
		{
			Name:        "client_id",
			Type:        destinations.String,
			Required:    true,
			Description: "The consumer key of the connected app or external client app (App Manager or External Client App Manager > the app > OAuth Settings > Consumer Key and Secret).",
		},
		{
			Name:        "client_secret",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The consumer secret of the same app.",
		},
		{
			Name:        "username",
			Type:        destinations.String,
			Description: "The integration user's username, for auth_flow password.",
		},
		{
			Name:        "password",
			Type:        destinations.String,
			Secret:      true,
			Description: "The integration user's password followed by its security token (when the org requires one), for auth_flow password.",
		},
		{
			Name:        "object",
			Type:        destinations.String,
			Default:     "Lead",
			Description: "The object identify calls upsert: Lead or Contact.",
		},
		{
			Name:        "external_id_field",
			Type:        destinations.String,
			Default:     "Email",
			Description: "The field the upsert matches records on: Email, or a custom External ID field such as Fanout_User_Id__c.",
		},
		{
			Name:        "external_id_value",
			Type:        destinations.String,
			Default:     "email",
			Description: "What fills external_id_field: email (the user's email) or user_id (the event's userId). Events without it are rejected without a request.",
		},
		{
			Name:        "fields",
			Type:        destinations.StringMap,
			Description: "Maps trait names to Salesforce field API names, for other fields: {plan: Plan__c, industry: Industry}. The fields must exist and be editable by the integration user.",
		},
	},
	EventTypes:   []string{event.Identify},
	Batch:        destinations.BatchLimits{MaxEvents: MaxBatchRecords},
	Deduplicates: true,
	New:          New,
}

// destination is one configured org.
type destination struct {
	base        string // instance_url without a trailing slash
	version     string // "62.0"
	flow        string
	clientID    string
	secret      string
	username    string
	password    string
	object      string
	extField    string
	extFromUser bool // external_id_value is user_id
	fields      map[string]string
	api         *destinations.Sender // the requests outside the Plan
	// tokens holds the access token; Salesforce gives no expiry, so it
	// is kept until a 401 drops it.
	tokens destinations.TokenCache
}

var _ destinations.Destination = (*destination)(nil)

var (
	versionRE = regexp.MustCompile(`^[0-9]{2,3}\.[0-9]$`)
	fieldRE   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
)

// New builds a Salesforce destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	d := &destination{
		base:     strings.TrimRight(s.String("instance_url"), "/"),
		version:  strings.TrimPrefix(strings.ToLower(s.String("api_version")), "v"),
		flow:     s.String("auth_flow"),
		clientID: s.String("client_id"),
		secret:   s.String("client_secret"),
		username: s.String("username"),
		password: s.String("password"),
		extField: s.String("external_id_field"),
		api:      cfg.Sender(nil),
	}
	d.fields = s.StringMap("fields")
	if u, err := url.Parse(d.base); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("instance_url: expected the org's My Domain URL, such as https://acme.my.salesforce.com, found %q", d.base)
	}
	if !versionRE.MatchString(d.version) {
		return nil, fmt.Errorf("api_version: expected a version such as 62.0, found %q", s.String("api_version"))
	}
	if major, _ := strconv.Atoi(strings.Split(d.version, ".")[0]); major < minVersion {
		return nil, fmt.Errorf("api_version: expected %d.0 or later, the first with the sObject Collections upsert, found %q", minVersion, s.String("api_version"))
	}
	switch d.flow {
	case ClientCredentials:
	case Password:
		if d.username == "" || d.password == "" {
			return nil, errors.New("username, password: auth_flow password needs both")
		}
	default:
		return nil, fmt.Errorf("auth_flow: expected client_credentials or password, found %q", d.flow)
	}
	switch strings.ToLower(s.String("object")) {
	case "lead":
		d.object = "Lead"
	case "contact":
		d.object = "Contact"
	default:
		return nil, fmt.Errorf("object: expected Lead or Contact, found %q", s.String("object"))
	}
	if !fieldRE.MatchString(d.extField) {
		return nil, fmt.Errorf("external_id_field: expected a field API name such as Email or Fanout_User_Id__c, found %q", d.extField)
	}
	switch s.String("external_id_value") {
	case "email":
	case "user_id":
		d.extFromUser = true
	default:
		return nil, fmt.Errorf("external_id_value: expected email or user_id, found %q", s.String("external_id_value"))
	}
	for trait, field := range d.fields {
		if !fieldRE.MatchString(field) {
			return nil, fmt.Errorf("fields: expected a field API name for trait %q, found %q", trait, field)
		}
	}
	return d, nil
}

// leadFields and contactFields are the standard fields of a Lead and of a
// Contact for the usual traits: a Contact has no Company or Website (its
// Account does) but a Birthdate, and its address is the Mailing one.
var (
	leadFields = traits.ContactFields{
		FirstName: "FirstName", LastName: "LastName", Email: "Email", Phone: "Phone", Title: "Title",
		Company: "Company", Website: "Website",
		Street: "Street", City: "City", State: "State", PostalCode: "PostalCode", Country: "Country",
	}
	contactFields = traits.ContactFields{
		FirstName: "FirstName", LastName: "LastName", Email: "Email", Phone: "Phone", Title: "Title",
		Street: "MailingStreet", City: "MailingCity", State: "MailingState", PostalCode: "MailingPostalCode", Country: "MailingCountry",
		Birthday: "Birthdate",
	}
)

// record builds the Lead or Contact of an identify call, whose external
// ID field holds value.
func (d *destination) record(m map[string]any, value string) map[string]any {
	rec := traits.Record{}
	fields := leadFields
	if d.object == "Contact" {
		fields = contactFields
	}
	rec.PutContact(m, fields)
	rec.Map(m, d.fields)
	if _, ok := rec["LastName"]; !ok {
		rec["LastName"] = NotProvided
	}
	if _, ok := rec["Company"]; !ok && d.object == "Lead" {
		rec["Company"] = NotProvided
	}
	// The external ID field holds the value the upsert matches on, under
	// the setting's spelling alone: field names are case-insensitive.
	for k := range rec {
		if strings.EqualFold(k, d.extField) {
			delete(rec, k)
		}
	}
	rec[d.extField] = value
	rec["attributes"] = map[string]string{"type": d.object}
	return rec
}

// Transform batches identify calls into upserts of at most MaxBatchRecords
// records, fetching an access token first when none is cached.
func (d *destination) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	// Round n holds the n-th identify call of each external ID value, so
	// that no request names a value twice and a later call is written
	// later.
	var rounds plan.Rounds
	for i := range events {
		if events[i].Type != event.Identify {
			b.Unsupported(i, "Salesforce takes identify calls only, not "+events[i].Type)
			continue
		}
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		value, from := traits.Email(m), "email"
		if d.extFromUser {
			value, from = traits.UserID(m), "userId"
		}
		if value == "" {
			b.Reject(i, fmt.Sprintf("the identify call has no %s, which external_id_value names as the value of %s, the field Salesforce matches %ss on",
				from, d.extField, d.object))
			continue
		}
		body, err := json.Marshal(d.record(m, value))
		if err != nil {
			b.Reject(i, "the record cannot be encoded: "+err.Error())
			continue
		}
		// Email matching is case-insensitive; a custom external ID
		// field may be either, and putting two values that differ only
		// in case in two requests is merely one request more.
		rounds.Add(strings.ToLower(value), plan.Item{Event: i, Body: body})
	}
	if len(rounds.Of) == 0 {
		return b.Plan, nil
	}
	token, rejected, err := d.accessToken(ctx)
	if err != nil {
		for _, round := range rounds.Of {
			b.Fail(round, rejected, err.Error())
		}
		return b.Plan, nil
	}
	endpoint := fmt.Sprintf("%s/services/data/v%s/composite/sobjects/%s/%s", d.base, d.version, d.object, d.extField)
	const envelope = len(`{"allOrNone":false,"records":[]}`)
	for _, round := range rounds.Of {
		for _, run := range plan.Batches(round, MaxBatchRecords, 0, 1, envelope) {
			records, idx := plan.JSONArray(run)
			body := make([]byte, 0, len(records)+envelope)
			body = append(append(append(body, `{"allOrNone":false,"records":`...), records...), '}')
			b.Add(&destinations.Request{
				Method: http.MethodPatch,
				URL:    endpoint,
				Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + token}},
				Body:   body,
				Events: idx,
			})
		}
	}
	return b.Plan, nil
}

// tokenAnswer is the token endpoint's answer.
type tokenAnswer struct {
	AccessToken      string `json:"access_token"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// accessToken returns the cached access token or fetches one. rejected
// reports that the token endpoint refused the settings, which no retry
// fixes.
func (d *destination) accessToken(ctx context.Context) (token string, rejected bool, err error) {
	token, err = d.tokens.Get(time.Time{}, func() (string, time.Time, error) {
		token, rej, err := d.fetchToken(ctx)
		rejected = rej
		return token, time.Time{}, err
	})
	return token, rejected, err
}

// fetchToken asks the token endpoint for a token with the auth_flow's
// grant.
func (d *destination) fetchToken(ctx context.Context) (token string, rejected bool, err error) {
	form := url.Values{
		"grant_type":    {d.flow},
		"client_id":     {d.clientID},
		"client_secret": {d.secret},
	}
	if d.flow == Password {
		form.Set("username", d.username)
		form.Set("password", d.password)
	}
	resp, err := d.api.Do(ctx, &destinations.Request{
		Method: http.MethodPost,
		URL:    d.base + "/services/oauth2/token",
		Header: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}},
		Body:   []byte(form.Encode()),
	})
	if errors.Is(err, destinations.ErrInvalidRequest) {
		return "", true, fmt.Errorf("instance_url: cannot build the token request: %w", err)
	}
	if err != nil {
		return "", false, fmt.Errorf("Salesforce token endpoint: %v", err)
	}
	// A read error leaves a short body, which then fails to parse: the
	// status code decides.
	body := resp.Body
	var a tokenAnswer
	_ = json.Unmarshal(body, &a)
	switch {
	case resp.StatusCode == http.StatusOK && a.AccessToken != "":
		return a.AccessToken, false, nil
	case a.Error == "rate_limit_exceeded" || destinations.RetryableStatus(resp.StatusCode):
		return "", false, fmt.Errorf("Salesforce token endpoint: %s", destinations.StatusReason(resp.StatusCode, body))
	case a.Error != "":
		return "", true, fmt.Errorf("Salesforce refused the %s flow's credentials (HTTP %d %s: %s): %s",
			d.flow, resp.StatusCode, a.Error, a.ErrorDescription, d.tokenHint(a.Error))
	}
	return "", true, fmt.Errorf("Salesforce token endpoint gave no token: %s", destinations.StatusReason(resp.StatusCode, body))
}

// tokenHint says what to check when the token endpoint refuses.
func (d *destination) tokenHint(code string) string {
	switch code {
	case "invalid_client_id", "invalid_client", "invalid_client_credentials":
		return "copy client_id and client_secret again from the app's OAuth Settings > Consumer Key and Secret"
	case "invalid_grant":
		if d.flow == Password {
			return "check username and password (the password followed by the user's security token when the org requires one), and that the app allows OAuth Username-Password Flows"
		}
		return "check that the app enables the Client Credentials Flow with a Run As user, and that instance_url is the org's My Domain URL"
	case "unsupported_grant_type":
		return "enable the " + d.flow + " flow in the app's OAuth settings, or change auth_flow"
	case "inactive_user", "inactive_org":
		return "the integration user or the org is inactive: reactivate it, or use another user"
	}
	return "check instance_url, client_id, client_secret and auth_flow"
}

// apiError is one entry of the REST API's error body, or of the errors of
// a record's result, which name the code statusCode.
type apiError struct {
	Message    string   `json:"message"`
	ErrorCode  string   `json:"errorCode"`
	StatusCode string   `json:"statusCode"`
	Fields     []string `json:"fields"`
}

// code is the error's code, under either name.
func (e apiError) code() string {
	if e.ErrorCode != "" {
		return e.ErrorCode
	}
	return e.StatusCode
}

func (e apiError) String() string {
	s := e.code() + ": " + e.Message
	if len(e.Fields) > 0 {
		s += " (fields: " + strings.Join(e.Fields, ", ") + ")"
	}
	return s
}

// saveResult is one record's result in a 200 upsert answer.
type saveResult struct {
	ID      string     `json:"id"`
	Success *bool      `json:"success"`
	Errors  []apiError `json:"errors"`
}

// Classify reads an upsert's answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	auth := req.Header.Get("Authorization")
	code := resp.StatusCode
	if code != http.StatusUnauthorized {
		d.tokens.Worked(auth)
	}
	n := len(req.Events)
	if code >= 200 && code <= 299 {
		return d.results(n, resp)
	}
	if code == http.StatusRequestEntityTooLarge && n > 1 {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: destinations.StatusReason(code, resp.Body) + ": the upsert is too large for Salesforce; it is sent again in halves"})
	}
	r := d.classify(auth, resp)
	r.StatusCode = code
	return destinations.Fill(n, r)
}

// results resolves a 2xx answer to an upsert of n records per record.
// Anything but one result per record is retried: the upsert is
// idempotent, so a record written already is written again unchanged.
func (d *destination) results(n int, resp *destinations.Response) []destinations.Result {
	code := resp.StatusCode
	var results []saveResult
	err := json.Unmarshal(resp.Body, &results)
	if err != nil || len(results) != n {
		got := "a body that is not a list of results"
		if err == nil {
			got = fmt.Sprintf("%d results", len(results))
		}
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
			Reason: fmt.Sprintf("Salesforce answered HTTP %d with %s for %d records: %s", code, got, n, destinations.Snippet(resp.Body, 200))})
	}
	out := make([]destinations.Result, n)
	for j, res := range results {
		out[j] = d.recordResult(res)
		out[j].StatusCode = code
	}
	return out
}

// recordResult is the outcome of one record's result.
func (d *destination) recordResult(res saveResult) destinations.Result {
	switch {
	case res.Success == nil:
		return destinations.Result{Outcome: destinations.Retryable,
			Reason: "Salesforce's result for the " + d.object + " says neither success nor failure"}
	case *res.Success:
		return destinations.Result{Outcome: destinations.Delivered}
	}
	detail := joinErrors(res.Errors, nil)
	if detail == "" {
		detail = "no details"
	}
	switch {
	case hasCode(res.Errors, "UNABLE_TO_LOCK_ROW"):
		return destinations.Result{Outcome: destinations.Retryable,
			Reason: fmt.Sprintf("Salesforce could not lock the %s, which another update holds: %s", d.object, detail)}
	case hasCode(res.Errors, "ALL_OR_NONE_OPERATION_ROLLED_BACK"):
		return destinations.Result{Outcome: destinations.Retryable,
			Reason: fmt.Sprintf("Salesforce rolled the %s back with the other records of its request: %s", d.object, detail)}
	case hasCode(res.Errors, "DUPLICATE_EXTERNAL_ID"):
		return destinations.Result{Outcome: destinations.Rejected,
			Reason: fmt.Sprintf("Salesforce found several %ss with this %s and updated none (%s): merge the duplicates in Salesforce, or upsert on a unique external_id_field",
				d.object, d.extField, detail)}
	}
	reason := fmt.Sprintf("Salesforce refused the %s: %s", d.object, detail)
	if len(res.Errors) > 0 {
		if hint := d.hint(res.Errors[0].code()); hint != "" {
			reason += " (" + hint + ")"
		}
	}
	return destinations.Result{Outcome: destinations.Rejected, Reason: reason}
}

// classify is the outcome of every event of a request Salesforce answered
// with an error status.
func (d *destination) classify(auth string, resp *destinations.Response) destinations.Result {
	code := resp.StatusCode
	errs, detail := parseErrors(resp.Body)
	rejected := func(format string, args ...any) destinations.Result {
		return destinations.Result{Outcome: destinations.Rejected, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case code == http.StatusBadRequest:
		if hasCode(errs, "UNABLE_TO_LOCK_ROW") {
			return destinations.Result{Outcome: destinations.Retryable,
				Reason: fmt.Sprintf("Salesforce could not lock a %s, which another update holds: %s", d.object, detail)}
		}
		reason := fmt.Sprintf("Salesforce refused the %s upsert: %s", d.object, detail)
		if len(errs) > 0 {
			if hint := d.hint(errs[0].code()); hint != "" {
				reason += " (" + hint + ")"
			}
		}
		return destinations.Result{Outcome: destinations.Rejected, Reason: reason}
	case code == http.StatusUnauthorized:
		if d.tokens.Failed(auth) {
			return destinations.Result{Outcome: destinations.Retryable,
				Reason: "Salesforce refused the access token (" + detail + "): it expired; a new one is fetched for the retry"}
		}
		return rejected("Salesforce refused an access token it had just issued (%s): check that instance_url is the org's My Domain URL, and that the integration user has the API Enabled permission", detail)
	case code == http.StatusForbidden:
		if hasCode(errs, "REQUEST_LIMIT_EXCEEDED") {
			return requestLimit(detail, resp)
		}
		return rejected("Salesforce refused the integration user (HTTP 403 %s): give it the API Enabled permission, and Create and Edit on %s and its fields", detail, d.object)
	case code == http.StatusNotFound:
		return rejected("Salesforce has no %s field %s to upsert on, or the integration user cannot see it (HTTP 404 %s): check object and external_id_field (a custom External ID field ends in __c)",
			d.object, d.extField, detail)
	}
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	if len(errs) > 0 {
		r.Reason = destinations.StatusReason(code, nil) + ": " + detail
	}
	return r
}

// requestLimit is the outcome of a 403 REQUEST_LIMIT_EXCEEDED, whose
// detail names the limit: ConcurrentRequests, or the total allocation
// (TotalRequests).
func requestLimit(detail string, resp *destinations.Response) destinations.Result {
	wait := destinations.ParseRetryAfter(resp.Header, resp.ReceivedAt)
	if strings.Contains(strings.ToLower(detail), "concurrent") {
		if wait == 0 {
			wait = ConcurrentWait
		}
		return destinations.Result{Outcome: destinations.Retryable, RetryAfter: wait,
			Reason: "the org has too many API requests of 20 seconds or more running at once (" + detail + "); sent again when some have ended"}
	}
	if wait == 0 {
		wait = QuotaWait
	}
	return destinations.Result{Outcome: destinations.Retryable, Quota: true, RetryAfter: wait,
		Reason: fmt.Sprintf("the org's API request allocation is used up (%s); it counts the last 24 hours, so requests pass again as older ones age out: sent again in %v (Setup > Company Information > API Requests, Last 24 Hours)", detail, wait)}
}

// parseErrors reads the REST API's error body. detail describes it: the
// errors, or the start of the body when it is not that list.
func parseErrors(body []byte) (errs []apiError, detail string) {
	if json.Unmarshal(body, &errs) == nil && len(errs) > 0 && errs[0].code() != "" {
		return errs, joinErrors(errs, body)
	}
	if s := destinations.Snippet(body, 200); s != "" {
		return nil, s
	}
	return nil, "no details"
}

func joinErrors(errs []apiError, body []byte) string {
	if len(errs) == 0 {
		return destinations.Snippet(body, 200)
	}
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.String()
	}
	return strings.Join(parts, "; ")
}

func hasCode(errs []apiError, code string) bool {
	for _, e := range errs {
		if e.code() == code {
			return true
		}
	}
	return false
}

// hint says what to do about the commonest validation errors.
func (d *destination) hint(code string) string {
	switch code {
	case "REQUIRED_FIELD_MISSING":
		return "a field the " + d.object + " requires has no value: send it as a trait and map it with the fields setting"
	case "INVALID_FIELD":
		return "a field in the fields setting does not exist on " + d.object + ", or the integration user cannot see it"
	case "INVALID_FIELD_FOR_INSERT_UPDATE":
		return "a field in the fields setting cannot be written: a formula, system or external ID field"
	case "FIELD_CUSTOM_VALIDATION_EXCEPTION":
		return "a validation rule in Salesforce refused the record"
	case "DUPLICATES_DETECTED":
		return "a duplicate rule in Salesforce blocked the record"
	case "FIELD_INTEGRITY_EXCEPTION", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST":
		return "a value is not allowed for its field, such as a State or Country outside the org's picklist"
	case "INVALID_EMAIL_ADDRESS":
		return "the user's email is not a valid address"
	case "STRING_TOO_LONG":
		return "a value is longer than its field allows"
	case "JSON_PARSER_ERROR", "INVALID_TYPE_ON_FIELD_IN_RECORD":
		return "a mapped trait's value has a type its field does not take"
	}
	return ""
}
