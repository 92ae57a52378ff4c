// Package ga4 delivers events to Google Analytics 4 through the
// Measurement Protocol.
//
// The formats come from Google's public documentation:
//
//   - Measurement Protocol reference,
//     https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference
//     (POST /mp/collect?measurement_id=&api_secret=; client_id, user_id,
//     events[].name, params, timestamp_micros; at most 25 events per
//     request; the limits: names of at most 40 characters, parameter
//     values of at most 100, 25 parameters per event, a 130 kB body,
//     events backdated at most 72 hours; reserved names and prefixes);
//   - Sending events,
//     https://developers.google.com/analytics/devguides/collection/protocol/ga4/sending-events
//     (the web stream request, page_view, the EU endpoint
//     region1.google-analytics.com);
//   - Validating events,
//     https://developers.google.com/analytics/devguides/collection/protocol/ga4/validating-events
//     (/debug/mp/collect and its validationMessages);
//   - Event naming rules, https://support.google.com/analytics/answer/13316687
//     (names start with a letter; letters, digits and underscores only).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// Track and page calls go to POST <api_url>/mp/collect, grouped by user:
// one request carries the events, at most 25, of one (client_id, user_id)
// pair, since those are per request. client_id is the anonymousId (a web
// stream needs one) and user_id the userId. A track call's event name is
// snake_cased ("Order Completed" becomes order_completed) and its
// properties become params under snake_cased names, with value and
// currency from the revenue helpers; a page call becomes page_view with
// page_location, page_title and page_referrer. Each event carries its own
// timestamp_micros.
//
// GA4 has no idempotency key: a request retried after GA4 did record it
// counts twice. Nothing fanout can send prevents that, so
// Integration.Deduplicates is false.
//
// # Validation
//
// GA4 answers 2xx to malformed events and drops them, so Transform checks
// what the documentation requires and rejects, with the rule broken, an
// event whose name or a parameter name is empty, longer than 40
// characters, not letters, digits and underscores starting with a letter,
// or reserved (the reserved event names, and the prefixes _, firebase_,
// ga_, google_ and gtag.); one with more than 25 parameters, a string
// parameter longer than 100 characters, or a nested value other than the
// ecommerce items list; one without anonymousId; and one more than 72
// hours old.
//
// With the `validate` setting, each request is also sent to
// /debug/mp/collect first, which records nothing and answers
// {"validationMessages": [{"fieldPath", "description", "validationCode"}]}.
// A message whose description names an event ("Event at index: [1] has
// invalid name ...") rejects that event with the description and code
// (NAME_INVALID, NAME_RESERVED, VALUE_INVALID, VALUE_REQUIRED,
// VALUE_OUT_OF_BOUNDS, EXCEEDED_MAX_ENTITIES, NAME_DUPLICATED); one that
// names none rejects every event of the request; the events left go to
// /mp/collect. A debug request that fails is retried. The validation
// server does not check api_secret or measurement_id.
//
// # Outcomes
//
// /mp/collect answers 2xx (usually 204): delivered, since that is all GA4
// says. 401 and 403 (which its front end gives to a request it refuses
// outright) reject with the settings to check; 429 and 5xx are retried,
// with Retry-After when given; a 413 to several events splits them
// (Result.Split), so that the engine sends them again in halves; other
// statuses are rejected.
package ga4

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// The documented limits of a Measurement Protocol request.
const (
	MaxEventsPerRequest = 25
	MaxRequestBytes     = 130_000
	MaxNameLength       = 40
	MaxParamValueLength = 100
	MaxParams           = 25
	MaxBackdate         = 72 * time.Hour
)

// Integration is the Google Analytics 4 integration.
var Integration = &destinations.Integration{
	Type: "ga4",
	Settings: destinations.Schema{
		{
			Name:        "measurement_id",
			Type:        destinations.String,
			Required:    true,
			Description: "The web data stream's Measurement ID, G-XXXXXXXXXX (Admin > Data streams > the stream).",
		},
		{
			Name:        "api_secret",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "A Measurement Protocol API secret of the same stream (Admin > Data streams > the stream > Measurement Protocol API secrets).",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Default:     "https://www.google-analytics.com",
			Description: "The collection endpoint's base URL: https://region1.google-analytics.com to collect in the EU, or a proxy or test server.",
		},
		{
			Name:        "validate",
			Type:        destinations.Bool,
			Default:     false,
			Description: "Send each request to the validation server (/debug/mp/collect) first and reject the events it finds invalid. Costs a request per batch.",
		},
	},
	EventTypes: []string{event.Track, event.Page},
	Batch:      destinations.BatchLimits{MaxEvents: MaxEventsPerRequest, MaxBytes: MaxRequestBytes},
	New:        New,
}

// destination is one configured GA4 web data stream.
type destination struct {
	collectURL string
	debugURL   string
	validate   bool
	api        *destinations.Sender // the requests outside the Plan
	now        func() time.Time
}

var _ destinations.Destination = (*destination)(nil)

// New builds a GA4 destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	return newDestination(cfg, time.Now)
}

var measurementID = regexp.MustCompile(`^G-[A-Z0-9]+$`)

func newDestination(cfg destinations.Config, now func() time.Time) (*destination, error) {
	s := cfg.Settings
	id := s.String("measurement_id")
	if !measurementID.MatchString(id) {
		return nil, fmt.Errorf("measurement_id: expected a web stream's Measurement ID such as G-ABC123DEF4, found %q", id)
	}
	base := s.String("api_url")
	if base == "" {
		base = "https://www.google-analytics.com"
	}
	if err := destinations.CheckURL("api_url", base); err != nil {
		return nil, err
	}
	base = strings.TrimRight(base, "/")
	q := url.Values{"measurement_id": {id}, "api_secret": {s.String("api_secret")}}.Encode()
	d := &destination{
		collectURL: base + "/mp/collect?" + q,
		debugURL:   base + "/debug/mp/collect?" + q,
		api:        cfg.Sender(now),
		now:        now,
	}
	d.validate = s.Bool("validate")
	return d, nil
}

// gaEvent is one event of a request.
type gaEvent struct {
	Name            string         `json:"name"`
	Params          map[string]any `json:"params,omitempty"`
	TimestampMicros int64          `json:"timestamp_micros"`
}

// payload is the body of a /mp/collect request.
type payload struct {
	ClientID string            `json:"client_id"`
	UserID   string            `json:"user_id,omitempty"`
	Events   []json.RawMessage `json:"events"`
}

// group is the events of one (client_id, user_id) pair, in input order.
type group struct {
	clientID, userID string
	items            []plan.Item
}

// Transform validates each event, groups them by user and cuts the groups
// by the per-request limits.
func (d *destination) Transform(ctx context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	var groups []*group
	byUser := map[[2]string]*group{}
	now := d.now()
	for i := range events {
		switch events[i].Type {
		case event.Track, event.Page:
		default:
			b.Unsupported(i, "GA4 takes track and page calls, not "+events[i].Type)
			continue
		}
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		clientID, userID := traits.AnonymousID(m), traits.UserID(m)
		if clientID == "" {
			b.Reject(i, "the event has no anonymousId, which GA4 needs as client_id")
			continue
		}
		if utf8.RuneCountInString(userID) > 256 {
			b.Reject(i, "userId is longer than the 256 characters GA4 takes as user_id")
			continue
		}
		ev, reason := gaEventOf(m, now)
		if reason != "" {
			b.Reject(i, reason)
			continue
		}
		body, err := json.Marshal(ev)
		if err != nil {
			b.Reject(i, "the event cannot be encoded: "+err.Error())
			continue
		}
		key := [2]string{clientID, userID}
		g := byUser[key]
		if g == nil {
			g = &group{clientID: clientID, userID: userID}
			byUser[key] = g
			groups = append(groups, g)
		}
		g.items = append(g.items, plan.Item{Event: i, Body: body})
	}
	for _, g := range groups {
		envelope := 64 + len(g.clientID) + len(g.userID)
		for _, run := range plan.Batches(g.items, MaxEventsPerRequest, MaxRequestBytes, 1, envelope) {
			if d.validate {
				run = d.validateRun(ctx, g, run, &b)
				if len(run) == 0 {
					continue
				}
			}
			b.Add(d.request(d.collectURL, g, run))
		}
	}
	return b.Plan, nil
}

// request builds the request carrying run.
func (d *destination) request(u string, g *group, run []plan.Item) *destinations.Request {
	p := payload{ClientID: g.clientID, UserID: g.userID}
	idx := make([]int, len(run))
	for j, it := range run {
		p.Events = append(p.Events, it.Body)
		idx[j] = it.Event
	}
	body, _ := json.Marshal(p) // raw messages and strings: cannot fail
	return destinations.PostJSON(u, body, idx)
}

// gaEventOf builds the GA4 event of a track or page call, or says which
// documented rule it breaks.
func gaEventOf(m map[string]any, now time.Time) (*gaEvent, string) {
	ts, ok := traits.Timestamp(m)
	if !ok {
		return nil, "the event has no readable timestamp, which GA4 needs as timestamp_micros"
	}
	if age := now.Sub(ts); age > MaxBackdate {
		return nil, fmt.Sprintf("the event happened %s ago; GA4 drops events backdated more than 72 hours",
			age.Truncate(time.Minute))
	}
	ev := &gaEvent{Params: map[string]any{}, TimestampMicros: ts.UnixMicro()}
	props := traits.Properties(m)
	if traits.Type(m) == event.Page {
		ev.Name = "page_view"
		put := traits.Record(ev.Params).Put
		put("page_location", cmp.Or(traits.String(props["url"]), traits.String(traits.Get(m, "context", "page", "url"))))
		put("page_title", cmp.Or(traits.String(props["title"]), traits.String(traits.Get(m, "context", "page", "title")), traits.EventName(m)))
		put("page_referrer", cmp.Or(traits.String(props["referrer"]), traits.String(traits.Get(m, "context", "page", "referrer"))))
		props = withoutKeys(props, "url", "title", "referrer")
	} else {
		raw := traits.EventName(m)
		if raw == "" {
			return nil, "the track call has no event name"
		}
		ev.Name = SnakeCase(raw)
		if reason := checkName(ev.Name, "event name", raw); reason != "" {
			return nil, reason
		}
		if reservedEvents[ev.Name] {
			return nil, fmt.Sprintf("event name %q (from %q) is reserved by GA4", ev.Name, raw)
		}
	}
	// In sorted order, so that of several bad properties the same one is
	// named on every attempt.
	for _, k := range slices.Sorted(maps.Keys(props)) {
		v := props[k]
		name := SnakeCase(k)
		if reason := checkName(name, "property name", k); reason != "" {
			return nil, reason
		}
		if reservedParams[name] {
			return nil, fmt.Sprintf("property %q becomes parameter %q, which GA4 reserves", k, name)
		}
		pv, reason := paramValue(name, k, v)
		if reason != "" {
			return nil, reason
		}
		if pv == nil {
			continue
		}
		if _, dup := ev.Params[name]; dup {
			return nil, fmt.Sprintf("property %q and another property both become parameter %q", k, name)
		}
		ev.Params[name] = pv
	}
	if traits.Type(m) == event.Track {
		if _, ok := ev.Params["value"]; !ok {
			if r, ok := traits.Revenue(m); ok {
				ev.Params["value"] = r
			}
		}
		if c := traits.Currency(m); c != "" {
			ev.Params["currency"] = c
		}
	}
	if len(ev.Params) > MaxParams {
		return nil, fmt.Sprintf("the event has %d parameters; GA4 takes at most %d", len(ev.Params), MaxParams)
	}
	if len(ev.Params) == 0 {
		ev.Params = nil
	}
	return ev, ""
}

// withoutKeys returns a copy of m without keys, so that the event's own
// map is not changed.
func withoutKeys(m map[string]any, keys ...string) map[string]any {
	out := maps.Clone(m)
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

// paramValue returns a property's value as a GA4 parameter value: strings
// of at most 100 characters, numbers, booleans as "true"/"false", and the
// ecommerce items list as is. nil values are left out.
func paramValue(name, prop string, v any) (any, string) {
	switch x := v.(type) {
	case nil:
		return nil, ""
	case string:
		if n := utf8.RuneCountInString(x); n > MaxParamValueLength {
			return nil, fmt.Sprintf("property %q is %d characters long; GA4 parameter values are at most %d", prop, n, MaxParamValueLength)
		}
		return x, ""
	case json.Number, float64, int, int64:
		return x, ""
	case bool:
		return strconv.FormatBool(x), ""
	case []any:
		if name == "items" {
			return x, ""
		}
	}
	return nil, fmt.Sprintf("property %q is %s; GA4 parameters are strings or numbers (only the ecommerce items list may be a list)", prop, kind(v))
}

func kind(v any) string {
	switch v.(type) {
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// SnakeCase turns a Segment event or property name into GA4's style:
// lower case, and every run of characters other than letters and digits
// becomes one underscore, trimmed at both ends ("Order Completed" ->
// "order_completed", "Product-Viewed!" -> "product_viewed").
func SnakeCase(s string) string {
	var b strings.Builder
	under := false
	for _, r := range s {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			if under && b.Len() > 0 {
				b.WriteByte('_')
			}
			under = false
			b.WriteRune(unicode.ToLower(r))
			continue
		}
		under = true
	}
	return b.String()
}

// checkName says which naming rule name (what raw became) breaks, "" when
// none: non-empty, at most 40 characters, starting with a letter, letters,
// digits and underscores, no reserved prefix.
func checkName(name, what, raw string) string {
	switch {
	case name == "":
		return fmt.Sprintf("%s %q has no letters or digits; GA4 names need them", what, raw)
	case utf8.RuneCountInString(name) > MaxNameLength:
		return fmt.Sprintf("%s %q becomes %q, longer than the %d characters GA4 allows", what, raw, name, MaxNameLength)
	}
	if r, _ := utf8.DecodeRuneInString(name); !unicode.IsLetter(r) {
		return fmt.Sprintf("%s %q becomes %q, which does not start with a letter as GA4 requires", what, raw, name)
	}
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(name, p) {
			return fmt.Sprintf("%s %q becomes %q, whose prefix %q GA4 reserves", what, raw, name, p)
		}
	}
	return ""
}

// The reserved names and prefixes of the Measurement Protocol reference.
var (
	reservedPrefixes = []string{"_", "firebase_", "ga_", "google_", "gtag."}
	reservedEvents   = set("ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query",
		"ad_reward", "adunit_exposure", "app_background", "app_clear_data", "app_exception",
		"app_remove", "app_store_refund", "app_store_subscription_cancel",
		"app_store_subscription_convert", "app_store_subscription_renew", "app_update",
		"app_upgrade", "dynamic_link_app_open", "dynamic_link_app_update",
		"dynamic_link_first_open", "error", "first_open", "first_visit", "in_app_purchase",
		"notification_dismiss", "notification_foreground", "notification_open",
		"notification_receive", "os_update", "session_start", "session_start_with_rollout",
		"user_engagement")
	reservedParams = set("firebase_conversion")
)

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// validationAnswer is the body of a /debug/mp/collect response.
type validationAnswer struct {
	ValidationMessages []struct {
		FieldPath      string `json:"fieldPath"`
		Description    string `json:"description"`
		ValidationCode string `json:"validationCode"`
	} `json:"validationMessages"`
}

// eventIndex finds "Event at index: [N]" in a validation message.
var eventIndex = regexp.MustCompile(`(?i)event at index: \[(\d+)\]`)

// validateRun sends run to the validation server, gives the events it
// finds invalid (or all of them, when the validation fails) their outcome
// in b, and returns the events left to send.
func (d *destination) validateRun(ctx context.Context, g *group, run []plan.Item, b *plan.Builder) []plan.Item {
	r := d.request(d.debugURL, g, run)
	a, err := d.debug(ctx, r)
	if err != nil {
		for _, it := range run {
			b.Retry(it.Event, "GA4 validation server: "+err.Error())
		}
		return nil
	}
	bad := map[int]string{}
	for _, msg := range a.ValidationMessages {
		reason := fmt.Sprintf("GA4 validation: %s (%s at %s)", msg.Description, msg.ValidationCode, msg.FieldPath)
		sub := eventIndex.FindStringSubmatch(msg.Description)
		j := -1
		if sub != nil {
			j, _ = strconv.Atoi(sub[1])
		}
		if j < 0 || j >= len(run) {
			// A message about the request as a whole (client_id, user_id,
			// user_properties): every event of it is concerned.
			for k := range run {
				bad[k] = joinReason(bad[k], reason)
			}
			continue
		}
		bad[j] = joinReason(bad[j], reason)
	}
	var left []plan.Item
	for j, it := range run {
		if reason, ok := bad[j]; ok {
			b.Reject(it.Event, reason)
			continue
		}
		left = append(left, it)
	}
	return left
}

func joinReason(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// debug performs a validation request.
func (d *destination) debug(ctx context.Context, r *destinations.Request) (*validationAnswer, error) {
	resp, err := d.api.Do(ctx, r)
	if err != nil {
		return nil, err
	}
	body := resp.Body
	if resp.StatusCode/100 != 2 {
		return nil, errors.New(destinations.StatusReason(resp.StatusCode, body))
	}
	var a validationAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("answered a body that is not its JSON: %s", destinations.Snippet(body, 200))
	}
	return &a, nil
}

// Classify reads a /mp/collect answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		r.Reason += ": check api_secret (Admin > Data streams > the stream > Measurement Protocol API secrets) and that measurement_id is the same stream's"
	case http.StatusRequestEntityTooLarge:
		if len(req.Events) > 1 {
			r.Outcome, r.Split = destinations.Retryable, true
			r.Reason += ": the request is over GA4's 130 kB limit; it is sent again in halves"
		}
	}
	return destinations.Fill(len(req.Events), r)
}
