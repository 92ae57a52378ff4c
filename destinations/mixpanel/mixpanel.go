// Package mixpanel delivers events to Mixpanel through its Ingestion API.
//
// The formats come from Mixpanel's public documentation:
//
//   - Import Events, https://docs.mixpanel.com/reference/import-events
//     (batches of up to 2000 events and 2 MB uncompressed, time in
//     milliseconds, distinct_id, $insert_id, strict mode, the us, eu and in
//     hosts, project token or service account auth);
//   - Set Property, https://docs.mixpanel.com/reference/profile-set (engage);
//   - Event Deduplication, https://docs.mixpanel.com/reference/event-deduplication,
//     and https://docs.mixpanel.com/troubleshooting/errors/duplicate-events
//     (the four-part key event, distinct_id, time and $insert_id);
//   - the error pages under https://docs.mixpanel.com/troubleshooting/errors:
//     400-bad-request (failed_records; the others were ingested), 401, 403,
//     413 and 429-rate-limit-exceeded (no Retry-After; back off from 2 s,
//     doubling up to 60 s, plus 1 to 5 s of jitter);
//   - ID management: https://docs.mixpanel.com/docs/tracking-methods/id-management
//     (Original and Simplified ID Merge),
//     https://docs.mixpanel.com/docs/tracking-methods/id-management/identifying-users-original,
//     Create Identity, https://docs.mixpanel.com/reference/create-identity
//     ($identify with $identified_id and $anon_id, the latter a UUID v4;
//     "only useful for projects using the Original ID Merge system"), and
//     Merge Identities, https://docs.mixpanel.com/reference/identity-merge
//     ($merge with $distinct_ids, accepted only through /import);
//   - Service Accounts, https://docs.mixpanel.com/reference/service-accounts.
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; each says which page its answer copies, or
// that it is modelled, not recorded. Re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Deduplication
//
// /import deduplicates: Mixpanel treats events with the same event name,
// distinct_id, time and $insert_id as one. Every event carries an
// $insert_id derived from its messageId (InsertID) and the same time on
// every attempt, so a retried batch does not double-count
// (Integration.Deduplicates). Profile updates (engage) set properties, so
// repeating one changes nothing.
//
// # Requests
//
// Track, page and screen calls go in batches to POST /import?strict=1 as a
// JSON array of {"event", "properties"}. Each event's properties carry
// distinct_id (userId, else anonymousId), $user_id and $device_id (the
// Simplified ID Merge links), time (milliseconds) and $insert_id. A page
// call becomes "Loaded a Page" (or "Viewed <name> Page" when named), a
// screen call likewise.
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
// The id_management setting names the project's ID management version.
// With "simplified" (the default) the $user_id and $device_id of events
// link anonymous and known activity, and nothing more is sent. With
// "original" the project needs the events of the Original ID Merge API:
//
//   - an identify call with both userId and an anonymousId in UUID form
//     first sends {"event": "$identify", "properties": {"$identified_id":
//     userId, "$anon_id": anonymousId}} to /import, all those of one batch
//     in one request made from Transform, then its profile update. When
//     that request fails the identify call is retried (or rejected, for
//     a refusal) before its profile is touched; a retry resends the
//     $identify with the same $insert_id. An anonymousId that is not a
//     UUID cannot be an $anon_id: only the profile is updated;
//   - an alias call becomes {"event": "$merge", "properties":
//     {"$distinct_ids": [previousId, userId]}} in the /import batch.
//     Mixpanel takes $merge only from a request authenticated with the
//     project's secret, so alias calls need the service account and are
//     unsupported without one (and with "simplified", where $merge does
//     nothing).
//
// # Outcomes
//
// /import answers 200 when every event was ingested, and 400 with
// failed_records (index, field, message) when some were not: the others
// were ingested, so the 400 is a partial success, resolved per event. 401
// and 403 reject with the credentials to check. 413 splits the batch
// (Result.Split), the engine sending it again in halves. 429 is retried
// after Retry-After when sent, else after the documented backoff: 2 s for
// the first 429 in a row, doubling up to 60 s, plus 1 to 5 s of jitter.
// 5xx is retried.
//
// engage answers 200 even when the update was refused: with verbose=1 the
// body is {"status": 1, "error": null} on success and {"status": 0,
// "error": "..."} on failure, which is Rejected with that error. Its 401,
// 413 and 429 are read as /import's.
package mixpanel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
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
			Name:        "id_management",
			Type:        destinations.String,
			Default:     "simplified",
			Description: "The project's ID management version (Project Settings > Identity Merge): simplified (Simplified ID Merge) or original (Original ID Merge, which needs $identify on identify calls and takes alias calls as $merge).",
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
	EventTypes: []string{event.Track, event.Page, event.Screen, event.Identify, event.Alias},
	Batch:      destinations.BatchLimits{MaxEvents: MaxBatchEvents, MaxBytes: MaxBatchBytes},
	// $insert_id (see the package doc).
	Deduplicates: true,
	New:          New,
}

var regions = []destinations.Region{
	{Name: "us", URL: "https://api.mixpanel.com"},
	{Name: "eu", URL: "https://api-eu.mixpanel.com"},
	{Name: "in", URL: "https://api-in.mixpanel.com"},
}

// The documented backoff after a 429 without Retry-After (429 Too Many
// Requests): BackoffStart for the first, doubling up to BackoffMax, plus
// between JitterMin and JitterMax.
const (
	BackoffStart = 2 * time.Second
	BackoffMax   = 60 * time.Second
	JitterMin    = 1 * time.Second
	JitterMax    = 5 * time.Second
)

// destination is one configured Mixpanel project.
type destination struct {
	token     string
	importURL string
	engageURL string
	// auth is the Authorization header of /import requests.
	auth string
	// original is id_management "original"; serviceAccount says /import
	// authenticates with one, which $merge needs.
	original       bool
	serviceAccount bool
	api            *destinations.Sender
	// jitter returns the jitter added to a backoff, in [JitterMin, JitterMax].
	jitter func() time.Duration

	// mu guards rateLimited, the 429s answered in a row, on which the
	// backoff grows. Mixpanel's rate limit is per project, as is a
	// destination, so every queue of the destination shares the count.
	mu          sync.Mutex
	rateLimited int
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Mixpanel destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	d, err := newDestination(cfg, func() time.Duration {
		return JitterMin + rand.N(JitterMax-JitterMin+1)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// newDestination is New with the backoff's jitter injected, for tests.
func newDestination(cfg destinations.Config, jitter func() time.Duration) (*destination, error) {
	s := cfg.Settings
	d := &destination{token: s.String("project_token"), api: cfg.Sender(nil), jitter: jitter}
	switch v := s.String("id_management"); v {
	case "", "simplified":
	case "original":
		d.original = true
	default:
		return nil, fmt.Errorf("id_management: expected simplified or original, found %q", v)
	}

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
		d.serviceAccount = true
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

// Transform batches track, page and screen calls (and, with Original ID
// Merge, alias calls as $merge) into /import requests and makes one engage
// request per identify call, after the $identify of those that link an
// anonymousId (see the package doc).
func (d *destination) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var batch []plan.Item
	var engage []*destinations.Request
	// links are the $identify records of the identify calls, sent first.
	var links []plan.Item
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
		case event.Alias:
			if !d.original {
				b.Unsupported(i, "Mixpanel takes alias calls ($merge) only in projects on Original ID Merge: set id_management to original if this project is")
				continue
			}
			if !d.serviceAccount {
				b.Unsupported(i, "Mixpanel takes $merge (alias calls) only from a request authenticated with the project's secret: set service_account_username, service_account_secret and project_id")
				continue
			}
			body, reason := d.mergeRecord(events[i].MessageID, m)
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
			if d.original {
				if link, ok := d.identifyRecord(events[i].MessageID, m); ok {
					links = append(links, plan.Item{Event: i, Body: link})
				}
			}
			engage = append(engage, destinations.PostJSON(d.engageURL, body, []int{i}))
		default:
			b.Unsupported(i, "Mixpanel takes track, page, screen, identify and alias calls, not "+events[i].Type)
		}
	}
	held := d.link(ctx, &b, links)
	for _, r := range engage {
		if !held[r.Events[0]] {
			b.Add(r)
		}
	}
	for _, run := range plan.Batches(batch, MaxBatchEvents, MaxBatchBytes, 1, 2) {
		body, idx := plan.JSONArray(run)
		b.Add(d.importRequest(body, idx))
	}
	return b.Plan, nil
}

func (d *destination) importRequest(body []byte, events []int) *destinations.Request {
	return &destinations.Request{
		Method: http.MethodPost,
		URL:    d.importURL,
		Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}},
		Body:   body,
		Events: events,
	}
}

// link sends the $identify records of links to /import, in requests of
// at most MaxBatchEvents, before the profile updates of their identify
// calls. It gives an outcome to each identify call whose $identify did
// not go through, and returns them: they are not sent further.
func (d *destination) link(ctx context.Context, b *plan.Builder, links []plan.Item) map[int]bool {
	held := map[int]bool{}
	for _, run := range plan.Batches(links, MaxBatchEvents, MaxBatchBytes, 1, 2) {
		body, idx := plan.JSONArray(run)
		req := d.importRequest(body, idx)
		resp, err := d.api.Do(ctx, req)
		var out []destinations.Result
		if err != nil {
			out = destinations.Fill(len(idx), destinations.Result{Outcome: destinations.Retryable, Reason: err.Error()})
		} else {
			out = d.classifyImport(req, resp)
		}
		for j, i := range idx {
			r := out[j]
			if r.Outcome == destinations.Delivered {
				continue
			}
			r.Reason = "the $identify linking anonymousId to userId did not go through, so the profile was not updated either: " + r.Reason
			r.Split = false
			if b.Plan.Results == nil {
				b.Plan.Results = map[int]destinations.Result{}
			}
			b.Plan.Results[i] = r
			held[i] = true
		}
	}
	return held
}

// uuid is the form Original ID Merge requires of an $anon_id.
var uuid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// identifyRecord encodes the $identify of an identify call with both a
// userId and an anonymousId in UUID form; ok is false for any other.
func (d *destination) identifyRecord(messageID string, m map[string]any) (body []byte, ok bool) {
	userID, anonID := traits.UserID(m), traits.AnonymousID(m)
	ts, hasTime := traits.Timestamp(m)
	if userID == "" || !uuid.MatchString(anonID) || !hasTime {
		return nil, false
	}
	body, err := json.Marshal(importEvent{Event: "$identify", Properties: map[string]any{
		"token":          d.token,
		"distinct_id":    userID,
		"$identified_id": userID,
		"$anon_id":       anonID,
		"time":           ts.UnixMilli(),
		"$insert_id":     InsertID("identify-" + messageID),
		"mp_lib":         "fanout",
	}})
	return body, err == nil
}

// mergeRecord encodes an alias call as a $merge of previousId and userId.
func (d *destination) mergeRecord(messageID string, m map[string]any) ([]byte, string) {
	userID, previous := traits.UserID(m), traits.PreviousID(m)
	if userID == "" || previous == "" {
		return nil, "the alias call needs both userId and previousId, the two distinct_ids Mixpanel's $merge joins"
	}
	ts, ok := traits.Timestamp(m)
	if !ok {
		return nil, "the event has no readable timestamp, which Mixpanel needs as time"
	}
	body, err := json.Marshal(importEvent{Event: "$merge", Properties: map[string]any{
		"token":         d.token,
		"distinct_id":   userID,
		"$distinct_ids": []string{previous, userID},
		"time":          ts.UnixMilli(),
		"$insert_id":    InsertID(messageID),
		"mp_lib":        "fanout",
	}})
	if err != nil {
		return nil, "the alias call cannot be encoded: " + err.Error()
	}
	return body, ""
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
	if ip := traits.IP(m); ip != "" {
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
	if ip := traits.IP(m); ip != "" {
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
		return destinations.Fill(len(req.Events), d.classifyEngage(resp))
	}
	return d.classifyImport(req, resp)
}

// backoff counts a 429 and returns the wait before the next request:
// Retry-After when sent, else the documented schedule. Any other answer
// resets the count (see answered). Requests in flight together that are
// all refused count as consecutive 429s: the wait grows faster under
// concurrency, never slower, which is the side the documentation asks
// to err on.
func (d *destination) backoff(resp *destinations.Response) time.Duration {
	d.mu.Lock()
	k := d.rateLimited
	d.rateLimited++
	d.mu.Unlock()
	if wait := destinations.ParseRetryAfter(resp.Header, resp.ReceivedAt); wait > 0 {
		return wait
	}
	wait := BackoffMax
	if k < 5 { // 2 s << 5 is over BackoffMax already
		wait = min(BackoffStart<<k, BackoffMax)
	}
	return wait + d.jitter()
}

// answered resets the 429 count after an answer that is not a 429.
func (d *destination) answered() {
	d.mu.Lock()
	d.rateLimited = 0
	d.mu.Unlock()
}

// common reads the answers /import and engage share: 401, 403, 413 and
// 429. ok is false for any other.
func (d *destination) common(resp *destinations.Response) (r destinations.Result, ok bool) {
	code := resp.StatusCode
	if code != http.StatusTooManyRequests {
		d.answered()
	}
	switch code {
	case http.StatusUnauthorized:
		return destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) +
				": check project_token, or service_account_username, service_account_secret and project_id (the service account needs the Owner or Admin role), and that region matches the project's data residency"}, true
	case http.StatusForbidden:
		return destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) + ": the credentials are valid but may not import into this project"}, true
	case http.StatusRequestEntityTooLarge:
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: destinations.StatusReason(code, resp.Body) + ": the request is over Mixpanel's 2 MB; it is sent again in halves"}, true
	case http.StatusTooManyRequests:
		return destinations.Result{Outcome: destinations.Retryable, StatusCode: code, RetryAfter: d.backoff(resp),
			Reason: destinations.StatusReason(code, resp.Body)}, true
	}
	return destinations.Result{}, false
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

func (d *destination) classifyImport(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	if r, ok := d.common(resp); ok {
		return destinations.Fill(n, r)
	}
	if code == http.StatusBadRequest {
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
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

// engageAnswer is the body of an engage response with verbose=1.
type engageAnswer struct {
	Status *int   `json:"status"`
	Error  string `json:"error"`
}

func (d *destination) classifyEngage(resp *destinations.Response) destinations.Result {
	if r, ok := d.common(resp); ok {
		return r
	}
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
