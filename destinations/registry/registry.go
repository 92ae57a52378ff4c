// Package registry lists every integration fanout ships. It is the one
// place an integration is added: an explicit list rather than init-time
// registration, so that grepping for an integration's name finds where it
// is wired in, and the list cannot depend on which packages were imported.
package registry

import (
	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/amplitude"
	"github.com/fanout/fanout/destinations/braze"
	"github.com/fanout/fanout/destinations/customerio"
	"github.com/fanout/fanout/destinations/ga4"
	"github.com/fanout/fanout/destinations/hubspot"
	"github.com/fanout/fanout/destinations/intercom"
	"github.com/fanout/fanout/destinations/marketo"
	"github.com/fanout/fanout/destinations/mixpanel"
	"github.com/fanout/fanout/destinations/salesforce"
	"github.com/fanout/fanout/destinations/slack"
	"github.com/fanout/fanout/destinations/webhook"
)

// integrations is every integration, in no particular order.
var integrations = []*destinations.Integration{
	hubspot.Integration,
	braze.Integration,
	customerio.Integration,
	amplitude.Integration,
	ga4.Integration,
	intercom.Integration,
	webhook.Integration,
	mixpanel.Integration,
	marketo.Integration,
	slack.Integration,
	salesforce.Integration,
}

// All returns every integration keyed by its type name. Each call returns a
// new map, which the caller may change.
func All() destinations.Registry {
	r := make(destinations.Registry, len(integrations))
	for _, i := range integrations {
		r[i.Type] = i
	}
	return r
}
