// Package customerio delivers people and events to Customer.io Journeys
// through its Track API (v1).
//
// The formats come from Customer.io's public documentation:
//
//   - Journeys Track API, https://docs.customer.io/api/track/ (Basic
//     authentication with the workspace's site ID and Track API key; the
//     regional hosts track.customer.io and track-eu.customer.io;
//     PUT /api/v1/customers/{identifier} with attributes; POST
//     /api/v1/customers/{identifier}/events and POST /api/v1/events (anonymous)
//     with name, type, data, timestamp and id, "an identifier used to
//     deduplicate events", which must be a ULID; 429 above the fair-use
//     limit of 100 requests per second);
//   - Invalid Track API Requests,
//     https://docs.customer.io/journeys/invalid-api-requests (400 Bad Request
//     with {"meta": {"error": "..."}} and the list of error messages).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with credentials (see
// destinations/README.md) when you have them.
//
// # Requests
//
// One event per request, as the v1 API takes them:
//
//   - identify: PUT /api/v1/customers/{userId} with the traits as
//     attributes, email and created_at (Unix seconds) read through the
//     trait helpers, and anonymous_id so that Customer.io merges the
//     person's anonymous events into the profile;
//   - track, page, screen with a userId: POST
//     /api/v1/customers/{userId}/events with type event, page (named by the
//     page's URL, as Customer.io expects) or screen;
//   - the same without a userId but with an anonymousId: POST
//     /api/v1/events with anonymous_id.
//
// Every event carries id, derived from the messageId by EventID, so that a
// retried request is dropped by Customer.io as a duplicate.
//
// # Outcomes
//
// 2xx is delivered. 400 is rejected with the body's meta.error; 401 and 403
// are rejected with the settings to check; 429 and 5xx are retried, with
// the Retry-After the API gives. A redirect (an EU workspace addressed in the
// US region is redirected) is rejected with the advice to set region.
package customerio

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
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

// Integration is the Customer.io integration.
var Integration = &destinations.Integration{
	Type: "customerio",
	Settings: destinations.Schema{
		{
			Name:        "site_id",
			Type:        destinations.String,
			Required:    true,
			Description: "The workspace's Site ID (Settings > Workspace Settings > API and Webhook Credentials > Tracking API Keys). The username of the Track API's Basic authentication.",
		},
		{
			Name:        "api_key",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The Track API key paired with site_id (same page). Not an App API key, which the Track API refuses.",
		},
		{
			Name:        "region",
			Type:        destinations.String,
			Default:     "us",
			Description: "The workspace's data center: us (track.customer.io) or eu (track-eu.customer.io). Shown on the account's Privacy page.",
		},
		{
			Name:        "api_url",
			Type:        destinations.String,
			Description: "Overrides the Track API base URL that region picks, for a proxy or a test server. Empty: by region.",
		},
	},
	EventTypes: []string{event.Identify, event.Track, event.Page, event.Screen},
	New:        New,
}

var regions = map[string]string{
	"us": "https://track.customer.io",
	"eu": "https://track-eu.customer.io",
}

// destination is one configured Customer.io workspace.
type destination struct {
	base string
	auth string
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Customer.io destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	str := func(k string) string { v, _ := s[k].(string); return v }
	base := str("api_url")
	if base == "" {
		region := str("region")
		if region == "" {
			region = "us"
		}
		var ok bool
		if base, ok = regions[region]; !ok {
			return nil, fmt.Errorf("region: expected us or eu, found %q", region)
		}
	} else if err := destinations.CheckURL("api_url", base); err != nil {
		return nil, err
	}
	site, key := str("site_id"), str("api_key")
	if strings.Contains(site, ":") {
		return nil, fmt.Errorf("site_id: expected the Site ID alone, found a value with a colon")
	}
	return &destination{
		base: strings.TrimSuffix(strings.TrimRight(base, "/"), "/api/v1"),
		auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(site+":"+key)),
	}, nil
}

// Transform makes one request per event.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	for i := range events {
		m, err := events[i].Fields()
		if err != nil {
			b.Reject(i, "the event is not valid JSON: "+err.Error())
			continue
		}
		var req *destinations.Request
		var reason string
		switch events[i].Type {
		case event.Identify:
			req, reason = d.identify(m)
		case event.Track, event.Page, event.Screen:
			req, reason = d.track(events[i].MessageID, events[i].Type, m)
		default:
			b.Unsupported(i, "Customer.io takes identify, track, page and screen calls, not "+events[i].Type)
			continue
		}
		if reason != "" {
			b.Reject(i, reason)
			continue
		}
		req.Events = []int{i}
		b.Add(req)
	}
	return b.Plan, nil
}

func (d *destination) request(method, path string, body any) (*destinations.Request, string) {
	data, err := json.Marshal(body)
	if err != nil {
		return nil, "the event cannot be encoded: " + err.Error()
	}
	return &destinations.Request{
		Method: method,
		URL:    d.base + path,
		Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {d.auth}},
		Body:   data,
	}, ""
}

// identify builds PUT /api/v1/customers/{id}.
func (d *destination) identify(m map[string]any) (*destinations.Request, string) {
	id := traits.UserID(m)
	if id == "" {
		return nil, "the identify call has no userId, which Customer.io needs as the person's id (anonymous activity is merged in when the person is identified)"
	}
	attrs := map[string]any{}
	for k, v := range traits.Traits(m) {
		switch k {
		case "createdAt", "created_at", "email":
			// Set below from the trait helpers, in Customer.io's format.
		default:
			attrs[k] = v
		}
	}
	if e := traits.Email(m); e != "" {
		attrs["email"] = e
	}
	if t, ok := traits.CreatedAt(m); ok {
		attrs["created_at"] = t.Unix()
	}
	if a := traits.AnonymousID(m); a != "" {
		attrs["anonymous_id"] = a
	}
	return d.request(http.MethodPut, "/api/v1/customers/"+url.PathEscape(id), attrs)
}

// trackBody is the body of an event request.
type trackBody struct {
	Name        string         `json:"name"`
	Type        string         `json:"type"`
	ID          string         `json:"id"`
	Timestamp   int64          `json:"timestamp,omitempty"`
	AnonymousID string         `json:"anonymous_id,omitempty"`
	Data        map[string]any `json:"data,omitempty"`
}

// track builds an event request for a track, page or screen call.
func (d *destination) track(messageID, typ string, m map[string]any) (*destinations.Request, string) {
	body := trackBody{Type: "event", Data: traits.Properties(m)}
	switch typ {
	case event.Track:
		body.Name = traits.EventName(m)
		if body.Name == "" {
			return nil, "the track call has no event name"
		}
	case event.Page:
		// Customer.io names a page view by the page's URL.
		body.Type = "page"
		body.Name = traits.String(traits.Get(m, "properties", "url"))
		if body.Name == "" {
			body.Name = traits.String(traits.Get(m, "context", "page", "url"))
		}
		if body.Name == "" {
			body.Name = traits.EventName(m)
		}
		if body.Name == "" {
			return nil, "the page call has neither a URL (properties.url, context.page.url) nor a name"
		}
	case event.Screen:
		body.Type = "screen"
		body.Name = traits.EventName(m)
		if body.Name == "" {
			return nil, "the screen call has no name"
		}
	}
	ts, ok := traits.Timestamp(m)
	if ok {
		body.Timestamp = ts.Unix()
	}
	body.ID = EventID(messageID, ts)
	if id := traits.UserID(m); id != "" {
		return d.request(http.MethodPost, "/api/v1/customers/"+url.PathEscape(id)+"/events", body)
	}
	body.AnonymousID = traits.AnonymousID(m)
	if body.AnonymousID == "" {
		return nil, "the event has neither userId nor anonymousId, one of which Customer.io needs to attribute it"
	}
	return d.request(http.MethodPost, "/api/v1/events", body)
}

// crockford is the alphabet of ULIDs.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// EventID returns the id of the event with messageID that happened at ts:
// Customer.io drops an event whose id it has seen, and takes only ULIDs. A
// messageId that is a ULID is used as is (upper-cased); any other becomes
// the ULID whose time part is ts in milliseconds and whose random part is
// the first 80 bits of the messageId's SHA-256, the same on every retry.
func EventID(messageID string, ts time.Time) string {
	if isULID(messageID) {
		return strings.ToUpper(messageID)
	}
	var raw [16]byte
	ms := uint64(0)
	if !ts.IsZero() && ts.UnixMilli() > 0 {
		ms = uint64(ts.UnixMilli()) & (1<<48 - 1)
	}
	for i := 0; i < 6; i++ {
		raw[i] = byte(ms >> (40 - 8*i))
	}
	sum := sha256.Sum256([]byte(messageID))
	copy(raw[6:], sum[:10])
	// 26 characters of 5 bits hold 130 bits: the 128 of raw after two
	// leading zero bits.
	var out [26]byte
	for c := range out {
		v := 0
		for k := 0; k < 5; k++ {
			p := c*5 + k - 2
			v <<= 1
			if p >= 0 && raw[p/8]&(0x80>>(p%8)) != 0 {
				v |= 1
			}
		}
		out[c] = crockford[v]
	}
	return string(out[:])
}

// isULID reports whether s is 26 Crockford base32 characters whose first
// is at most 7 (the largest 128-bit value).
func isULID(s string) bool {
	if len(s) != 26 || s[0] > '7' {
		return false
	}
	for _, r := range strings.ToUpper(s) {
		if !strings.ContainsRune(crockford, r) {
			return false
		}
	}
	return true
}

// errorAnswer is the body of a 400.
type errorAnswer struct {
	Meta struct {
		Error string `json:"error"`
	} `json:"meta"`
}

// Classify reads the answer to one event's request (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	code := resp.StatusCode
	switch {
	case code == http.StatusBadRequest:
		var a errorAnswer
		if json.Unmarshal(resp.Body, &a) == nil && a.Meta.Error != "" {
			r.Reason = "Customer.io refused the event: " + a.Meta.Error
		}
	case code == http.StatusUnauthorized, code == http.StatusForbidden:
		r.Reason += ": check site_id and api_key (a Track API key, from Settings > Workspace Settings > API and Webhook Credentials), and that region matches the workspace's data center"
	case code >= 300 && code <= 399:
		r.Reason += " (an EU workspace needs region: eu)"
	}
	out := make([]destinations.Result, len(req.Events))
	for i := range out {
		out[i] = r
	}
	return out
}
