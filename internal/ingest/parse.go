package ingest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jsonscan"
	"github.com/fanout/fanout/internal/router"
)

// The tracking API's limits, as Segment documents them.
const (
	// MaxEventBytes bounds one event as the client sent it.
	MaxEventBytes = 32 << 10
	// MaxRequestBytes bounds a request body, after gzip decompression.
	MaxRequestBytes = 500 << 10
	// MaxBatchEvents bounds the events of one batch.
	MaxBatchEvents = 2500
	// maxStoredBytes bounds what one request's events take once the
	// batch-level context and integrations are copied into each of them,
	// so that a small request cannot make the server hold and write
	// many times its size. Ten times the request limit leaves room for
	// 2,500 events each given a 1.5 KB context.
	maxStoredBytes = 10 * MaxRequestBytes
)

// callTypes are the values `type` may take, in the order error messages list
// them.
var callTypes = []string{event.Identify, event.Track, event.Page, event.Screen, event.Group, event.Alias}

// timeLayout is how fanout writes receivedAt and corrected timestamps:
// RFC 3339, UTC, milliseconds, the shape Segment's libraries send.
const timeLayout = "2006-01-02T15:04:05.000Z"

// batchDefaults are the batch-level members that apply to every event of a
// batch. The zero value is a single call, which has none.
type batchDefaults struct {
	context      []jsonscan.Member // nil when the batch has no context object
	integrations []jsonscan.Member
	// contextRaw and integrationsRaw are the objects as sent, copied as is
	// into events that have none of their own.
	contextRaw      []byte
	integrationsRaw []byte
	sentAt          []byte
	sentAtTime      time.Time
}

// parser turns the events of one request into store entries. It holds the
// request's scratch memory and is reused through a pool.
type parser struct {
	source     string
	router     *router.Router
	receivedAt time.Time
	// receivedAtJSON is receivedAt formatted, quotes included.
	receivedAtJSON []byte

	// out is the arena every payload of the request is carved from: one
	// allocation per request instead of one per event.
	out []byte
	// rnd holds random bytes for the messageIds the server sets, read from
	// crypto/rand once per request.
	rnd []byte
	// want is how many events the request holds, to size rnd.
	want int

	top   []jsonscan.Member // the body's members
	spans []jsonscan.Span   // a batch's elements
	flat  []jsonscan.Member // the members of a batch's events, by span
	mem   []jsonscan.Member // the members of the event being built
	// lastIndex maps the names of a large event's members to their last
	// index; nil until an event needs it.
	lastIndex map[string]int
	nested    []jsonscan.Member // the members of its context or integrations

	// The last routing decision, reused while consecutive events of a
	// batch have the same type and integrations, as they usually do.
	lastType         string
	lastIntegrations []byte
	lastDecision     router.Decision
	lastValid        bool

	// routes are the routing decisions of the entries built so far, in
	// their order, for the Report.
	routes []router.Decision
}

func (p *parser) reset(source string, r *router.Router, now time.Time, want, bodyLen int, b *batchDefaults) {
	p.source = source
	p.router = r
	p.receivedAt = now.UTC().Truncate(time.Millisecond)
	p.receivedAtJSON = p.receivedAt.AppendFormat(append(p.receivedAtJSON[:0], '"'), timeLayout)
	p.receivedAtJSON = append(p.receivedAtJSON, '"')
	p.want = want
	p.rnd = p.rnd[:0]
	p.lastValid = false
	p.lastDecision = router.Decision{}
	p.lastIntegrations = nil
	p.routes = p.routes[:0]
	// The payloads leave with the entries, so the arena is new for every
	// request. Each event grows by its server-set fields (about 150 bytes)
	// and by the batch-level objects merged into it.
	per := 160
	if b != nil {
		per += len(b.contextRaw) + len(b.integrationsRaw) + len(b.sentAt)
	}
	p.out = make([]byte, 0, bodyLen+want*per)
}

// scan finds the top-level members of body, a JSON object: the event of a
// single call, or the batch's, with its events' found in the same pass.
func (p *parser) scan(body []byte, batch bool) {
	if batch {
		p.top, p.spans, p.flat = jsonscan.BatchMembers(body, p.top[:0], p.spans[:0], p.flat[:0])
		return
	}
	p.top, _ = jsonscan.Members(body, p.top[:0])
}

// clear drops references into the request so the pooled parser does not keep
// a body or an arena alive.
func (p *parser) clear() {
	p.out = nil
	p.router = nil
	p.lastDecision = router.Decision{}
	p.lastIntegrations = nil
	p.mem = nil
	p.lastIndex = nil
	clear(p.top[:cap(p.top)])
	clear(p.spans[:cap(p.spans)])
	clear(p.flat[:cap(p.flat)])
	clear(p.nested[:cap(p.nested)])
	clear(p.routes[:cap(p.routes)])
}

// fields are the members of one event that the server reads, by index into
// parser.mem; -1 when absent. Where a name repeats, the last one counts, as
// it does for encoding/json and so for every destination.
type fields struct {
	typ, userID, anonymousID, event, groupID, previousID int
	messageID, timestamp, sentAt, context, integrations  int
	originalTimestamp                                    int
}

func indexFields(mem []jsonscan.Member) fields {
	f := fields{-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1}
	for i := range mem {
		switch string(mem[i].Name) {
		case "type":
			f.typ = i
		case "userId":
			f.userID = i
		case "anonymousId":
			f.anonymousID = i
		case "event":
			f.event = i
		case "groupId":
			f.groupID = i
		case "previousId":
			f.previousID = i
		case "messageId":
			f.messageID = i
		case "timestamp":
			f.timestamp = i
		case "sentAt":
			f.sentAt = i
		case "context":
			f.context = i
		case "integrations":
			f.integrations = i
		case "originalTimestamp":
			f.originalTimestamp = i
		}
	}
	return f
}

// val returns the value of the member at index i of the event being built,
// nil when absent (i < 0).
func (p *parser) val(i int) []byte {
	if i < 0 {
		return nil
	}
	return p.mem[i].Value
}

// checked is what validate read from an event it accepted.
type checked struct {
	f   fields
	typ string
	// messageID is the client's; "" when the server sets one.
	messageID string
	// numericMessageID is true when the client sent messageId as a number:
	// the payload then carries it as a string.
	numericMessageID bool
	// timestamp and sentAt are the event's own, zero when absent.
	timestamp, sentAt time.Time
}

// event validates one event object, raw with its members mem, and builds its
// store entry and routing decision. typ is the call type from the path, or
// "" in a batch, where the event names its own. b is nil for a single call.
// On failure it returns the reason, which says what was expected and what
// was found.
func (p *parser) event(raw []byte, mem []jsonscan.Member, typ string, b *batchDefaults) (jobstore.Entry, router.Decision, string) {
	c, reason := p.validate(raw, mem, typ, b)
	if reason != "" {
		return jobstore.Entry{}, router.Decision{}, reason
	}
	timestamp, rewriteTS := p.correctTimestamp(&c, b)
	decision := p.route(c.typ, p.val(c.f.integrations), b)
	messageID := c.messageID
	if messageID == "" {
		messageID = p.newMessageID()
	}
	return jobstore.Entry{
		Event: event.Event{
			Source:     p.source,
			MessageID:  messageID,
			Type:       c.typ,
			ReceivedAt: p.receivedAt,
			Payload:    p.appendPayload(&c, messageID, timestamp, rewriteTS, b),
		},
		Destinations: decision.To,
	}, decision, ""
}

// validate checks one event against the tracking API's rules and returns
// what it read; it sets p.mem to mem. Every check of an event's members is
// here, so that a rule is added in one place.
func (p *parser) validate(raw []byte, mem []jsonscan.Member, typ string, b *batchDefaults) (checked, string) {
	if len(raw) > MaxEventBytes {
		return checked{}, fmt.Sprintf("event is %d bytes, the limit is %d", len(raw), MaxEventBytes)
	}
	// The limit holds for the event as stored, with the batch's context and
	// integrations merged in (counted in full, ignoring overlaps): else a
	// 500 KB batch whose context fills most of it would be stored as
	// gigabytes, one copy of the context per event.
	if b != nil {
		if n := len(raw) + len(b.contextRaw) + len(b.integrationsRaw); n > MaxEventBytes {
			return checked{}, fmt.Sprintf("event is %d bytes with the batch's context and integrations merged in, the limit is %d", n, MaxEventBytes)
		}
	}
	if reason := checkFields(mem); reason != "" {
		return checked{}, reason
	}
	p.mem = mem
	c := checked{f: indexFields(mem), typ: typ}
	f := &c.f

	if c.typ == "" {
		v := p.val(f.typ)
		s, isString := jsonscan.StringValue(v)
		if !isString || !slices.Contains(callTypes, s) {
			return checked{}, fmt.Sprintf("expected type to be one of %s, found %s", strings.Join(callTypes, ", "), describe(v))
		}
		c.typ = s
	}

	// Identity: a non-empty string or a number, as Segment accepts.
	userID, anonymousID := p.val(f.userID), p.val(f.anonymousID)
	if reason := checkID("userId", userID); reason != "" {
		return checked{}, reason
	}
	if reason := checkID("anonymousId", anonymousID); reason != "" {
		return checked{}, reason
	}
	if !hasID(userID) && !hasID(anonymousID) {
		return checked{}, fmt.Sprintf("expected userId or anonymousId, found userId %s and anonymousId %s", describe(userID), describe(anonymousID))
	}
	switch c.typ {
	case event.Track:
		v := p.val(f.event)
		if len(v) <= 2 || v[0] != '"' {
			return checked{}, "expected event (the name of the tracked action) to be a non-empty string, found " + describe(v)
		}
	case event.Group:
		if reason := requireID("groupId", p.val(f.groupID)); reason != "" {
			return checked{}, reason
		}
	case event.Alias:
		if reason := requireID("previousId", p.val(f.previousID)); reason != "" {
			return checked{}, reason
		}
	}

	// messageId: kept when the client sent one, which it needs for
	// deduplication of its own retries; set by the server otherwise.
	if v := p.val(f.messageID); !isNull(v) && string(v) != `""` {
		s, isString := jsonscan.StringValue(v)
		if !isString {
			// A number, as checkFields allows no other type: stored as a
			// string, the type of every destination's idempotency key.
			s, c.numericMessageID = string(v), true
		}
		c.messageID = s
	}

	if v := p.val(f.timestamp); !isNull(v) {
		t, reason := parseTime("timestamp", v)
		if reason != "" {
			return checked{}, reason
		}
		c.timestamp = t
	}
	if v := p.val(f.sentAt); !isNull(v) {
		t, reason := parseTime("sentAt", v)
		if reason != "" {
			return checked{}, reason
		}
		c.sentAt = t
	}

	// checkFields has seen that context and integrations are objects.
	return c, ""
}

// correctTimestamp returns the event's timestamp corrected for the client's
// clock: the client's idea of how long ago the event happened (sentAt -
// timestamp) is trusted, its idea of the current time is not. rewrite is
// true when the server writes timestamp; the client's value is then kept as
// originalTimestamp, as Segment does.
func (p *parser) correctTimestamp(c *checked, b *batchDefaults) (timestamp time.Time, rewrite bool) {
	sentAt := c.sentAt
	if isNull(p.val(c.f.sentAt)) && b != nil && b.sentAt != nil {
		sentAt = b.sentAtTime
	}
	switch {
	case c.timestamp.IsZero():
		return p.receivedAt, true
	case !sentAt.IsZero():
		return p.receivedAt.Add(c.timestamp.Sub(sentAt)), true
	}
	return c.timestamp, false
}

// appendPayload writes the event's payload to the request's arena and
// returns it: type first, then the client's members in their order, less
// the ones the server sets, then the server's.
func (p *parser) appendPayload(c *checked, messageID string, timestamp time.Time, rewriteTS bool, b *batchDefaults) []byte {
	setMessageID := c.messageID == "" || c.numericMessageID
	start := len(p.out)
	out := append(p.out, `{"type":"`...)
	out = append(out, c.typ...)
	out = append(out, '"')
	for i := range p.mem {
		m := &p.mem[i]
		if p.repeated(i) {
			continue
		}
		switch string(m.Name) {
		case "type", "receivedAt", "writeKey":
			continue
		case "messageId":
			if setMessageID {
				continue
			}
		case "timestamp":
			if rewriteTS {
				continue
			}
		case "context":
			if b != nil && b.context != nil {
				out = p.appendMerged(append(append(out, ','), m.RawName...), m.Value, b.context, b.contextRaw)
				continue
			}
		case "integrations":
			if b != nil && b.integrations != nil {
				out = p.appendMerged(append(append(out, ','), m.RawName...), m.Value, b.integrations, b.integrationsRaw)
				continue
			}
		}
		out = append(out, ',')
		out = append(out, m.RawName...)
		out = append(out, ':')
		out = append(out, m.Value...)
	}
	if setMessageID {
		out = append(out, `,"messageId":"`...)
		out = append(out, messageID...)
		out = append(out, '"')
	}
	out = append(out, `,"receivedAt":`...)
	out = append(out, p.receivedAtJSON...)
	if rewriteTS {
		out = append(out, `,"timestamp":"`...)
		out = timestamp.UTC().AppendFormat(out, timeLayout)
		out = append(out, '"')
		// The client's timestamp is kept unless it sent an
		// originalTimestamp of its own.
		if tsRaw := p.val(c.f.timestamp); !isNull(tsRaw) && c.f.originalTimestamp < 0 {
			out = append(out, `,"originalTimestamp":`...)
			out = append(out, tsRaw...)
		}
	}
	if b != nil {
		if c.f.context < 0 && b.context != nil {
			out = append(out, `,"context":`...)
			out = append(out, b.contextRaw...)
		}
		if c.f.integrations < 0 && b.integrations != nil {
			out = append(out, `,"integrations":`...)
			out = append(out, b.integrationsRaw...)
		}
		// Keep the sentAt the timestamp was corrected with.
		if c.f.sentAt < 0 && b.sentAt != nil {
			out = append(out, `,"sentAt":`...)
			out = append(out, b.sentAt...)
		}
	}
	out = append(out, '}')
	p.out = out
	// The full slice expression keeps an append to one payload from
	// overwriting the next one in the arena.
	return out[start:len(out):len(out)]
}

// repeated reports whether a later member of the event has the same name as
// member i. Only the last of repeated names is kept, the one encoding/json
// (and so validate and every destination) reads; a stored payload
// thus never has duplicate names.
func (p *parser) repeated(i int) bool {
	if len(p.mem) <= smallObject {
		// Events have few members: the quadratic scan costs less than a set.
		name := p.mem[i].Name
		for j := i + 1; j < len(p.mem); j++ {
			if bytes.Equal(p.mem[j].Name, name) {
				return true
			}
		}
		return false
	}
	if i == 0 || p.lastIndex == nil {
		p.lastIndex = lastIndexes(p.mem, p.lastIndex)
	}
	return p.lastIndex[string(p.mem[i].Name)] != i
}

// smallObject is the member count up to which names are compared pairwise
// rather than through a map; above it, an event of 32 KB of one-letter
// members would cost millions of comparisons.
const smallObject = 32

// lastIndexes maps each member name to the index of its last occurrence.
func lastIndexes(ms []jsonscan.Member, m map[string]int) map[string]int {
	if m == nil {
		m = make(map[string]int, len(ms))
	}
	clear(m)
	for i := range ms {
		m[string(ms[i].Name)] = i
	}
	return m
}

// appendMerged writes an event's object member (context or integrations)
// merged with the batch-level one: the event's own keys win, one level deep.
func (p *parser) appendMerged(out, own []byte, batch []jsonscan.Member, batchRaw []byte) []byte {
	out = append(out, ':')
	if isNull(own) {
		return append(out, batchRaw...)
	}
	p.nested, _ = jsonscan.Members(own, p.nested[:0])
	if len(p.nested) == 0 {
		return append(out, batchRaw...)
	}
	var index map[string]int
	if len(p.nested)*len(batch) > smallObject*smallObject {
		index = lastIndexes(p.nested, nil)
	}
	has := func(name []byte) bool {
		if index != nil {
			_, ok := index[string(name)]
			return ok
		}
		return slices.ContainsFunc(p.nested, func(m jsonscan.Member) bool { return bytes.Equal(m.Name, name) })
	}
	out = append(out, own[:len(own)-1]...) // all but the closing brace
	for i := range batch {
		if !has(batch[i].Name) {
			out = append(out, ',')
			out = append(out, batch[i].RawName...)
			out = append(out, ':')
			out = append(out, batch[i].Value...)
		}
	}
	return append(out, '}')
}

// route asks the router where the event goes. Building the integrations map
// costs allocations, so it is skipped for the common empty object and the
// decision is reused while a batch repeats the same type and integrations.
func (p *parser) route(typ string, own []byte, b *batchDefaults) router.Decision {
	if p.lastValid && typ == p.lastType && bytes.Equal(own, p.lastIntegrations) {
		return p.lastDecision
	}
	var in map[string]any
	add := func(ms []jsonscan.Member) {
		for _, m := range ms {
			var v any
			switch m.Value[0] {
			case 't':
				v = true
			case 'f':
				v = false
			case '{':
				// Per-destination settings turn the destination on.
				v = true
			default:
				continue
			}
			if in == nil {
				in = make(map[string]any, len(ms))
			}
			in[string(m.Name)] = v
		}
	}
	if b != nil {
		add(b.integrations)
	}
	if !isNull(own) {
		// The event's own keys are added last, so they win.
		p.nested, _ = jsonscan.Members(own, p.nested[:0])
		add(p.nested)
	}
	d := p.router.Route(p.source, typ, in)
	p.lastType, p.lastIntegrations, p.lastDecision, p.lastValid = typ, own, d, true
	return d
}

// newMessageID returns "fanout-" and 32 random hex digits.
func (p *parser) newMessageID() string {
	if len(p.rnd) < 16 {
		n := max(p.want, 1) * 16
		if cap(p.rnd) < n {
			p.rnd = make([]byte, n)
		}
		p.rnd = p.rnd[:n]
		rand.Read(p.rnd)
	}
	var id [7 + 32]byte
	copy(id[:], "fanout-")
	hex.Encode(id[7:], p.rnd[:16])
	p.rnd = p.rnd[16:]
	return string(id[:])
}

// hasID reports whether v is a usable identifier: a non-empty string or a
// number.
func hasID(v []byte) bool {
	if isNull(v) {
		return false
	}
	if v[0] == '"' {
		return len(v) > 2
	}
	return v[0] == '-' || (v[0] >= '0' && v[0] <= '9')
}

// checkID rejects an identifier member that is present with the wrong type.
func checkID(name string, v []byte) string {
	if isNull(v) || hasID(v) || string(v) == `""` {
		return ""
	}
	return fmt.Sprintf("expected %s to be a string or a number, found %s", name, describe(v))
}

// requireID rejects an identifier member that is missing, empty or of the
// wrong type.
func requireID(name string, v []byte) string {
	if hasID(v) {
		return ""
	}
	return fmt.Sprintf("expected %s to be a non-empty string or a number, found %s", name, describe(v))
}

// parseTime reads an RFC 3339 date-time member.
func parseTime(name string, v []byte) (time.Time, string) {
	s, ok := jsonscan.StringValue(v)
	if ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t, ""
		}
	}
	return time.Time{}, fmt.Sprintf("expected %s to be an ISO 8601 date-time such as 2024-05-01T12:00:00.000Z, found %s", name, describe(v))
}

// isNull reports whether a member value is absent or JSON null, which the
// tracking API treats alike.
func isNull(v []byte) bool { return v == nil || string(v) == "null" }

// describe names the kind of a JSON value for error messages ("found a
// number"), quoting short strings so that a user sees what was sent.
func describe(v []byte) string {
	if v == nil {
		return "nothing"
	}
	switch v[0] {
	case '"':
		if len(v) == 2 {
			return "an empty string"
		}
		if len(v) <= 42 && utf8.Valid(v) {
			return "the string " + string(v)
		}
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}
