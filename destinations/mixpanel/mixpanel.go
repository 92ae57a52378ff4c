// Package mixpanel delivers events to Mixpanel through its Ingestion API.
//
// The formats come from Mixpanel's public documentation:
//
//   - Import Events, https://docs.mixpanel.com/reference/import-events
//     (batches of up to 2000 events and 2 MB, $insert_id, strict mode);
//   - Set Property, https://docs.mixpanel.com/reference/profile-set (engage);
//   - the error pages under https://docs.mixpanel.com/troubleshooting/errors
//     (400 with failed_records, 401, 413, 429);
//   - Service Accounts, https://docs.mixpanel.com/reference/service-accounts.
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Track, page and screen calls go in batches to POST /import?strict=1 as a
// JSON array of {"event", "properties"}. Each event's properties carry
// distinct_id (userId, else anonymousId), time (milliseconds), and
// $insert_id derived from the messageId: Mixpanel drops an event whose
// (event, distinct_id, time, $insert_id) it has already ingested, so a
// retried batch does not double-count. A page call becomes "Loaded a Page"
// (or "Viewed <name> Page" when named), a screen call likewise.
//
// /import authenticates with a service account (HTTP Basic with the
// account's username and secret, and ?project_id=) when service_account_*
// are set, and otherwise with the project token as the Basic username and
// an empty password, both as the documentation describes.
//
// Identify calls become profile updates: POST /engage?verbose=1 with
// [{"$token", "$distinct_id", "$set": {...}}]. Each goes alone, because
// engage answers one status for the whole request: batching would let one
// bad profile reject the others.
//
// # Outcomes
//
// /import answers 200 when every event was ingested, and 400 with
// failed_records (index, field, message) when some were not: the others
// were ingested, so the 400 is a partial success, resolved per event. 401
// and 403 reject with the credentials to check; 429 and 5xx are retried
// (Mixpanel documents no Retry-After, but one is honoured if sent).
//
// engage answers 200 even when the update was refused: with verbose=1 the
// body is {"status": 1, "error": null} on success and {"status": 0,
// "error": "..."} on failure, which is Rejected with that error.
package mixpanel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
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
)

// The documented per-request limits of /import.
const (
	MaxBatchEvents = 2000
	MaxBatchBytes  = 2 << 20
)

// Integration is the Mixpanel integration.
var Integration = &destinations.Integration{
	Type: "mixpanel",
	Settings: destinations.Schema{
		{
			Name:        "project_token",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The project token (Project Settings > Access Keys). Identifies the project in profile updates, and authenticates /import when no service account is set.",
		},
		{
			Name:        "service_account_username",
			Type:        destinations.String,
			Description: "Username of a service account with the Owner or Admin role on the project. With service_account_secret and project_id, authenticates /import; empty: the project token does.",
		},
		{
			Name:        "service_account_secret",
			Type:        destinations.String,
			Secret:      true,
			Description: "Secret of the service account.",
		},
		{
			Name:        "project_id",
			Type:        destinations.String,
			Description: "The numeric project id, required with a service account.",
		},
		{
			Name:        "region",
			Type:        destinations.String,
			Default:     "us",
			Description: "Data residency of the project: us (api.mixpanel.com), eu (api-eu.mixpanel.com) or in (api-in.mixpanel.com).",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Description: "Overrides the API base URL that region picks, for a proxy or a test server. Empty: by region.",
		},
	},
	EventTypes: []string{event.Track, event.Page, event.Screen, event.Identify},
	Batch:      destinations.BatchLimits{MaxEvents: MaxBatchEvents, MaxBytes: MaxBatchBytes},
	New:        New,
}

var regions = []destinations.Region{
	{Name: "us", URL: "https://api.mixpanel.com"},
	{Name: "eu", URL: "https://api-eu.mixpanel.com"},
	{Name: "in", URL: "https://api-in.mixpanel.com"},
}

// destination is one configured Mixpanel project.
type destination struct {
	token     string
	importURL string
	engageURL string
	// auth is the Authorization header of /import requests.
	auth string
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Mixpanel destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	d := &destination{token: s.String("project_token")}

	base, err := s.RegionURL(regions)
	if err != nil {
		return nil, err
	}

	user, secret, project := s.String("service_account_username"), s.String("service_account_secret"), s.String("project_id")
	q := url.Values{"strict": {"1"}}
	switch {
	case user == "" && secret == "":
		d.auth = basic(d.token, "")
	case user == "" || secret == "":
		return nil, fmt.Errorf("service_account_username and service_account_secret: set both or neither")
	case project == "":
		return nil, fmt.Errorf("project_id: required with a service account (Project Settings > Overview)")
	default:
		d.auth = basic(user, secret)
		q.Set("project_id", project)
	}
	d.importURL = base + "/import?" + q.Encode()
	d.engageURL = base + "/engage?verbose=1"
	return d, nil
}

func basic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// importEvent is one record of an /import batch.
type importEvent struct {
	Event      string         `json:"event"`
	Properties map[string]any `json:"properties"`
}

// Transform batches track, page and screen calls into /import requests
// and makes one engage request per identify call.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var batch []plan.Item
	for i := range events {
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		switch events[i].Type {
		case event.Track, event.Page, event.Screen:
			body, reason := d.importRecord(events[i].MessageID, m)
			if reason != "" {
				b.Reject(i, reason)
				continue
			}
			batch = append(batch, plan.Item{Event: i, Body: body})
		case event.Identify:
			body, reason := d.engageRecord(m)
			if reason != "" {
				b.Reject(i, reason)
				continue
			}
			b.Add(&destinations.Request{
				Method: http.MethodPost,
				URL:    d.engageURL,
				Header: http.Header{"Content-Type": {"application/json"}},
				Body:   body,
				Events: []int{i},
			})
		default:
			b.Unsupported(i, "Mixpanel takes track, page, screen and identify calls, not "+events[i].Type)
		}
	}
	for _, run := range plan.Batches(batch, MaxBatchEvents, MaxBatchBytes, 1, 2) {
		body, idx := plan.JSONArray(run)
		b.Add(&destinations.Request{
			Method: http.MethodPost,
			URL:    d.importURL,
			Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}},
			Body:   body,
			Events: idx,
		})
	}
	return b.Plan, nil
}

// importRecord encodes one event for /import, or says why it cannot go.
func (d *destination) importRecord(messageID string, m map[string]any) ([]byte, string) {
	props := map[string]any{}
	for k, v := range traits.Properties(m) {
		props[k] = v
	}
	var name string
	switch traits.Type(m) {
	case event.Track:
		name = traits.EventName(m)
		if name == "" {
			return nil, "the track call has no event name"
		}
	case event.Page:
		name = "Loaded a Page"
		if n := traits.EventName(m); n != "" {
			name = "Viewed " + n + " Page"
		}
	case event.Screen:
		name = "Loaded a Screen"
		if n := traits.EventName(m); n != "" {
			name = "Viewed " + n + " Screen"
		}
	}
	userID, anonID := traits.UserID(m), traits.AnonymousID(m)
	distinct := userID
	if distinct == "" {
		distinct = anonID
	}
	if distinct == "" {
		return nil, "the event has neither userId nor anonymousId, which Mixpanel needs as distinct_id"
	}
	ts, ok := traits.Timestamp(m)
	if !ok {
		return nil, "the event has no readable timestamp, which Mixpanel needs as time"
	}
	props["token"] = d.token
	props["distinct_id"] = distinct
	props["time"] = ts.UnixMilli()
	props["$insert_id"] = InsertID(messageID)
	if userID != "" {
		props["$user_id"] = userID
	}
	if anonID != "" {
		props["$device_id"] = anonID
	}
	ctx := traits.Context(m)
	if ip := traits.String(ctx["ip"]); ip != "" {
		props["ip"] = ip
	}
	if u := traits.String(traits.Get(ctx, "page", "url")); u != "" {
		props["$current_url"] = u
	}
	if r := traits.String(traits.Get(ctx, "page", "referrer")); r != "" {
		props["$referrer"] = r
	}
	if os := traits.String(traits.Get(ctx, "os", "name")); os != "" {
		props["$os"] = os
	}
	props["mp_lib"] = "fanout"
	body, err := json.Marshal(importEvent{Event: name, Properties: props})
	if err != nil {
		return nil, "the event cannot be encoded: " + err.Error()
	}
	return body, ""
}

// InsertID returns the $insert_id of the event with messageID. Mixpanel
// takes at most 36 letters, digits and dashes: a messageId that fits is
// used as is, so that it can be found in Mixpanel; any other is replaced
// by 32 hex digits of its SHA-256, the same on every retry.
func InsertID(messageID string) string {
	if len(messageID) > 0 && len(messageID) <= 36 && strings.Trim(messageID,
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") == "" {
		return messageID
	}
	sum := sha256.Sum256([]byte(messageID))
	return hex.EncodeToString(sum[:16])
}

// profileFields are Mixpanel's reserved profile properties for the usual
// traits.
var profileFields = traits.ContactFields{
	Email: "$email", FirstName: "$first_name", LastName: "$last_name", Phone: "$phone",
	City: "$city", State: "$region", Country: "$country_code",
}

// Reserved profile properties Mixpanel shows in its UI, from the traits
// helpers rather than from trait names, so that first_name and firstName
// both fill $first_name.
func reserved(m map[string]any) map[string]any {
	set := traits.Record{}
	set.PutContact(m, profileFields)
	set.Put("$name", traits.Name(m))
	set.Put("$avatar", traits.Avatar(m))
	if t, ok := traits.CreatedAt(m); ok {
		set["$created"] = t.UTC().Format(time.RFC3339)
	}
	return set
}

// mappedTraits are the traits reserved() carries under Mixpanel's names;
// they are not also copied under their own.
var mappedTraits = map[string]bool{
	"email": true, "name": true, "firstName": true, "first_name": true, "lastName": true,
	"last_name": true, "phone": true, "avatar": true, "createdAt": true, "created_at": true,
}

// engageRecord encodes an identify call as a one-element engage batch.
func (d *destination) engageRecord(m map[string]any) ([]byte, string) {
	distinct := traits.UserID(m)
	if distinct == "" {
		distinct = traits.AnonymousID(m)
	}
	if distinct == "" {
		return nil, "the identify call has neither userId nor anonymousId, which Mixpanel needs as $distinct_id"
	}
	set := reserved(m)
	for k, v := range traits.Traits(m) {
		if !mappedTraits[k] {
			set[k] = v
		}
	}
	rec := map[string]any{
		"$token":       d.token,
		"$distinct_id": distinct,
		"$set":         set,
	}
	// Without $ip Mixpanel would geolocate fanout's own address.
	if ip := traits.String(traits.Get(m, "context", "ip")); ip != "" {
		rec["$ip"] = ip
	} else {
		rec["$ip"] = "0"
	}
	body, err := json.Marshal([]any{rec})
	if err != nil {
		return nil, "the identify call cannot be encoded: " + err.Error()
	}
	return body, ""
}

// Classify reads /import and engage answers (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	if strings.Contains(req.URL, "/engage") {
		return destinations.Fill(len(req.Events), classifyEngage(resp))
	}
	return classifyImport(req, resp)
}

// importAnswer is the body of an /import response.
type importAnswer struct {
	Code          int    `json:"code"`
	Error         string `json:"error"`
	Status        string `json:"status"`
	Imported      *int   `json:"num_records_imported"`
	FailedRecords []struct {
		Index    int    `json:"index"`
		InsertID string `json:"insert_id"`
		Field    string `json:"field"`
		Message  string `json:"message"`
	} `json:"failed_records"`
}

func classifyImport(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	switch code {
	case http.StatusBadRequest:
		var a importAnswer
		if json.Unmarshal(resp.Body, &a) == nil && len(a.FailedRecords) > 0 {
			// Partial success: the records not listed were ingested.
			out := destinations.Fill(n, destinations.Result{Outcome: destinations.Delivered, StatusCode: code})
			for _, f := range a.FailedRecords {
				if f.Index < 0 || f.Index >= n {
					continue
				}
				reason := f.Message
				if f.Field != "" && !strings.Contains(reason, f.Field) {
					reason = f.Field + ": " + reason
				}
				out[f.Index] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
					Reason: "Mixpanel refused the event: " + reason}
			}
			return out
		}
	case http.StatusUnauthorized:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) +
				": check project_token, or service_account_username, service_account_secret and project_id (the service account needs the Owner or Admin role), and that region matches the project's data residency"})
	case http.StatusForbidden:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) + ": the credentials are valid but may not import into this project"})
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

// engageAnswer is the body of an engage response with verbose=1.
type engageAnswer struct {
	Status *int   `json:"status"`
	Error  string `json:"error"`
}

func classifyEngage(resp *destinations.Response) destinations.Result {
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	if r.Outcome != destinations.Delivered {
		return r
	}
	body := bytes.TrimSpace(resp.Body)
	// Without verbose, engage answers a bare 1 or 0.
	switch string(body) {
	case "1":
		return r
	case "0":
		return destinations.Result{Outcome: destinations.Rejected, StatusCode: resp.StatusCode,
			Reason: "Mixpanel answered 200 with 0: the profile update was refused"}
	}
	var a engageAnswer
	if err := json.Unmarshal(body, &a); err != nil || a.Status == nil {
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: resp.StatusCode,
			Reason: "Mixpanel answered 200 with a body that is not engage's status: " + destinations.Snippet(body, 200)}
	}
	if *a.Status != 1 {
		reason := a.Error
		if reason == "" {
			reason = "no error given"
		}
		return destinations.Result{Outcome: destinations.Rejected, StatusCode: resp.StatusCode,
			Reason: "Mixpanel answered 200 but refused the profile update: " + reason}
	}
	return r
}
