// Package amplitude delivers events to Amplitude through its HTTP V2 API.
//
// The formats come from Amplitude's public documentation:
//
//   - HTTP V2 API, https://amplitude.com/docs/apis/analytics/http-v2
//     (POST /2/httpapi with api_key and events; the US and EU endpoints;
//     event fields, time in milliseconds; insert_id; min_id_length; the
//     200, 400, 413, 429 and 5xx answers and their bodies:
//     events_with_invalid_fields, events_with_missing_fields,
//     silenced_events, throttled_users, throttled_devices,
//     throttled_events, exceeded_daily_quota_users,
//     exceeded_daily_quota_devices; "pause sending events for that user
//     or device for 30 seconds");
//   - Batch Event Upload API, https://amplitude.com/docs/apis/analytics/batch-event-upload
//     (the same bodies; "Code 429 explained": throttling is per user_id and
//     per device_id, so work partitioned by them lets the others go on;
//     the daily limit of 500,000 events per user or device over a rolling
//     24 hours, counted in one-hour intervals);
//   - Batch and retry HTTP V2 API requests,
//     https://amplitude.com/docs/apis/analytics/http-api-batching-retries
//     (up to 2000 events per request; retry 429 and 5xx; "when a 400
//     response lists rejected events, remove those events and resend the
//     rest");
//   - Identify API, https://amplitude.com/docs/apis/analytics/identify
//     (user property operations such as $set).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; each says which page its answer copies, or
// that it is modelled, not recorded. Re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Deduplication
//
// Amplitude deduplicates: it ignores an event whose insert_id it has seen
// from the same project in the past 7 days. Every event carries its
// messageId as insert_id, so a retried batch does not double-count within
// that window (Integration.Deduplicates).
//
// # Requests
//
// Track, page, screen and identify calls go together, in batches of up to
// 2000 events and under 1 MB, to POST /2/httpapi as
// {"api_key", "events": [...], "options"}. Each event carries user_id
// (userId) and device_id (anonymousId), time in milliseconds, and the
// messageId as insert_id. A page call becomes "Loaded a Page" (or
// "Viewed <name> Page"), a screen call likewise. An identify call becomes
// an "$identify" event whose user_properties {"$set": {...}} carry the
// traits, so that it shares the batch, the insert_id and the answers of
// the other events.
//
// Amplitude refuses user and device ids shorter than 5 characters unless
// options.min_id_length says otherwise: such events are rejected in
// Transform, naming the min_id_length setting.
//
// # Outcomes
//
//   - 200: delivered.
//   - 400 with events_with_invalid_fields, events_with_missing_fields,
//     events_with_invalid_id_lengths (field -> indexes) or silenced_events:
//     Amplitude ingested nothing; the events listed are rejected with their
//     fields, the others are retried, which resends them without the bad
//     ones. A 400 saying "Invalid API key" rejects every event with the
//     settings to check; another 400 rejects them all with Amplitude's error.
//   - 413: the batch is too large; Split, so that the engine sends it again
//     in halves (an event alone still too large ends rejected).
//   - 429: Amplitude refused the whole upload because some users or devices
//     are over their limits, and names them. The events of a throttled
//     user or device (throttled_users, throttled_devices, throttled_events)
//     are held (Result.Hold, the key HoldKey gives) for the 30 seconds the
//     documentation asks; those of a user or device over its daily quota
//     (exceeded_daily_quota_users, exceeded_daily_quota_devices) are held
//     for an hour, the interval the rolling daily count moves by, and
//     marked Quota so that the wait is not counted against them. Every
//     other event is retried at once, without a wait: nothing of the upload
//     was ingested, and its insert_id makes a resend safe anyway. A 429
//     whose body names nobody is retried as a whole, after Retry-After if
//     sent.
//   - 5xx: retried.
package amplitude

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// The documented per-request limits of /2/httpapi: 2000 events, "under 1 MB".
const (
	MaxBatchEvents = 2000
	MaxBatchBytes  = 1_000_000
)

// ThrottleWait is how long Amplitude asks senders to pause a throttled
// user or device (HTTP V2 API, 429).
const ThrottleWait = 30 * time.Second

// QuotaWait is how long the events of a user or device over its daily
// quota are held: the daily count is a rolling 24 hours that moves in
// one-hour intervals (Batch Event Upload API, "Daily limit").
const QuotaWait = time.Hour

// defaultMinIDLength is Amplitude's own minimum length of user and device ids.
const defaultMinIDLength = 5

// Integration is the Amplitude integration.
var Integration = &destinations.Integration{
	Type: "amplitude",
	Settings: destinations.Schema{
		{
			Name:        "api_key",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The project's API key (Organization settings > Projects > the project > General).",
		},
		{
			Name:        "region",
			Type:        destinations.String,
			Default:     "us",
			Description: "Data residency of the project: us (api2.amplitude.com) or eu (api.eu.amplitude.com).",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Description: "Overrides the API base URL that region picks, for a proxy or a test server. Empty: by region.",
		},
		{
			Name:        "min_id_length",
			Type:        destinations.Int,
			Description: "The shortest user_id and device_id Amplitude accepts, sent as options.min_id_length. 0: Amplitude's default, 5.",
		},
	},
	EventTypes: []string{event.Track, event.Page, event.Screen, event.Identify},
	Batch:      destinations.BatchLimits{MaxEvents: MaxBatchEvents, MaxBytes: MaxBatchBytes},
	// insert_id, within 7 days (see the package doc).
	Deduplicates: true,
	New:          New,
}

var regions = []destinations.Region{
	{Name: "us", URL: "https://api2.amplitude.com"},
	{Name: "eu", URL: "https://api.eu.amplitude.com"},
}

// destination is one configured Amplitude project.
type destination struct {
	apiKey      string
	url         string
	minIDLength int
	// options is sent with every batch; nil when min_id_length is unset.
	options map[string]any
}

var (
	_ destinations.Destination = (*destination)(nil)
	_ destinations.HoldKeyer   = (*destination)(nil)
)

// New builds an Amplitude destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	d := &destination{apiKey: s.String("api_key"), minIDLength: defaultMinIDLength}

	base, err := s.RegionURL(regions)
	if err != nil {
		return nil, err
	}
	d.url = base + "/2/httpapi"

	if n := s.Int("min_id_length"); n != 0 {
		if n < 1 {
			return nil, fmt.Errorf("min_id_length: expected a positive number of characters, found %d", n)
		}
		d.minIDLength = n
		d.options = map[string]any{"min_id_length": n}
	}
	return d, nil
}

// record is one event of an /2/httpapi batch.
type record struct {
	UserID          string         `json:"user_id,omitempty"`
	DeviceID        string         `json:"device_id,omitempty"`
	EventType       string         `json:"event_type"`
	Time            int64          `json:"time"`
	InsertID        string         `json:"insert_id"`
	EventProperties map[string]any `json:"event_properties,omitempty"`
	UserProperties  map[string]any `json:"user_properties,omitempty"`
	Revenue         *float64       `json:"revenue,omitempty"`
	Price           *float64       `json:"price,omitempty"`
	Quantity        *float64       `json:"quantity,omitempty"`
	IP              string         `json:"ip,omitempty"`
	OSName          string         `json:"os_name,omitempty"`
	OSVersion       string         `json:"os_version,omitempty"`
	DeviceModel     string         `json:"device_model,omitempty"`
	AppVersion      string         `json:"app_version,omitempty"`
	Language        string         `json:"language,omitempty"`
	City            string         `json:"city,omitempty"`
	Region          string         `json:"region,omitempty"`
	Country         string         `json:"country,omitempty"`
}

// upload is the body of a /2/httpapi request.
type upload struct {
	APIKey  string            `json:"api_key"`
	Events  []json.RawMessage `json:"events"`
	Options map[string]any    `json:"options,omitempty"`
}

// Transform batches every supported call into /2/httpapi requests.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var items []plan.Item
	for i := range events {
		switch events[i].Type {
		case event.Track, event.Page, event.Screen, event.Identify:
		default:
			b.Unsupported(i, "Amplitude takes track, page, screen and identify calls, not "+events[i].Type)
			continue
		}
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		rec, reason := d.record(events[i].MessageID, m)
		if reason != "" {
			b.Reject(i, reason)
			continue
		}
		body, err := json.Marshal(rec)
		if err != nil {
			b.Reject(i, "the event cannot be encoded: "+err.Error())
			continue
		}
		items = append(items, plan.Item{Event: i, Body: body})
	}
	// The envelope: {"api_key":"...","events":[...],"options":{"min_id_length":N}}.
	envelope := 64 + len(d.apiKey)
	for _, run := range plan.Batches(items, MaxBatchEvents, MaxBatchBytes, 1, envelope) {
		u := upload{APIKey: d.apiKey, Options: d.options}
		idx := make([]int, len(run))
		for j, it := range run {
			u.Events = append(u.Events, it.Body)
			idx[j] = it.Event
		}
		body, err := json.Marshal(u)
		if err != nil {
			return destinations.Plan{}, err
		}
		b.Add(destinations.PostJSON(d.url, body, idx))
	}
	return b.Plan, nil
}

// record builds the Amplitude event of one call, or says why it cannot go.
func (d *destination) record(messageID string, m map[string]any) (*record, string) {
	r := &record{UserID: traits.UserID(m), DeviceID: traits.AnonymousID(m), InsertID: messageID}
	if r.UserID == "" && r.DeviceID == "" {
		return nil, "the event has neither userId nor anonymousId, which Amplitude needs as user_id or device_id"
	}
	for _, id := range []struct{ name, field, v string }{
		{"userId", "user_id", r.UserID}, {"anonymousId", "device_id", r.DeviceID},
	} {
		if id.v != "" && utf8.RuneCountInString(id.v) < d.minIDLength {
			return nil, fmt.Sprintf("%s %q is shorter than the %d characters Amplitude requires of a %s; lower the min_id_length setting to accept it",
				id.name, id.v, d.minIDLength, id.field)
		}
	}
	ts, ok := traits.Timestamp(m)
	if !ok {
		return nil, "the event has no readable timestamp, which Amplitude needs as time"
	}
	r.Time = ts.UnixMilli()
	if r.InsertID == "" {
		return nil, "the event has no messageId, which Amplitude needs as insert_id"
	}

	switch traits.Type(m) {
	case event.Track:
		r.EventType = traits.EventName(m)
		if r.EventType == "" {
			return nil, "the track call has no event name, which Amplitude needs as event_type"
		}
		if v, ok := traits.Revenue(m); ok {
			r.Revenue = &v
		}
		if v, ok := traits.Price(m); ok {
			r.Price = &v
		}
		if v, ok := traits.Quantity(m); ok {
			r.Quantity = &v
		}
	case event.Page:
		r.EventType = "Loaded a Page"
		if n := traits.EventName(m); n != "" {
			r.EventType = "Viewed " + n + " Page"
		}
	case event.Screen:
		r.EventType = "Loaded a Screen"
		if n := traits.EventName(m); n != "" {
			r.EventType = "Viewed " + n + " Screen"
		}
	case event.Identify:
		r.EventType = "$identify"
		r.UserProperties = map[string]any{"$set": userProperties(m)}
		a := traits.Address(m)
		r.City, r.Region, r.Country = a.City, a.State, a.Country
	}
	if props := traits.Properties(m); len(props) > 0 {
		r.EventProperties = props
	}

	c := traits.Context(m)
	r.IP = traits.IP(m)
	r.OSName = traits.String(traits.Get(c, "os", "name"))
	r.OSVersion = traits.String(traits.Get(c, "os", "version"))
	r.DeviceModel = traits.String(traits.Get(c, "device", "model"))
	r.AppVersion = traits.String(traits.Get(c, "app", "version"))
	r.Language = traits.String(traits.Get(c, "locale"))
	return r, ""
}

// userProperties are the traits an identify call sets, with the name and
// email the trait helpers read (so that firstName/lastName give a name).
func userProperties(m map[string]any) map[string]any {
	set := map[string]any{}
	for k, v := range traits.Traits(m) {
		set[k] = v
	}
	if e := traits.Email(m); e != "" {
		set["email"] = e
	}
	if n := traits.Name(m); n != "" {
		set["name"] = n
	}
	return set
}

// answer is the body of a /2/httpapi response other than 200.
type answer struct {
	Code                       int              `json:"code"`
	Error                      string           `json:"error"`
	MissingField               string           `json:"missing_field"`
	EventsWithInvalidFields    map[string][]int `json:"events_with_invalid_fields"`
	EventsWithMissingFields    map[string][]int `json:"events_with_missing_fields"`
	EventsWithInvalidIDLengths map[string][]int `json:"events_with_invalid_id_lengths"`
	SilencedEvents             []int            `json:"silenced_events"`
	EPSThreshold               int              `json:"eps_threshold"`
	ThrottledUsers             map[string]any   `json:"throttled_users"`
	ThrottledDevices           map[string]any   `json:"throttled_devices"`
	ThrottledEvents            []int            `json:"throttled_events"`
	ExceededDailyQuotaUsers    map[string]any   `json:"exceeded_daily_quota_users"`
	ExceededDailyQuotaDevices  map[string]any   `json:"exceeded_daily_quota_devices"`
}

// Classify reads a /2/httpapi answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	code := resp.StatusCode
	var a answer
	parsed := json.Unmarshal(resp.Body, &a) == nil
	switch {
	case code == http.StatusBadRequest && parsed:
		return classifyBadRequest(n, code, &a, resp.Body)
	case code == http.StatusUnauthorized, code == http.StatusForbidden:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, resp.Body) + ": " + checkKey})
	case code == http.StatusRequestEntityTooLarge:
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Split: true,
			Reason: destinations.StatusReason(code, resp.Body) + ": the batch is over Amplitude's 1 MB request limit; it is sent again in halves"})
	case code == http.StatusTooManyRequests && parsed:
		return classifyThrottled(req, code, &a, resp)
	}
	return destinations.Fill(n, destinations.ClassifyStatus(resp, resp.ReceivedAt))
}

const checkKey = "check api_key (Organization settings > Projects > the project > General), and that region matches the project's data residency (an EU project's key is unknown to the US endpoint)"

// classifyBadRequest reads a 400: nothing was ingested.
func classifyBadRequest(n, code int, a *answer, body []byte) []destinations.Result {
	if strings.Contains(strings.ToLower(a.Error), "api key") || a.MissingField == "api_key" {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: "Amplitude refused the API key (" + destinations.Snippet([]byte(a.Error), 120) + "): " + checkKey})
	}
	reasons := make([]string, n)
	blame := func(kind string, fields map[string][]int) {
		// Sorted, so that a reason naming two fields reads the same every time.
		names := make([]string, 0, len(fields))
		for f := range fields {
			names = append(names, f)
		}
		sort.Strings(names)
		for _, f := range names {
			for _, i := range fields[f] {
				if i >= 0 && i < n {
					if reasons[i] != "" {
						reasons[i] += "; "
					}
					reasons[i] += kind + " " + f
				}
			}
		}
	}
	blame("invalid", a.EventsWithInvalidFields)
	blame("missing", a.EventsWithMissingFields)
	blame("id too short:", a.EventsWithInvalidIDLengths)
	for _, i := range a.SilencedEvents {
		if i >= 0 && i < n && reasons[i] == "" {
			reasons[i] = "the device is silenced in Amplitude (Data > Block Filter)"
		}
	}
	out := make([]destinations.Result, n)
	blamed := false
	for i, r := range reasons {
		if r != "" {
			blamed = true
			out[i] = destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
				Reason: "Amplitude refused the event: " + r + " (" + a.Error + ")"}
		}
	}
	if !blamed {
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Rejected, StatusCode: code,
			Reason: destinations.StatusReason(code, body)})
	}
	for i := range out {
		if out[i].Outcome == 0 {
			out[i] = destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
				Reason: "Amplitude refused the batch because of other events in it; this event is sent again without them"}
		}
	}
	return out
}

// HoldKey is the key Amplitude throttles an event by: its user_id
// (userId) when it has one, else its device_id (anonymousId), so that a
// held user's later events wait behind the held one. An event of a
// throttled device that has a user_id is held under its user_id: one key
// per event, the one the engine queues its later events behind. "" when
// the event cannot be read (it is rejected in Transform anyway).
func (d *destination) HoldKey(e event.Event) string {
	m, err := e.Fields()
	if err != nil {
		return ""
	}
	return holdKey(traits.UserID(m), traits.AnonymousID(m))
}

func holdKey(userID, deviceID string) string {
	if userID != "" {
		return "user_id:" + userID
	}
	if deviceID != "" {
		return "device_id:" + deviceID
	}
	return ""
}

// classifyThrottled reads a 429: Amplitude ingested nothing of the
// upload. The events of the users and devices it names are held, the
// others retried at once.
func classifyThrottled(req *destinations.Request, code int, a *answer, resp *destinations.Response) []destinations.Result {
	n := len(req.Events)
	throttled := map[int]bool{}
	for _, i := range a.ThrottledEvents {
		throttled[i] = true
	}
	// The users and devices of each event, from the request, to match the
	// maps of the answer.
	var u upload
	var recs []record
	if json.Unmarshal(req.Body, &u) == nil {
		for _, raw := range u.Events {
			var r record
			_ = json.Unmarshal(raw, &r)
			recs = append(recs, r)
		}
	}
	has := func(m map[string]any, k string) bool { _, ok := m[k]; return k != "" && ok }
	wait := destinations.ParseRetryAfter(resp.Header, resp.ReceivedAt)
	named := len(a.ThrottledEvents)+len(a.ThrottledUsers)+len(a.ThrottledDevices)+
		len(a.ExceededDailyQuotaUsers)+len(a.ExceededDailyQuotaDevices) > 0
	if !named {
		// Nobody named: the whole upload waits, as any 429.
		return destinations.Fill(n, destinations.Result{Outcome: destinations.Retryable, StatusCode: code, RetryAfter: wait,
			Reason: destinations.StatusReason(code, resp.Body)})
	}
	out := make([]destinations.Result, n)
	for i := range out {
		var r record
		if i < len(recs) {
			r = recs[i]
		}
		key := holdKey(r.UserID, r.DeviceID)
		switch {
		case has(a.ExceededDailyQuotaUsers, r.UserID) || has(a.ExceededDailyQuotaDevices, r.DeviceID):
			out[i] = destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Hold: key, Quota: true,
				RetryAfter: max(wait, QuotaWait),
				Reason:     "Amplitude refused the event: its user or device is over the daily limit of events (500,000 over a rolling 24 hours)"}
		case throttled[i] || has(a.ThrottledUsers, r.UserID) || has(a.ThrottledDevices, r.DeviceID):
			reason := "Amplitude throttled the event: its user or device sent too many events per second"
			if a.EPSThreshold > 0 {
				reason = fmt.Sprintf("Amplitude throttled the event: its user or device sent more than %d events per second", a.EPSThreshold)
			}
			out[i] = destinations.Result{Outcome: destinations.Retryable, StatusCode: code, Hold: key,
				RetryAfter: max(wait, ThrottleWait), Reason: reason}
		default:
			out[i] = destinations.Result{Outcome: destinations.Retryable, StatusCode: code,
				Reason: "Amplitude refused the upload because of other users or devices in it; this event is sent again at once: " + destinations.Snippet([]byte(a.Error), 120)}
		}
	}
	return out
}
