// Package router decides where an event goes: from its source to the
// destinations connected to that source, narrowed by the event's
// `integrations` object and by the event types each integration takes.
//
// Everything that depends only on the configuration is computed once, in New,
// so that Route, which runs for every accepted event, does no map building and
// in the common case (no `integrations` object) no allocation at all.
package router

import (
	"slices"
	"strings"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/event"
)

// Decision lists, by configured destination name, what becomes of one event.
// Each connected destination appears in exactly one of the three lists, in
// the order the destinations appear in the configuration.
//
// The slices may be shared with other Decisions: callers must not modify them.
type Decision struct {
	// To are the destinations that get a job for the event.
	To []string
	// Filtered are the connected destinations that the event's
	// `integrations` object turned off.
	Filtered []string
	// Unsupported are the connected destinations whose integration does not
	// take the event's type. No job is made for them.
	Unsupported []string
}

// Router maps a source and an event to its destinations. It is immutable
// after New and safe for concurrent use.
type Router struct {
	sources map[string]*route
}

// route is the precomputed routing of one source.
type route struct {
	dests []dest
	// byType holds the Decision for each call type when the event carries no
	// `integrations` object, the common case, so Route returns it as is.
	byType map[string]Decision
}

// dest is one destination connected to a source.
type dest struct {
	name string
	typ  string
	// types are the call types the integration takes; nil means all.
	types []string
}

func (d *dest) takes(eventType string) bool {
	return d.types == nil || slices.Contains(d.types, eventType)
}

// callTypes are the call types whose default decisions New precomputes.
var callTypes = []string{event.Identify, event.Track, event.Page, event.Screen, event.Group, event.Alias}

// New builds a Router from the configured destinations' connections. A
// destination whose type is missing from reg is treated as taking every
// event type: configuration loading rejects unknown types, and routing jobs
// to it keeps the failure visible in delivery rather than silently dropping
// events here.
func New(cfg *config.Config, reg destinations.Registry) *Router {
	r := &Router{sources: make(map[string]*route)}
	for _, d := range cfg.Destinations {
		var types []string
		if in := reg[d.Type]; in != nil && len(in.EventTypes) > 0 {
			types = in.EventTypes
		}
		for _, s := range d.Sources {
			rt := r.sources[s]
			if rt == nil {
				rt = &route{}
				r.sources[s] = rt
			}
			// A destination listing the same source twice is still one
			// connection.
			if slices.ContainsFunc(rt.dests, func(x dest) bool { return x.name == d.Name }) {
				continue
			}
			rt.dests = append(rt.dests, dest{name: d.Name, typ: d.Type, types: types})
		}
	}
	for _, rt := range r.sources {
		rt.byType = make(map[string]Decision, len(callTypes))
		for _, t := range callTypes {
			rt.byType[t] = rt.decide(t, nil)
		}
	}
	return r
}

// Route returns what becomes of an event of eventType sent by source, given
// its `integrations` object (nil when it has none). An unknown source has no
// destinations.
//
// The integrations object narrows the connected destinations: "All" (default
// true) sets the default, and a key naming a destination's configured name or
// its type name, case-insensitively, overrides it for that destination. A
// configured name wins over a type name, so {"webhook": false, "audit": true}
// keeps the webhook destination named "audit". A value of true or an object
// (settings for the destination, as Segment allows) turns a destination on,
// false turns it off, and any other value is ignored.
//
// A destination the integrations object turned off is Filtered even if its
// integration would not take eventType either.
func (r *Router) Route(source, eventType string, integrations map[string]any) Decision {
	rt := r.sources[source]
	if rt == nil {
		return Decision{}
	}
	if len(integrations) == 0 {
		if d, ok := rt.byType[eventType]; ok {
			return d
		}
	}
	return rt.decide(eventType, integrations)
}

// Destination outcomes, as decide computes them before building the lists.
const (
	outTo = iota
	outFiltered
	outUnsupported
)

// decide computes a Decision from scratch. It makes one allocation, shared by
// the three lists, because it runs per event whenever an event carries an
// `integrations` object.
func (rt *route) decide(eventType string, integrations map[string]any) Decision {
	n := len(rt.dests)
	if n == 0 {
		return Decision{}
	}
	all := true
	if v, ok := lookupAll(integrations); ok {
		all = v
	}
	var stack [32]uint8
	outs := stack[:0]
	if n > len(stack) {
		outs = make([]uint8, 0, n)
	}
	var counts [3]int
	for i := range rt.dests {
		d := &rt.dests[i]
		out := outTo
		switch {
		case !enabled(d, integrations, all):
			out = outFiltered
		case !d.takes(eventType):
			out = outUnsupported
		}
		outs = append(outs, uint8(out))
		counts[out]++
	}
	buf := make([]string, n)
	// Carve the three lists out of buf; full slice expressions keep an
	// append by a careless caller from overwriting the neighbouring list.
	next := [3]int{0, counts[outTo], counts[outTo] + counts[outFiltered]}
	var dec Decision
	dec.To = buf[0:next[1]:next[1]]
	dec.Filtered = buf[next[1]:next[2]:next[2]]
	dec.Unsupported = buf[next[2]:n:n]
	for i, out := range outs {
		buf[next[out]] = rt.dests[i].name
		next[out]++
	}
	if len(dec.To) == 0 {
		dec.To = nil
	}
	if len(dec.Filtered) == 0 {
		dec.Filtered = nil
	}
	if len(dec.Unsupported) == 0 {
		dec.Unsupported = nil
	}
	return dec
}

// lookupAll reads the "All" key of an integrations object.
func lookupAll(integrations map[string]any) (value, ok bool) {
	for k, v := range integrations {
		if strings.EqualFold(k, "all") {
			if on, known := truth(v); known {
				return on, true
			}
		}
	}
	return false, false
}

// enabled reports whether the integrations object leaves d on. It walks the
// object rather than indexing it because names match case-insensitively and
// the object is small (a handful of keys), so this beats building a
// lower-cased copy per event.
func enabled(d *dest, integrations map[string]any, all bool) bool {
	byType, typeSet := false, false
	for k, v := range integrations {
		on, known := truth(v)
		if !known {
			continue
		}
		if strings.EqualFold(k, d.name) {
			return on
		}
		if strings.EqualFold(k, d.typ) {
			byType, typeSet = on, true
		}
	}
	if typeSet {
		return byType
	}
	return all
}

// truth interprets one value of an integrations object: a bool as itself, an
// object (per-destination settings) as true, anything else as unknown.
func truth(v any) (on, known bool) {
	switch v := v.(type) {
	case bool:
		return v, true
	case map[string]any:
		return true, true
	}
	return false, false
}
