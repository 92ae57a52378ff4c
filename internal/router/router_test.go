package router_test

import (
	"reflect"
	"testing"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/router"
)

// setup returns a router over a small configuration: source "web" connected
// to a webhook ("hooks"), a Mixpanel ("mixpanel-prod", which takes only
// track, page and identify) and a Slack ("alerts", track only); source
// "server" connected to the webhook only; source "lonely" to nothing.
func setup(t testing.TB) *router.Router {
	t.Helper()
	reg := destinations.Registry{
		"webhook":  {Type: "webhook"},
		"mixpanel": {Type: "mixpanel", EventTypes: []string{event.Track, event.Page, event.Identify}},
		"slack":    {Type: "slack", EventTypes: []string{event.Track}},
	}
	cfg := &config.Config{
		Sources: []config.Source{{Name: "web"}, {Name: "server"}, {Name: "lonely"}},
		Destinations: []config.Destination{
			{Name: "hooks", Type: "webhook", Sources: []string{"web", "server", "web"}},
			{Name: "mixpanel-prod", Type: "mixpanel", Sources: []string{"web"}},
			{Name: "alerts", Type: "slack", Sources: []string{"web"}},
			{Name: "orphan", Type: "unknown-type", Sources: []string{"ghost"}},
		},
	}
	return router.New(cfg, reg)
}

func TestRoute(t *testing.T) {
	r := setup(t)
	settings := map[string]any{"apiKey": "x"}
	tests := []struct {
		name         string
		source       string
		eventType    string
		integrations map[string]any
		want         router.Decision
	}{
		{
			name: "all connected destinations by default", source: "web", eventType: event.Track,
			want: router.Decision{To: []string{"hooks", "mixpanel-prod", "alerts"}},
		},
		{
			name: "empty integrations object is the default", source: "web", eventType: event.Track,
			integrations: map[string]any{},
			want:         router.Decision{To: []string{"hooks", "mixpanel-prod", "alerts"}},
		},
		{
			name: "unsupported event types", source: "web", eventType: event.Group,
			want: router.Decision{To: []string{"hooks"}, Unsupported: []string{"mixpanel-prod", "alerts"}},
		},
		{
			name: "other source", source: "server", eventType: event.Track,
			want: router.Decision{To: []string{"hooks"}},
		},
		{
			name: "unknown source", source: "nope", eventType: event.Track,
			want: router.Decision{},
		},
		{
			name: "source without destinations", source: "lonely", eventType: event.Track,
			want: router.Decision{},
		},
		{
			name: "All false narrows to the named type", source: "web", eventType: event.Track,
			integrations: map[string]any{"All": false, "Mixpanel": true},
			want:         router.Decision{To: []string{"mixpanel-prod"}, Filtered: []string{"hooks", "alerts"}},
		},
		{
			name: "All false narrows to the named destination", source: "web", eventType: event.Track,
			integrations: map[string]any{"All": false, "HOOKS": true},
			want:         router.Decision{To: []string{"hooks"}, Filtered: []string{"mixpanel-prod", "alerts"}},
		},
		{
			name: "one turned off by type", source: "web", eventType: event.Track,
			integrations: map[string]any{"Slack": false},
			want:         router.Decision{To: []string{"hooks", "mixpanel-prod"}, Filtered: []string{"alerts"}},
		},
		{
			name: "one turned off by configured name", source: "web", eventType: event.Track,
			integrations: map[string]any{"Mixpanel-Prod": false},
			want:         router.Decision{To: []string{"hooks", "alerts"}, Filtered: []string{"mixpanel-prod"}},
		},
		{
			name: "settings object counts as true", source: "web", eventType: event.Track,
			integrations: map[string]any{"All": false, "Slack": settings},
			want:         router.Decision{To: []string{"alerts"}, Filtered: []string{"hooks", "mixpanel-prod"}},
		},
		{
			name: "configured name wins over type name", source: "web", eventType: event.Track,
			integrations: map[string]any{"mixpanel": false, "mixpanel-prod": true},
			want:         router.Decision{To: []string{"hooks", "mixpanel-prod", "alerts"}},
		},
		{
			name: "lower-case all", source: "web", eventType: event.Track,
			integrations: map[string]any{"all": false},
			want:         router.Decision{Filtered: []string{"hooks", "mixpanel-prod", "alerts"}},
		},
		{
			name: "values that are neither bool nor object are ignored", source: "web", eventType: event.Track,
			integrations: map[string]any{"All": "no", "Slack": nil, "hooks": 0.0},
			want:         router.Decision{To: []string{"hooks", "mixpanel-prod", "alerts"}},
		},
		{
			name: "filtered wins over unsupported", source: "web", eventType: event.Alias,
			integrations: map[string]any{"Slack": false},
			want:         router.Decision{To: []string{"hooks"}, Filtered: []string{"alerts"}, Unsupported: []string{"mixpanel-prod"}},
		},
		{
			name: "unknown event type with integrations", source: "web", eventType: "custom",
			integrations: map[string]any{"alerts": true},
			want:         router.Decision{To: []string{"hooks"}, Unsupported: []string{"mixpanel-prod", "alerts"}},
		},
		{
			name: "unknown event type without integrations", source: "web", eventType: "custom",
			want: router.Decision{To: []string{"hooks"}, Unsupported: []string{"mixpanel-prod", "alerts"}},
		},
		{
			name: "integration missing from the registry takes every type", source: "ghost", eventType: event.Alias,
			want: router.Decision{To: []string{"orphan"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := r.Route(tt.source, tt.eventType, tt.integrations)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Route(%q, %q, %v)\n got %#v\nwant %#v", tt.source, tt.eventType, tt.integrations, got, tt.want)
			}
		})
	}
}

// TestRouteListsDoNotAlias checks that appending to one list of a computed
// Decision cannot overwrite another list sharing its backing array.
func TestRouteListsDoNotAlias(t *testing.T) {
	r := setup(t)
	d := r.Route("web", event.Alias, map[string]any{"Slack": false})
	_ = append(d.To, "x")
	if d.Filtered[0] != "alerts" {
		t.Fatalf("append to To overwrote Filtered: %v", d.Filtered)
	}
}

func TestRouteAllocations(t *testing.T) {
	r := setup(t)
	if n := testing.AllocsPerRun(100, func() { r.Route("web", event.Track, nil) }); n != 0 {
		t.Errorf("Route without integrations: %v allocations, want 0", n)
	}
	in := map[string]any{"All": false, "Mixpanel": true}
	if n := testing.AllocsPerRun(100, func() { r.Route("web", event.Track, in) }); n > 1 {
		t.Errorf("Route with integrations: %v allocations, want at most 1", n)
	}
}

func BenchmarkRoute(b *testing.B) {
	r := setup(b)
	in := map[string]any{"All": false, "Mixpanel": true}
	b.Run("default", func(b *testing.B) {
		for b.Loop() {
			r.Route("web", event.Track, nil)
		}
	})
	b.Run("integrations", func(b *testing.B) {
		for b.Loop() {
			r.Route("web", event.Track, in)
		}
	})
}
