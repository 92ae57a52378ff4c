package stats

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/redact"
)

// Issue is one delivery issue: failed attempts of one (source, destination)
// with the same status code and normalized reason, or delivered attempts
// with the same warning (a Delivered result with a Reason, such as
// properties the destination could not take).
type Issue struct {
	// ID numbers the group within its (source, destination).
	ID          uint32 `json:"id"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Outcome is "rejected" (not retried), "retryable", or "delivered"
	// for a warning on delivered events.
	Outcome string `json:"outcome"`
	// Status is the HTTP status answered; 0 when there was no response.
	Status int `json:"status"`
	// Reason is the normalized reason: ids and numbers replaced.
	Reason string `json:"reason"`
	// Count is the failed attempts over the group's life; in a query's
	// answer, those in the range.
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Samples are the first MaxSamples attempts of the group, secrets
	// redacted.
	Samples []Sample `json:"samples"`

	dirty bool
}

func (is *Issue) key() string {
	return is.Outcome + " " + strconv.Itoa(is.Status) + " " + is.Reason
}

// Sample is one failed attempt: what the client sent to fanout, the
// request fanout sent the destination, and its response. Bodies are cut at
// MaxSampleBody bytes. Secrets are redacted.
type Sample struct {
	At        time.Time `json:"at"`
	MessageID string    `json:"message_id"`
	Attempt   int       `json:"attempt"`
	// Reason is the attempt's own reason, before normalization.
	Reason string `json:"reason"`
	// Event is the event as fanout stored it from the client's call.
	Event    string          `json:"event"`
	Request  *SampleRequest  `json:"request,omitempty"`
	Response *SampleResponse `json:"response,omitempty"`
}

// SampleRequest is the request fanout sent.
type SampleRequest struct {
	Method string      `json:"method"`
	URL    string      `json:"url"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// SampleResponse is the destination's response.
type SampleResponse struct {
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// pairIssues are the issue groups of one (source, destination).
type pairIssues struct {
	byKey  map[string]*Issue
	byID   map[uint32]*Issue
	nextID uint32
}

func (s *Stats) pairIssues(p Pair) *pairIssues {
	pi := s.issues[p]
	if pi == nil {
		pi = &pairIssues{byKey: map[string]*Issue{}, byID: map[uint32]*Issue{}, nextID: 1}
		s.issues[p] = pi
	}
	return pi
}

func (pi *pairIssues) put(is *Issue) {
	pi.byKey[is.key()] = is
	pi.byID[is.ID] = is
	pi.nextID = max(pi.nextID, is.ID+1)
}

// issue counts a failed attempt, or a delivered one with a warning, in
// its group. s.mu is held.
func (s *Stats) issue(p Pair, r delivery.Report) {
	red := s.opts.Redactors[p.Destination]
	if red == nil {
		red = s.opts.Fallback
	}
	outcome := "retryable"
	switch r.Result.Outcome {
	case destinations.Rejected:
		outcome = "rejected"
	case destinations.Delivered:
		outcome = "delivered"
	}
	// The reason may quote the response body, which may echo a secret:
	// redact first, or normalizing would hide the secret from the redactor.
	reason := Normalize(red.String(r.Result.Reason))
	pi := s.pairIssues(p)
	probe := Issue{Outcome: outcome, Status: r.Result.StatusCode, Reason: reason}
	is := pi.byKey[probe.key()]
	if is == nil {
		if len(pi.byKey) >= MaxIssues-1 {
			probe = Issue{Outcome: "mixed", Reason: overflowReason}
			is = pi.byKey[probe.key()]
		}
		if is == nil {
			is = &probe
			is.ID, is.Source, is.Destination = pi.nextID, p.Source, p.Destination
			is.FirstSeen = r.At
			is.Samples = []Sample{}
			pi.put(is)
		}
	}
	is.Count++
	is.LastSeen = r.At
	is.dirty = true
	if len(is.Samples) < MaxSamples {
		is.Samples = append(is.Samples, sampleOf(r, red))
	}
	if b := s.bucket(p, minuteOf(r.At)); b != nil {
		if b.issues == nil {
			b.issues = map[uint32]int64{}
		}
		b.issues[is.ID]++
		b.dirty = true
	}
}

func sampleOf(r delivery.Report, red *redact.Redactor) Sample {
	sm := Sample{
		At: r.At, MessageID: r.Job.Event.MessageID, Attempt: r.Job.Attempts,
		Reason: red.String(r.Result.Reason),
		Event:  red.String(cut(r.Job.Event.Payload)),
	}
	if q := r.Result.Request; q != nil {
		method := q.Method
		if method == "" {
			method = http.MethodPost
		}
		sm.Request = &SampleRequest{Method: method, URL: red.URL(q.URL), Header: red.Header(q.Header), Body: red.String(cut(q.Body))}
	}
	if a := r.Result.Response; a != nil {
		sm.Response = &SampleResponse{Status: a.StatusCode, Header: red.Header(a.Header), Body: red.String(cut(a.Body))}
	}
	return sm
}

// cut returns at most MaxSampleBody bytes of b as a string, cut on a rune
// boundary and marked when cut.
func cut(b []byte) string {
	if len(b) <= MaxSampleBody {
		return string(b)
	}
	n := MaxSampleBody
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return string(b[:n]) + "...[cut]"
}

// Issues returns the issue groups with failures in f's range, the most
// frequent first, each with its count in the range.
//
// With a shared backend, other nodes' minutes count failures in their
// own issue groups, whose ids are theirs: those groups are read from the
// backend, and groups of one pair with the same key (outcome, status and
// reason) are merged into one, which keeps this node's id when it has
// the group, the earliest MaxSamples samples, and the sum of the counts.
func (s *Stats) Issues(f Filter) ([]Issue, error) {
	type nodeRef struct {
		node string // "" for this node
		ref  issueRef
	}
	counts := map[nodeRef]int64{}
	err := s.scanNodes(f, func(node string, p Pair, _ int64, b *bucket) {
		for id, n := range b.issues {
			counts[nodeRef{node, issueRef{p, id}}] += n
		}
	})
	if err != nil {
		return nil, err
	}
	others := map[string][]issueRef{}
	for k := range counts {
		if k.node != "" {
			others[k.node] = append(others[k.node], k.ref)
		}
	}
	groups := map[nodeRef]*Issue{}
	for node, refs := range others {
		vs, err := s.backend.issueGroups(node, refs)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			is := &Issue{}
			if err := json.Unmarshal(v, is); err != nil {
				s.log.Warn("skipping an unreadable issue group", "node", node, "err", err)
				continue
			}
			groups[nodeRef{node, issueRef{Pair{is.Source, is.Destination}, is.ID}}] = is
		}
	}
	type groupKey struct {
		p   Pair
		key string
	}
	merged := map[groupKey]*Issue{}
	s.mu.Lock()
	for k, n := range counts {
		var is *Issue
		if k.node == "" {
			if pi := s.issues[k.ref.pair]; pi != nil {
				is = pi.byID[k.ref.id]
			}
		} else {
			is = groups[k]
		}
		if is == nil {
			continue
		}
		gk := groupKey{k.ref.pair, is.key()}
		m := merged[gk]
		if m == nil {
			c := *is
			c.Count = n
			c.Samples = append([]Sample(nil), is.Samples...)
			merged[gk] = &c
			continue
		}
		m.Count += n
		if k.node == "" {
			m.ID = is.ID
		}
		if is.FirstSeen.Before(m.FirstSeen) {
			m.FirstSeen = is.FirstSeen
		}
		if is.LastSeen.After(m.LastSeen) {
			m.LastSeen = is.LastSeen
		}
		m.Samples = append(m.Samples, is.Samples...)
		sort.SliceStable(m.Samples, func(i, j int) bool { return m.Samples[i].At.Before(m.Samples[j].At) })
		m.Samples = m.Samples[:min(len(m.Samples), MaxSamples)]
	}
	s.mu.Unlock()
	out := make([]Issue, 0, len(merged))
	for _, m := range merged {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.LastSeen.After(b.LastSeen)
	})
	return out, nil
}

// wordRE matches the tokens Normalize looks at.
var (
	wordRE  = regexp.MustCompile(`[A-Za-z0-9_\-.]+`)
	digitRE = regexp.MustCompile(`[0-9]+`)
)

// Normalize turns a failure reason into the key of its issue group: ids and
// numbers are replaced, so that "user 123 not found" and "user 456 not
// found" are one issue. A token that is a number becomes <n>; a token of
// eight or more characters holding a digit (a UUID, a request id, a hex
// digest) becomes <id>; in a shorter one (3000ms, v2) the digits become
// <n>. The "HTTP <code> <text>" prefix that StatusReason writes is kept as
// it is; the status code is part of the key anyway.
func Normalize(reason string) string {
	prefix, rest := "", reason
	if strings.HasPrefix(reason, "HTTP ") {
		if i := strings.Index(reason, ": "); i > 0 {
			prefix, rest = reason[:i+2], reason[i+2:]
		} else {
			return reason
		}
	}
	rest = wordRE.ReplaceAllStringFunc(rest, func(w string) string {
		if !strings.ContainsAny(w, "0123456789") {
			return w
		}
		if strings.Trim(w, "0123456789.") == "" {
			return "<n>"
		}
		if len(w) >= 8 {
			return "<id>"
		}
		return digitRE.ReplaceAllString(w, "<n>")
	})
	return prefix + rest
}
