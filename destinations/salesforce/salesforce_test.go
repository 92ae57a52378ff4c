package salesforce

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/destinationstest"
	"github.com/fanout/fanout/destinations/tape"
	"github.com/fanout/fanout/internal/event"
)

// now is the tests' clock.
var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// setup opens testdata/<name>.yaml and builds a destination whose org and
// credentials come from the tape (SALESFORCE_INSTANCE_URL,
// SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET when recording, and
// SALESFORCE_USERNAME and SALESFORCE_PASSWORD for auth_flow password).
func setup(t *testing.T, name string, extra map[string]any) *destinationstest.Bundle {
	t.Helper()
	tp := tape.New(t, name, tape.MatchHeaders("Authorization"))
	settings := map[string]any{
		"instance_url":  tp.Var("SALESFORCE_INSTANCE_URL", "https://acme.my.salesforce.com"),
		"client_id":     tp.Secret("SALESFORCE_CLIENT_ID"),
		"client_secret": tp.Secret("SALESFORCE_CLIENT_SECRET"),
	}
	if extra["auth_flow"] == Password {
		settings["username"] = tp.Var("SALESFORCE_USERNAME", "integration@acme.example")
		settings["password"] = tp.Secret("SALESFORCE_PASSWORD")
	}
	maps.Copy(settings, extra)
	return destinationstest.New(t, destinationstest.Config{
		Integration: Integration,
		Tape:        tp,
		Settings:    settings,
		Now:         now,
	})
}

// want is the expected outcome of one event.
type want = destinationstest.Want

// identify builds an identify call with traits.
func identify(t *testing.T, id, userID, traitsJSON string) event.Event {
	t.Helper()
	return destinationstest.Event(t, `{"type":"identify","userId":"`+userID+`","messageId":"`+id+`","timestamp":"2026-01-02T03:00:00Z","traits":`+traitsJSON+`}`)
}

func ada(t *testing.T) event.Event {
	return identify(t, "m1", "u-1", `{"email":"ada@example.com","name":"Ada Lovelace","company":{"name":"Analytical Engines"},"plan":"pro"}`)
}

var delivered = want{Outcome: destinations.Delivered}

func TestIdentify(t *testing.T) {
	b := setup(t, "identify", map[string]any{"fields": map[string]any{"plan": "Plan__c"}})
	// Every Lead field, from snake_case, camelCase and nested traits; a
	// custom field through `fields`; unmapped traits left out.
	first := identify(t, "m1", "u-1", `{"email":"ada@example.com","first_name":"Ada","lastName":"Lovelace",
		"phone":"+44 20 7946 0000","company":{"name":"Analytical Engines"},"title":"CTO","website":"https://ada.dev",
		"address":{"street":"12 St James's Square","city":"London","postal_code":"SW1Y 4JH","country":"GB"},
		"plan":"pro","favorite_color":"green"}`)
	// Without last name and company, the placeholders Salesforce needs.
	second := identify(t, "m2", "u-2", `{"email":"grace@example.com","firstName":"Grace"}`)
	// Ada again, in another case: a second request, after the first.
	third := identify(t, "m3", "u-1", `{"email":"Ada@Example.com","plan":"max"}`)
	ok := want{Outcome: destinations.Delivered, Status: 200}
	destinationstest.Check(t, b.Send(first, second, third), ok, ok, ok)
}

// TestPartialFailure resolves a batch per record: created, refused,
// locked (retried), and matching several records.
func TestPartialFailure(t *testing.T) {
	b := setup(t, "partial_failure", nil)
	got := b.Send(ada(t),
		identify(t, "m2", "u-2", `{"email":"grace@example.com","name":"Grace Hopper"}`),
		identify(t, "m3", "u-3", `{"email":"alan@example.com","name":"Alan Turing"}`),
		identify(t, "m4", "u-4", `{"email":"edsger@example.com","name":"Edsger Dijkstra"}`))
	destinationstest.Check(t, got,
		want{Outcome: destinations.Delivered, Status: 200},
		want{Outcome: destinations.Rejected, Status: 200,
			Reason: "Salesforce refused the Lead: REQUIRED_FIELD_MISSING: Required fields are missing: [Region__c] (fields: Region__c) (a field the Lead requires has no value"},
		want{Outcome: destinations.Retryable, Status: 200, Reason: "Salesforce could not lock the Lead, which another update holds: UNABLE_TO_LOCK_ROW"},
		want{Outcome: destinations.Rejected, Status: 200,
			Reason: "Salesforce found several Leads with this Email and updated none (DUPLICATE_EXTERNAL_ID: Email: more than one record found for external id field"})
}

// TestContact upserts a Contact on a custom External ID field holding the
// userId, with a token from the username-password flow.
func TestContact(t *testing.T) {
	b := setup(t, "contact", map[string]any{
		"auth_flow":         Password,
		"object":            "contact",
		"external_id_field": "Fanout_User_Id__c",
		"external_id_value": "user_id",
	})
	ev := identify(t, "m1", "u-42", `{"email":"ada@example.com","name":"Ada Lovelace","company":"Analytical Engines",
		"city":"London","country":"GB","birthday":"1815-12-10"}`)
	destinationstest.CheckIgnoringStatus(t, b.Send(ev), delivered)
}

func TestTapes(t *testing.T) {
	cases := []struct {
		tape  string
		extra map[string]any
		want  want
	}{
		// Auth failure at the token endpoint: no upsert is made.
		{"bad_credentials", nil, want{Outcome: destinations.Rejected,
			Reason: "Salesforce refused the client_credentials flow's credentials (HTTP 400 invalid_client: invalid client credentials): copy client_id and client_secret again"}},
		{"token_unavailable", nil, want{Outcome: destinations.Retryable, Reason: "Salesforce token endpoint: HTTP 503 Service Unavailable"}},
		// A token refused as soon as it is issued: a refresh does not help.
		{"unauthorized", nil, want{Outcome: destinations.Rejected,
			Reason: "Salesforce refused an access token it had just issued (INVALID_SESSION_ID: Session expired or invalid): check that instance_url is the org's My Domain URL"}},
		{"invalid_field", map[string]any{"fields": map[string]any{"plan": "Plan__c"}}, want{Outcome: destinations.Rejected,
			Reason: "Salesforce refused the Lead upsert: INVALID_FIELD: No such column 'Plan__c' on sobject of type Lead (a field in the fields setting does not exist on Lead"}},
		// The 24-hour allocation spent: a quota, waited out for an hour.
		{"request_limit", nil, want{Outcome: destinations.Retryable, Quota: true, RetryAfter: QuotaWait,
			Reason: "the org's API request allocation is used up (REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.); it counts the last 24 hours"}},
		// Too many long requests at once: a short wait, no quota.
		{"concurrent_limit", nil, want{Outcome: destinations.Retryable, RetryAfter: ConcurrentWait,
			Reason: "too many API requests of 20 seconds or more running at once (REQUEST_LIMIT_EXCEEDED: ConcurrentRequests (Concurrent API Requests) Limit exceeded.)"}},
		{"insufficient_access", nil, want{Outcome: destinations.Rejected,
			Reason: "Salesforce refused the integration user (HTTP 403 INSUFFICIENT_ACCESS_OR_READONLY: insufficient access rights on object id): give it"}},
		{"not_found", map[string]any{"external_id_field": "Fanout_Id__c", "external_id_value": "user_id"}, want{Outcome: destinations.Rejected,
			Reason: "Salesforce has no Lead field Fanout_Id__c to upsert on, or the integration user cannot see it (HTTP 404 NOT_FOUND: Provided external ID field does not exist or is not accessible: Fanout_Id__c): check object and external_id_field"}},
		{"server_error", nil, want{Outcome: destinations.Retryable, Reason: "HTTP 500 Internal Server Error: UNKNOWN_EXCEPTION: An unexpected error occurred."}},
		{"unavailable", nil, want{Outcome: destinations.Retryable, Reason: "HTTP 503 Service Unavailable: SERVER_UNAVAILABLE", RetryAfter: 2 * time.Minute}},
	}
	for _, c := range cases {
		t.Run(c.tape, func(t *testing.T) {
			b := setup(t, c.tape, c.extra)
			destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), c.want)
		})
	}
}

// TestTokenExpired checks that a 401 to a token that had worked drops it,
// so that the retry fetches a new one and succeeds.
func TestTokenExpired(t *testing.T) {
	b := setup(t, "token_expired", nil)
	destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), delivered)
	destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), want{Outcome: destinations.Retryable,
		Reason: "Salesforce refused the access token (INVALID_SESSION_ID: Session expired or invalid): it expired; a new one is fetched for the retry"})
	destinationstest.CheckIgnoringStatus(t, b.Send(ada(t)), delivered)
}

func TestWithoutRequest(t *testing.T) {
	d := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{
		"instance_url": "https://acme.my.salesforce.com", "client_id": "id", "client_secret": "s"}})
	track := event.Event{MessageID: "t", Type: event.Track, Payload: json.RawMessage(`{"type":"track","event":"x"}`)}
	p := destinationstest.Transform(t, d, identify(t, "m1", "u-1", `{"name":"No Email"}`), track)
	if len(p.Requests) != 0 {
		t.Fatalf("%d requests, want none (and no token request)", len(p.Requests))
	}
	if r := p.Results[0]; r.Outcome != destinations.Rejected ||
		!strings.Contains(r.Reason, "the identify call has no email, which external_id_value names as the value of Email, the field Salesforce matches Leads on") {
		t.Errorf("identify without email: %+v", r)
	}
	if r := p.Results[1]; r.Outcome != destinations.Unsupported {
		t.Errorf("track: %+v", r)
	}
}

func TestSettings(t *testing.T) {
	base := map[string]any{"instance_url": "https://acme.my.salesforce.com", "client_id": "i", "client_secret": "s"}
	with := func(kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		settings map[string]any
		err      string
	}{
		{map[string]any{"instance_url": "https://x"}, "client_id: required setting is missing"},
		{with("instance_url", "acme.my.salesforce.com"), `instance_url: expected the org's My Domain URL, such as https://acme.my.salesforce.com, found "acme.my.salesforce.com"`},
		{with("instance_url", "https://acme.my.salesforce.com/services/data"), "instance_url: expected the org's My Domain URL"},
		{with("api_version", "latest"), `api_version: expected a version such as 62.0, found "latest"`},
		{with("api_version", "45.0"), `api_version: expected 46.0 or later, the first with the sObject Collections upsert, found "45.0"`},
		{with("auth_flow", "jwt"), `auth_flow: expected client_credentials or password, found "jwt"`},
		{with("auth_flow", "password", "username", "u@x"), "username, password: auth_flow password needs both"},
		{with("object", "Account"), `object: expected Lead or Contact, found "Account"`},
		{with("external_id_field", "Email/x"), `external_id_field: expected a field API name`},
		{with("external_id_value", "phone"), `external_id_value: expected email or user_id, found "phone"`},
		{with("fields", map[string]any{"plan": "Plan c"}), `fields: expected a field API name for trait "plan", found "Plan c"`},
	}
	for _, c := range cases {
		destinationstest.CheckSettingsError(t, Integration, c.settings, c.err)
	}
	// v62.0 is read as 62.0.
	valid, _ := Integration.Settings.Validate(with("api_version", "v62.0"))
	if _, err := New(destinations.Config{Settings: valid}); err != nil {
		t.Errorf("api_version v62.0: %v", err)
	}
}

// TestBatches checks that Transform cuts identify calls into requests of
// at most MaxBatchRecords records, each event in one request.
func TestBatches(t *testing.T) {
	dst := destinationstest.Build(t, destinationstest.Config{Integration: Integration, Settings: map[string]any{
		"instance_url": "https://acme.my.salesforce.com", "client_id": "id", "client_secret": "s"}})
	d := dst.(*destination)
	// A cached token: Transform makes no token request.
	if _, err := d.tokens.Get(time.Time{}, func() (string, time.Time, error) { return "t", time.Time{}, nil }); err != nil {
		t.Fatal(err)
	}
	var evs []event.Event
	for i := range 2*MaxBatchRecords + 50 {
		evs = append(evs, identify(t, fmt.Sprint("m", i), fmt.Sprint("u-", i), fmt.Sprintf(`{"email":"user%d@example.com"}`, i)))
	}
	p := destinationstest.Transform(t, d, evs...)
	var sizes []int
	seen := map[int]bool{}
	for _, r := range p.Requests {
		sizes = append(sizes, len(r.Events))
		for _, i := range r.Events {
			if seen[i] {
				t.Errorf("event %d in two requests", i)
			}
			seen[i] = true
		}
	}
	if fmt.Sprint(sizes) != fmt.Sprint([]int{MaxBatchRecords, MaxBatchRecords, 50}) || len(seen) != len(evs) {
		t.Errorf("requests of %v events (%d in all), want [200 200 50]", sizes, len(seen))
	}
}

// TestClassify covers answers no tape needs: results that do not match
// the records, and bodies that are not Salesforce's.
func TestClassify(t *testing.T) {
	d := &destination{object: "Lead", extField: "Email"}
	req := &destinations.Request{Events: []int{0, 1}, Header: http.Header{"Authorization": {"Bearer t"}}}
	cases := []struct {
		code   int
		body   string
		want   []destinations.Outcome
		reason string
	}{
		{200, `not json`, []destinations.Outcome{destinations.Retryable, destinations.Retryable},
			"Salesforce answered HTTP 200 with a body that is not a list of results for 2 records: not json"},
		{200, `[{"id":"00Q","success":true,"errors":[]}]`, []destinations.Outcome{destinations.Retryable, destinations.Retryable},
			"Salesforce answered HTTP 200 with 1 results for 2 records"},
		{200, `[{"id":"00Q","success":true,"errors":[]},{"id":"00Q2"}]`, []destinations.Outcome{destinations.Delivered, destinations.Retryable},
			"says neither success nor failure"},
		{200, `[{"success":false,"errors":[{"statusCode":"ALL_OR_NONE_OPERATION_ROLLED_BACK","message":"Record rolled back because not all records were valid and the request was using AllOrNone header","fields":[]}]},
			{"success":false,"errors":[{"statusCode":"DUPLICATES_DETECTED","message":"Use one of these records?","fields":[]}]}]`,
			[]destinations.Outcome{destinations.Retryable, destinations.Rejected}, ""},
		{400, `<html>bad</html>`, []destinations.Outcome{destinations.Rejected, destinations.Rejected}, "Salesforce refused the Lead upsert: <html>bad</html>"},
		{400, `[{"errorCode":"UNABLE_TO_LOCK_ROW","message":"unable to obtain exclusive access to this record"}]`,
			[]destinations.Outcome{destinations.Retryable, destinations.Retryable}, "Salesforce could not lock a Lead"},
		{502, ``, []destinations.Outcome{destinations.Retryable, destinations.Retryable}, "HTTP 502 Bad Gateway"},
		{401, `[{"errorCode":"INVALID_SESSION_ID","message":"Session expired or invalid"}]`,
			[]destinations.Outcome{destinations.Retryable, destinations.Retryable}, "it expired"},
	}
	for _, c := range cases {
		got := d.Classify(req, &destinations.Response{StatusCode: c.code, Body: []byte(c.body), ReceivedAt: now})
		if len(got) != len(c.want) {
			t.Fatalf("%d results", len(got))
		}
		for i, g := range got {
			if g.Outcome != c.want[i] || g.StatusCode != c.code || (g.Outcome != destinations.Delivered && !strings.Contains(g.Reason, c.reason)) {
				t.Errorf("%d %q, event %d: got %+v", c.code, c.body, i, g)
			}
		}
	}
	got := d.Classify(req, &destinations.Response{StatusCode: 200, ReceivedAt: now,
		Body: []byte(`[{"success":false,"errors":[{"statusCode":"ALL_OR_NONE_OPERATION_ROLLED_BACK","message":"rolled back","fields":[]}]},
			{"success":false,"errors":[{"statusCode":"DUPLICATES_DETECTED","message":"Use one of these records?","fields":[]}]}]`)})
	if got[0].Reason != "Salesforce rolled the Lead back with the other records of its request: ALL_OR_NONE_OPERATION_ROLLED_BACK: rolled back" ||
		got[1].Reason != "Salesforce refused the Lead: DUPLICATES_DETECTED: Use one of these records? (a duplicate rule in Salesforce blocked the record)" {
		t.Errorf("reasons %q, %q", got[0].Reason, got[1].Reason)
	}
	// A 413 splits a batch; a record alone is rejected.
	got = d.Classify(req, &destinations.Response{StatusCode: 413, ReceivedAt: now})
	if got[0].Outcome != destinations.Retryable || !got[0].Split || !got[1].Split {
		t.Errorf("413 to two records: %+v", got)
	}
	one := &destinations.Request{Events: []int{0}, Header: req.Header}
	if got := d.Classify(one, &destinations.Response{StatusCode: 413, ReceivedAt: now}); got[0].Outcome != destinations.Rejected || got[0].Split {
		t.Errorf("413 to one record: %+v", got[0])
	}
}
