// Package webhook delivers events to any HTTP endpoint as JSON, signed the
// Standard Webhooks way (https://www.standardwebhooks.com/).
//
// # Requests
//
// Each request is a POST of the event exactly as fanout stored it (the
// Segment spec JSON, byte for byte), with these headers:
//
//	Content-Type: application/json
//	User-Agent: fanout
//	webhook-id: <messageId>
//	webhook-timestamp: <unix seconds when the request was built>
//	webhook-signature: v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">
//	Fanout-Source: <name of the source that sent the event>
//
// webhook-signature is present only when the `secret` setting is. A secret
// of the form whsec_<base64> (as Standard Webhooks libraries generate) signs
// with the decoded bytes; any other string signs with its own bytes. The
// `headers` setting adds headers (an API key, say); it may replace
// Content-Type and User-Agent but none of the others.
//
// The webhook-id stays the same when a request is retried, so a receiver
// can deduplicate retries by it; whether it does is up to the receiver,
// so Integration.Deduplicates is false.
//
// # Batches
//
// With the `batch` setting above 1, a request carries up to that many events
// of one source, and at most 500 KB, as a JSON array of the stored events:
//
//	[{"type":"track",...},{"type":"identify",...}]
//
// Its webhook-id is "batch_" followed by 32 hex digits of the SHA-256 of the
// events' messageIds: the same events get the same id on a retry, and a
// batch made of other events gets another id.
//
// A receiver answers a batch with a status code that applies to all its
// events, or reports each event on its own with a JSON object holding one
// entry per event, in the order of the array it received:
//
//	{"results": [{"status": 200}, {"status": 400, "error": "email is invalid"}, {"status": 503}]}
//
// Each entry's status is read as if it were the status of a request
// carrying that event alone (2xx delivered; 408, 429 and 5xx but 501 and 505
// retried, with the response's Retry-After; others rejected with the
// entry's error as the reason), whatever the response's own status code.
// A "results" array whose length does not match the batch, or with an entry
// whose status is not an HTTP status, makes the whole batch retryable: its
// outcome is unknown. A 413 to a batch splits it (Result.Split): the
// engine sends it again in halves, and an event alone that is still too
// large is rejected. Only the first 64 KB of a response are read.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/destinations/plan"
	"github.com/fanout/fanout/internal/event"
)

// MaxBatchEvents is the largest value of the `batch` setting, the same
// bound as the tracking API's batch.
const MaxBatchEvents = 2500

// MaxBatchBytes bounds the body of a batch request.
const MaxBatchBytes = 500 << 10

// Integration is the webhook integration.
var Integration = &destinations.Integration{
	Type: "webhook",
	Settings: destinations.Schema{
		{
			Name:        "url",
			Type:        destinations.String,
			Required:    true,
			Description: "The http or https URL that receives the events by POST.",
		},
		{
			Name:        "secret",
			Type:        destinations.String,
			Secret:      true,
			Description: "Signs each request with the webhook-signature header (Standard Webhooks): whsec_<base64 key>, or any string used as the key. Empty: unsigned.",
		},
		{
			Name:        "headers",
			Type:        destinations.StringMap,
			Secret:      true, // they usually carry an API key or a bearer token
			Description: "Extra headers sent with each request, such as an API key. Treated as secret.",
		},
		{
			Name:        "batch",
			Type:        destinations.Int,
			Default:     0,
			Description: "Events per request. 0 or 1: one event per request, its JSON as the body. N > 1: a JSON array of up to N events (and 500 KB) per request.",
		},
	},
	New: New,
}

// New builds a webhook destination from validated settings.
func New(cfg destinations.Config) (destinations.Destination, error) {
	return newDestination(cfg.Settings, time.Now)
}

// destination is one configured webhook.
type destination struct {
	url   string
	batch int
	// static are the headers every request carries, canonical keys, each
	// value a slice of length and capacity 1: requests share them, and
	// net/http's Header.Set and Add replace rather than write into them.
	static []staticHeader
	// signers holds HMAC states keyed with the secret, nil when unsigned:
	// building one costs more than the signature itself.
	signers *sync.Pool
	now     func() time.Time
}

type staticHeader struct {
	key   string
	value []string
}

var (
	_ destinations.Destination = (*destination)(nil)
	_ destinations.Batcher     = (*destination)(nil)
)

// The headers fanout sets on every request, canonical form.
const (
	hdrID        = "Webhook-Id"
	hdrTimestamp = "Webhook-Timestamp"
	hdrSignature = "Webhook-Signature"
	hdrSource    = "Fanout-Source"
)

// reserved are headers the `headers` setting may not set: ours, and those
// net/http manages itself and would ignore or contradict.
var reserved = map[string]bool{
	hdrID: true, hdrTimestamp: true, hdrSignature: true, hdrSource: true,
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
}

func newDestination(settings destinations.Settings, now func() time.Time) (*destination, error) {
	d := &destination{now: now}

	d.url = settings.String("url")
	if err := destinations.CheckURL("url", d.url); err != nil {
		return nil, err
	}

	if secret := settings.String("secret"); secret != "" {
		key, err := parseSecret(secret)
		if err != nil {
			return nil, err
		}
		d.signers = &sync.Pool{New: func() any {
			return &signer{mac: hmac.New(sha256.New, key)}
		}}
	}

	headers := map[string]string{
		"Content-Type": "application/json",
		"User-Agent":   "fanout",
	}
	extra := settings.StringMap("headers")
	for k, v := range extra {
		if !validHeaderName(k) {
			return nil, fmt.Errorf("headers: %q is not a valid header name", k)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return nil, fmt.Errorf("headers: the value of %q holds a line break or NUL", k)
		}
		ck := http.CanonicalHeaderKey(k)
		if reserved[ck] {
			return nil, fmt.Errorf("headers: %s is set by fanout and cannot be configured", ck)
		}
		headers[ck] = v
	}
	for k, v := range headers {
		d.static = append(d.static, staticHeader{key: k, value: []string{v}})
	}
	sort.Slice(d.static, func(i, j int) bool { return d.static[i].key < d.static[j].key })

	d.batch = settings.Int("batch")
	if d.batch < 0 || d.batch > MaxBatchEvents {
		return nil, fmt.Errorf("batch: expected 0 to %d events per request, found %d", MaxBatchEvents, d.batch)
	}
	return d, nil
}

// parseSecret returns the HMAC key of a `secret` setting. The error never
// quotes the secret.
func parseSecret(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return []byte(s), nil
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(rest)
	}
	if err != nil || len(key) == 0 {
		return nil, errors.New("secret: starts with whsec_ but what follows is not a base64 key")
	}
	return key, nil
}

// validHeaderName reports whether s is an RFC 7230 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// BatchLimits returns the limits of the `batch` setting.
func (d *destination) BatchLimits() destinations.BatchLimits {
	if d.batch <= 1 {
		return destinations.BatchLimits{}
	}
	return destinations.BatchLimits{MaxEvents: d.batch, MaxBytes: MaxBatchBytes}
}

// Transform builds one request per event, or in batch mode one request per
// run of up to `batch` events and MaxBatchBytes. It splits what it is given
// by those limits itself, so a caller handing it more still gets valid
// requests.
func (d *destination) Transform(_ context.Context, events []event.Event) (destinations.Plan, error) {
	var b plan.Builder
	ts := strconv.FormatInt(d.now().Unix(), 10)

	if d.batch <= 1 {
		// One allocation each for all the requests and their Events
		// slices, rather than one per event.
		reqs := make([]destinations.Request, len(events))
		idx := make([]int, len(events))
		b.Plan.Requests = make([]*destinations.Request, 0, len(events))
		for i := range events {
			e := &events[i]
			if len(e.Payload) == 0 {
				b.Reject(i, "the event has no payload")
				continue
			}
			idx[i] = i
			r := &reqs[i]
			d.fill(r, e.MessageID, ts, e.Source, e.Payload)
			r.Events = idx[i : i+1 : i+1]
			b.Add(r)
		}
		return b.Plan, nil
	}

	// Batch mode: cut the events into runs that respect both limits, a
	// comma or bracket per payload and the closing bracket. An event
	// bigger than MaxBatchBytes on its own still goes, alone.
	items := make([]plan.Item, 0, len(events))
	for i := range events {
		if len(events[i].Payload) == 0 {
			b.Reject(i, "the event has no payload")
			continue
		}
		items = append(items, plan.Item{Event: i, Body: events[i].Payload})
	}
	for _, run := range plan.Batches(items, d.batch, MaxBatchBytes, 1, 1) {
		body, idx := plan.JSONArray(run)
		b.Add(d.batchRequest(events, idx, body, ts))
	}
	return b.Plan, nil
}

// batchRequest builds the request carrying body, the JSON array of
// events[run...].
func (d *destination) batchRequest(events []event.Event, run []int, body []byte, ts string) *destinations.Request {
	sum := sha256.New()
	for _, i := range run {
		sum.Write([]byte(events[i].MessageID))
		sum.Write([]byte{0}) // a messageId has no NUL: ids cannot run into each other
	}
	var digest [sha256.Size]byte
	id := "batch_" + hex.EncodeToString(sum.Sum(digest[:0])[:16])

	r := &destinations.Request{Events: run}
	d.fill(r, id, ts, events[run[0]].Source, body)
	return r
}

// fill sets the method, URL, headers and body of r.
func (d *destination) fill(r *destinations.Request, id, ts, source string, body []byte) {
	r.Method = http.MethodPost
	r.URL = d.url
	r.Body = body
	h := make(http.Header, len(d.static)+4)
	for _, s := range d.static {
		h[s.key] = s.value
	}
	// One backing array for the per-request values; each slice is capped
	// at length 1 so that an append elsewhere cannot write into its
	// neighbour.
	n := 3
	if d.signers != nil {
		n = 4
	}
	vals := make([]string, n)
	vals[0], vals[1], vals[2] = id, ts, source
	h[hdrID] = vals[0:1:1]
	h[hdrTimestamp] = vals[1:2:2]
	h[hdrSource] = vals[2:3:3]
	if d.signers != nil {
		vals[3] = d.sign(id, ts, body)
		h[hdrSignature] = vals[3:4:4]
	}
	r.Header = h
}

// signer is a reusable HMAC state with scratch space, so that signing does
// not allocate beyond the signature string.
type signer struct {
	mac     hash.Hash
	scratch []byte
}

// sign returns the webhook-signature value: "v1," and the base64 HMAC-SHA256
// of "id.ts.body".
func (d *destination) sign(id, ts string, body []byte) string {
	s := d.signers.Get().(*signer)
	s.mac.Reset()
	b := append(s.scratch[:0], id...)
	b = append(b, '.')
	b = append(b, ts...)
	b = append(b, '.')
	s.mac.Write(b)
	s.mac.Write(body)
	b = s.mac.Sum(b[:0])
	// Built on the stack: the string conversion is the only allocation.
	const prefix = "v1,"
	var out [len(prefix) + (sha256.Size+2)/3*4]byte
	copy(out[:], prefix)
	base64.StdEncoding.Encode(out[len(prefix):], b)
	s.scratch = b
	d.signers.Put(s)
	return string(out[:])
}

// Classify applies destinations.ClassifyStatus, or in batch mode the
// per-event results of the response body when it holds them (see the
// package doc).
func (d *destination) Classify(req *destinations.Request, resp *destinations.Response) []destinations.Result {
	now := resp.ReceivedAt
	if now.IsZero() {
		now = d.now()
	}
	out := make([]destinations.Result, len(req.Events))
	if d.batch > 1 && batchResults(resp, now, out) {
		return out
	}
	r := destinations.ClassifyStatus(resp, now)
	if resp.StatusCode == http.StatusRequestEntityTooLarge && len(out) > 1 {
		r.Outcome, r.Split = destinations.Retryable, true
		r.Reason += ": the batch is too large for the receiver; it is sent again in halves"
	}
	return destinations.Fill(len(out), r)
}

// batchReport is the body a receiver answers a batch with to report each
// event on its own.
type batchReport struct {
	Results []struct {
		Status int    `json:"status"`
		Error  string `json:"error"`
	} `json:"results"`
}

// batchResults fills out from a per-event batch report in resp's body and
// reports whether the body was one.
func batchResults(resp *destinations.Response, now time.Time, out []destinations.Result) bool {
	body := bytes.TrimSpace(resp.Body)
	// Most receivers answer "OK" or {}: skip the JSON decoder for them.
	if len(body) == 0 || body[0] != '{' || !bytes.Contains(body, []byte(`"results"`)) {
		return false
	}
	var rep batchReport
	if err := json.Unmarshal(body, &rep); err != nil || rep.Results == nil {
		return false
	}
	bad := ""
	if len(rep.Results) != len(out) {
		bad = fmt.Sprintf("lists %d results for a batch of %d events", len(rep.Results), len(out))
	}
	for j := 0; bad == "" && j < len(rep.Results); j++ {
		if s := rep.Results[j].Status; s < 100 || s > 599 {
			bad = fmt.Sprintf("gives result %d the status %d", j, s)
		}
	}
	if bad != "" {
		r := destinations.Result{
			Outcome:    destinations.Retryable,
			Reason:     "the batch response " + bad + ", so the outcome of each event is unknown",
			StatusCode: resp.StatusCode,
		}
		for i := range out {
			out[i] = r
		}
		return true
	}
	var retryAfter time.Duration
	for j, e := range rep.Results {
		switch {
		case e.Status >= 200 && e.Status <= 299:
			out[j] = destinations.Result{Outcome: destinations.Delivered, StatusCode: e.Status}
		case destinations.RetryableStatus(e.Status):
			if retryAfter == 0 {
				retryAfter = destinations.ParseRetryAfter(resp.Header, now)
			}
			out[j] = destinations.Result{
				Outcome:    destinations.Retryable,
				Reason:     destinations.StatusReason(e.Status, []byte(e.Error)),
				StatusCode: e.Status,
				RetryAfter: retryAfter,
			}
		default:
			out[j] = destinations.Result{
				Outcome:    destinations.Rejected,
				Reason:     destinations.StatusReason(e.Status, []byte(e.Error)),
				StatusCode: e.Status,
			}
		}
	}
	return true
}
