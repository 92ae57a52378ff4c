// Package slack posts a message to a Slack channel for each track and
// identify call, through an incoming webhook.
//
// The formats come from Slack's public documentation:
//
//   - Sending messages using incoming webhooks,
//     https://api.slack.com/messaging/webhooks (POST the webhook URL a JSON
//     body {"text": ...}; Slack answers 200 "ok");
//   - Improving error conditions for Incoming Webhooks,
//     https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks
//     (plain-text error bodies: 400 invalid_payload and user_not_found, 403
//     action_prohibited, 404 channel_not_found, 410 channel_is_archived, 500
//     rollup_error), with the later codes of the webhooks page (400 no_text,
//     403 invalid_token and posting_to_general_channel_denied, 404
//     no_service and no_team);
//   - Rate Limits, https://api.slack.com/docs/rate-limits (about one message
//     per second with short bursts; above that, 429 with Retry-After in
//     seconds);
//   - Legacy custom integrations: incoming webhooks,
//     https://api.slack.com/legacy/custom-integrations/messaging/webhooks
//     (channel, username, icon_emoji and icon_url override the webhook's
//     defaults; webhooks of Slack apps ignore them);
//   - Formatting text, https://api.slack.com/reference/surfaces/formatting
//     (&, < and > are escaped as &amp;, &lt; and &gt;).
//
// The tapes in testdata/ were written by hand from the request and response
// examples of those pages, since the live API cannot be reached from where
// this integration was written; re-record them with a webhook URL (see
// destinations/README.md) when you have one.
//
// # Requests
//
// Each event is one message: Slack has no batch endpoint and no
// idempotency key, so a retried event may post its message twice
// (Integration.Deduplicates is false).
//
//	POST <webhook_url>
//	{"text": "Ada Lovelace did *Order Completed*", "channel": ..., "username": ..., "icon_emoji": ..., "icon_url": ...}
//
// The text comes from the track_template or identify_template setting, a Go
// text/template (https://pkg.go.dev/text/template) executed over Data. The
// templates are parsed and tried on a sample event when the destination is
// built, so a template that does not parse, or names a field Data does not
// have, is a configuration error naming the setting. Every string of the
// event is escaped for Slack before the template sees it, so that an event
// property cannot mention @channel or forge a link; the template's own text
// is not, so a template may use Slack's markup (<!here>, <https://x|a link>).
//
// # Outcomes
//
// 2xx is delivered. Slack answers failures with a status and a one-word
// plain-text body, which decides the reason:
//
//   - 429 rate_limited and 5xx (rollup_error) are retried, after the
//     Retry-After Slack gives;
//   - invalid_token, no_service and no_team (the webhook URL was revoked,
//     disabled or belongs to a deleted workspace) are rejected with what to
//     do about webhook_url;
//   - channel_not_found, channel_is_archived, user_not_found,
//     action_prohibited and posting_to_general_channel_denied are rejected
//     with what to do about the channel;
//   - invalid_payload and no_text are rejected with what to check in the
//     templates and icon settings.
//
// Slack documents no 2xx answer that means failure.
package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/template"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/destinations/traits"
	"github.com/fanout/fanout/internal/event"
)

// The default templates, one per supported call type.
const (
	DefaultTrackTemplate    = `{{.User}} did *{{.Event}}*`
	DefaultIdentifyTemplate = `Identified {{.User}}{{if and .Email (ne .Email .User)}} ({{.Email}}){{end}}`
)

// Integration is the Slack integration.
var Integration = &destinations.Integration{
	Type: "slack",
	Settings: destinations.Schema{
		{
			Name:        "webhook_url",
			Type:        destinations.String,
			Required:    true,
			Secret:      true,
			Description: "The incoming webhook URL, https://hooks.slack.com/services/T.../B.../... (your Slack app > Incoming Webhooks > Webhook URLs for Your Workspace). Anyone with it can post to the channel: keep it secret.",
		},
		{
			Name:        "track_template",
			Type:        destinations.String,
			Default:     DefaultTrackTemplate,
			Description: "The message posted for a track call: a Go text/template over .Event, .User, .UserID, .AnonymousID, .Email, .Name, .Properties and .Traits (a missing property is best read as {{or .Properties.plan \"none\"}}); the json function prints a value as JSON. Slack markup such as *bold* and <!here> is allowed.",
		},
		{
			Name:        "identify_template",
			Type:        destinations.String,
			Default:     DefaultIdentifyTemplate,
			Description: "The message posted for an identify call: a Go text/template over the same fields as track_template.",
		},
		{
			Name:        "channel",
			Type:        destinations.String,
			Description: "The channel to post to, such as #signups, instead of the webhook's own. Only legacy custom-integration webhooks honour it; webhooks of Slack apps always post to the channel chosen at install.",
		},
		{
			Name:        "username",
			Type:        destinations.String,
			Description: "The name the message is posted under. Legacy webhooks only, like channel.",
		},
		{
			Name:        "icon_emoji",
			Type:        destinations.String,
			Description: "An emoji shown as the poster's icon, such as :rocket:. Legacy webhooks only, like channel.",
		},
		{
			Name:        "icon_url",
			Type:        destinations.String,
			Description: "The URL of an image shown as the poster's icon; icon_emoji wins when both are set. Legacy webhooks only, like channel.",
		},
	},
	EventTypes: []string{event.Track, event.Identify},
	New:        New,
}

// Data is what a template sees. Every string in it, those inside
// Properties and Traits included, has been escaped for Slack.
type Data struct {
	// Type is the call type: "track" or "identify".
	Type string
	// Event is a track call's event name, "" for identify.
	Event string
	// User names the user for a message: Name, else Email, else UserID,
	// else AnonymousID.
	User string
	// UserID and AnonymousID are the event's ids.
	UserID      string
	AnonymousID string
	// Email and Name are read from the user's traits (see package traits).
	Email string
	Name  string
	// Properties are a track call's properties, nil for identify.
	Properties map[string]any
	// Traits are the user's traits: an identify call's traits, or a track
	// call's context.traits.
	Traits map[string]any
}

// sample is the event the templates are tried on when the destination is
// built.
var sample = Data{
	Type:        event.Track,
	Event:       "Order Completed",
	User:        "Ada Lovelace",
	UserID:      "u-1",
	AnonymousID: "a-1",
	Email:       "ada@example.com",
	Name:        "Ada Lovelace",
	Properties:  map[string]any{"revenue": json.Number("19.99")},
	Traits:      map[string]any{"plan": "pro"},
}

// funcs are the functions templates may call.
var funcs = template.FuncMap{
	// json prints a value as compact JSON. It leaves <, > and & as they
	// are: strings from the event are already escaped for Slack.
	"json": func(v any) (string, error) {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return "", err
		}
		return strings.TrimSuffix(b.String(), "\n"), nil
	},
}

// message is the body of a webhook request.
type message struct {
	Text      string `json:"text"`
	Channel   string `json:"channel,omitempty"`
	Username  string `json:"username,omitempty"`
	IconEmoji string `json:"icon_emoji,omitempty"`
	IconURL   string `json:"icon_url,omitempty"`
}

// destination is one configured webhook.
type destination struct {
	url       string
	templates map[string]*template.Template // by call type
	settingOf map[string]string             // template setting name by call type
	overrides message                       // Text empty
}

var _ destinations.Destination = (*destination)(nil)

// New builds a Slack destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	s := cfg.Settings
	d := &destination{
		url:       s.String("webhook_url"),
		templates: map[string]*template.Template{},
		settingOf: map[string]string{event.Track: "track_template", event.Identify: "identify_template"},
		overrides: message{
			Channel:   s.String("channel"),
			Username:  s.String("username"),
			IconEmoji: s.String("icon_emoji"),
			IconURL:   s.String("icon_url"),
		},
	}
	// The URL is a credential: the error says what was expected, never
	// what was found.
	if !destinations.IsHTTPURL(d.url) {
		return nil, fmt.Errorf("webhook_url: expected the webhook's https URL, such as https://hooks.slack.com/services/T000/B000/XXXX")
	}
	if d.overrides.IconURL != "" {
		if !destinations.IsHTTPURL(d.overrides.IconURL) {
			return nil, fmt.Errorf("icon_url: expected an image's http or https URL, found %q", d.overrides.IconURL)
		}
	}
	for typ, key := range d.settingOf {
		text := s.String(key)
		if text == "" {
			// Validate fills in the default; an explicit blank means it.
			return nil, fmt.Errorf("%s: expected a template, found an empty one", key)
		}
		t, err := parseTemplate(key, text)
		if err != nil {
			return nil, err
		}
		d.templates[typ] = t
	}
	return d, nil
}

// parseTemplate parses a template setting and tries it on the sample event,
// so that a field Data does not have ({{.Nope}}) fails here and not on
// every event. Other failures on the sample, such as {{index .Properties
// "items" 0}}, depend on the event: they reject only the events they fail
// on.
func parseTemplate(key, text string) (*template.Template, error) {
	t, err := template.New(key).Funcs(funcs).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%s: the template does not parse: %w", key, err)
	}
	err = t.Execute(io.Discard, sample)
	var execErr template.ExecError
	if errors.As(err, &execErr) && strings.Contains(execErr.Error(), "can't evaluate field") {
		return nil, fmt.Errorf("%s: the template names a field events do not have (see Data for the fields): %w", key, err)
	}
	return t, nil
}

// data builds the template's view of an event.
func data(typ string, m map[string]any) Data {
	d := Data{
		Type:        typ,
		Event:       escape(traits.EventName(m)),
		UserID:      escape(traits.UserID(m)),
		AnonymousID: escape(traits.AnonymousID(m)),
		Email:       escape(traits.Email(m)),
		Name:        escape(traits.Name(m)),
		Traits:      escapeMap(traits.Traits(m)),
	}
	if typ == event.Track {
		d.Properties = escapeMap(traits.Properties(m))
	}
	for _, u := range []string{d.Name, d.Email, d.UserID, d.AnonymousID} {
		if u != "" {
			d.User = u
			break
		}
	}
	return d
}

// escaper escapes the three characters Slack reads as markup.
var escaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func escape(s string) string { return escaper.Replace(s) }

// escapeMap returns a copy of m with every string escaped, at any depth.
func escapeMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[escape(k)] = escapeValue(v)
	}
	return out
}

func escapeValue(v any) any {
	switch v := v.(type) {
	case string:
		return escape(v)
	case map[string]any:
		return escapeMap(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = escapeValue(e)
		}
		return out
	}
	return v
}

// Transform renders one message per event.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	for i := range events {
		typ := events[i].Type
		t, ok := d.templates[typ]
		if !ok {
			b.Unsupported(i, "Slack takes track and identify calls only, not "+typ)
			continue
		}
		m, ok := b.Fields(i, &events[i])
		if !ok {
			continue
		}
		var text strings.Builder
		if err := t.Execute(&text, data(typ, m)); err != nil {
			b.Reject(i, fmt.Sprintf("%s fails on this event: %v", d.settingOf[typ], err))
			continue
		}
		msg := d.overrides
		msg.Text = strings.TrimSpace(text.String())
		if msg.Text == "" {
			b.Reject(i, d.settingOf[typ]+" gives an empty message for this event, and Slack refuses those (no_text)")
			continue
		}
		body, err := json.Marshal(msg)
		if err != nil {
			return destinations.Plan{}, err
		}
		b.Add(destinations.PostJSON(d.url, body, []int{i}))
	}
	return b.Plan, nil
}

// hints say what to do about each error Slack names in a failure's body.
var hints = map[string]string{
	"invalid_payload":                   "Slack could not read the message: check that icon_url is an image URL and that the templates give plain text",
	"no_text":                           "the message is empty: check track_template and identify_template",
	"user_not_found":                    "the user named in the channel setting (@name) does not exist in the workspace",
	"channel_not_found":                 "the webhook's channel, or the channel setting, does not exist: create a webhook for an existing channel, or fix channel",
	"channel_is_archived":               "the webhook's channel is archived: unarchive it, or create a webhook for another channel and set webhook_url",
	"action_prohibited":                 "the workspace restricts what this webhook may post: ask a workspace admin",
	"posting_to_general_channel_denied": "only admins may post to this channel: create a webhook for another channel",
	"invalid_token":                     "the webhook URL is no longer valid (revoked, or the app was uninstalled): create a new one in your Slack app > Incoming Webhooks and set webhook_url",
	"no_service":                        "the webhook is disabled, removed or invalid: create a new one in your Slack app > Incoming Webhooks and set webhook_url",
	"no_service_id":                     "the webhook URL is incomplete: copy it again from your Slack app > Incoming Webhooks into webhook_url",
	"no_team":                           "the webhook's workspace no longer exists or is disabled: create a webhook in an active workspace and set webhook_url",
	"team_disabled":                     "the webhook's workspace is disabled: create a webhook in an active workspace and set webhook_url",
}

// Classify reads the webhook's answer (see the package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	r := destinations.ClassifyStatus(resp, resp.ReceivedAt)
	if r.Outcome == destinations.Rejected {
		code := errorCode(resp.Body)
		if hint, ok := hints[code]; ok {
			r.Reason = fmt.Sprintf("Slack refused the message (HTTP %d %s): %s", resp.StatusCode, code, hint)
		}
	}
	return destinations.Fill(len(req.Events), r)
}

// errorCode returns the error a failure's plain-text body names: its first
// word, such as "channel_not_found".
func errorCode(body []byte) string {
	f := strings.Fields(string(bytes.TrimSpace(body[:min(len(body), 256)])))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}
