// Package stats keeps fanout's delivery statistics: per (source,
// destination) and per minute, what became of the events (received,
// filtered, unsupported, delivered on the first attempt or after retries,
// pending retry, failed, archived), their end-to-end latency, and the
// delivery issues, failures grouped by reason with samples of the exchange.
// Per source it counts what the tracking API accepted, deduplicated and
// rejected. It answers the question users ask first: did my event reach
// the tool, and if not, why?
//
// # Time
//
// An event's fate is counted in the minute it was received, not the minute
// the fate was decided: the overview of a range then reads as a funnel,
// received = filtered + unsupported + delivered + failed + archived +
// pending retry + not yet attempted. Issue counts are the exception: they
// count attempts in the minute they failed, which is what a user looking
// for when something broke wants.
//
// # Storage and what a crash loses
//
// Minutes are kept 14 days in a small Pebble database under the data
// directory, one key per (minute, source, destination). The last few hours
// are also held in memory, where the hooks update them; older minutes are
// read from disk when a retry of an old event or a query needs them. Every
// FlushInterval (2 s) the changed minutes, issue groups and gauges are
// written in one synced batch, and once more on shutdown: a crash loses at
// most the counts of the last two seconds, never more, and a restart
// continues from what was written.
package stats

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/router"
)

// Defaults, each documented on its Options field.
const (
	DefaultRetention     = 14 * 24 * time.Hour
	DefaultHot           = 6 * time.Hour
	DefaultFlushInterval = 2 * time.Second
)

// Bounds on what one (source, destination) can hold, so that a destination
// answering every request with a new message cannot grow memory.
const (
	// MaxIssues is how many issue groups a (source, destination) keeps;
	// failures of further kinds are counted in one overflow group.
	MaxIssues = 50
	// MaxSamples is how many samples an issue group keeps: the first ones.
	MaxSamples = 10
	// MaxSampleBody bounds each body a sample keeps (event, request,
	// response), in bytes.
	MaxSampleBody = 16 << 10
	// maxReasons bounds the distinct ingest rejection reasons of a source
	// in one minute.
	maxReasons = 20
)

// overflowReason is the reason of the group that counts failures beyond
// MaxIssues kinds.
const overflowReason = "other reasons (too many kinds of failure to group)"

// Options configures Stats.
type Options struct {
	// Dir is the directory of the stats database. Required.
	Dir string
	// Router recomputes, for accepted events, which connected destinations
	// were filtered or do not take the event. Required.
	Router *router.Router
	// Redactors holds, by destination name, the redactor applied to that
	// destination's samples and reasons. A destination without one gets
	// Fallback.
	Redactors map[string]*Redactor
	// Fallback redacts samples of destinations missing from Redactors.
	// Default: by header name only.
	Fallback *Redactor
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Retention is how long minutes and issues are kept. Default 14 days.
	Retention time.Duration
	// Hot is how much of the recent past is held in memory. Default 6 h.
	Hot time.Duration
	// FlushInterval is how often changes are written. Default 2 s; it is
	// what a crash can lose.
	FlushInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Pair names the stats of one source for one destination. Per-source
// ingest counts use an empty Destination.
type Pair struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

// Counts are what became of the events received in a range, for one
// destination.
type Counts struct {
	// Received counts events routed to the destination by its connection
	// to the source, whatever became of them after.
	Received int64 `json:"received"`
	// Filtered: turned off by the event's integrations object.
	Filtered int64 `json:"filtered"`
	// Unsupported: the integration does not take the event.
	Unsupported int64 `json:"unsupported"`
	// DeliveredFirst: delivered on the first attempt.
	DeliveredFirst int64 `json:"delivered_first_attempt"`
	// DeliveredRetry: delivered after one or more failed attempts.
	DeliveredRetry int64 `json:"delivered_after_retries"`
	// PendingRetry: failed at least once and not ended yet.
	PendingRetry int64 `json:"pending_retry"`
	// Failed: rejected by the destination; never retried.
	Failed int64 `json:"failed"`
	// Archived: retried until the retry window ended, then archived.
	Archived int64 `json:"archived"`
}

func (c *Counts) add(o *Counts) {
	c.Received += o.Received
	c.Filtered += o.Filtered
	c.Unsupported += o.Unsupported
	c.DeliveredFirst += o.DeliveredFirst
	c.DeliveredRetry += o.DeliveredRetry
	c.PendingRetry += o.PendingRetry
	c.Failed += o.Failed
	c.Archived += o.Archived
}

// Ingest are a source's tracking API counts.
type Ingest struct {
	// Accepted counts events stored, duplicates excluded.
	Accepted int64 `json:"accepted"`
	// Deduplicated counts events whose messageId was seen within the
	// dedupe window.
	Deduplicated int64 `json:"deduplicated"`
	// Rejected counts refused events, or requests refused whole, by
	// normalized reason.
	Rejected map[string]int64 `json:"rejected"`
}

func (g *Ingest) reject(reason string, n int64) {
	if g.Rejected == nil {
		g.Rejected = map[string]int64{}
	}
	if _, ok := g.Rejected[reason]; !ok && len(g.Rejected) >= maxReasons {
		reason = "other reasons"
	}
	g.Rejected[reason] += n
}

func (g *Ingest) add(o *Ingest) {
	g.Accepted += o.Accepted
	g.Deduplicated += o.Deduplicated
	for r, n := range o.Rejected {
		g.reject(r, n)
	}
}

// bucket is one minute of one Pair.
type bucket struct {
	c       Counts
	latency Histogram
	issues  map[uint32]int64 // issue id -> failed attempts in the minute
	ingest  Ingest           // only for per-source pairs
	dirty   bool
}

type bkey struct {
	pair   Pair
	minute int64 // minutes since the Unix epoch
}

// Stats collects and answers delivery statistics. Its hooks, Observe and
// ObserveIngest, are safe for concurrent use and cheap: a mutex and a few
// increments, plus a copy of the exchange for the first samples of an
// issue.
type Stats struct {
	opts Options
	log  *slog.Logger
	db   *pebbledb.DB

	mu sync.Mutex
	// hot holds every minute at or after completeFrom, and the older
	// minutes loaded because a retry of an old event touched them.
	hot          map[bkey]*bucket
	completeFrom int64
	issues       map[Pair]*pairIssues
	// gauges are the running counts of each pair, by destination then
	// source, so that a destination's queues are read without walking
	// every pair; dirty lists those changed since the last Flush.
	gauges map[string]map[string]*gauge
	dirty  []Pair
}

// gauge is one pair's running counts, kept apart from the minutes so that
// metrics and the queue state need not read 14 days.
type gauge struct {
	// pending counts the jobs that failed at least once and have not
	// ended: the sum of PendingRetry over all minutes.
	pending int64
	// open counts the jobs made minus the jobs ended: the queue's depth,
	// the backlog on disk included. Both sides are counted in whatever
	// order they are observed (a delivery can end before the tracking
	// API's fsync returns and reports its event), so it may dip below
	// zero for a moment and is reported as at least zero. A crash can
	// lose the last writes of either side or deliver a job twice; KeepDepth
	// sets the count of every queue the store holds nothing for back to
	// zero at start-up.
	open  int64
	dirty bool
}

// gauge returns p's gauge, marked dirty. Call it with mu held.
func (s *Stats) gauge(p Pair) *gauge {
	bySrc := s.gauges[p.Destination]
	if bySrc == nil {
		bySrc = map[string]*gauge{}
		s.gauges[p.Destination] = bySrc
	}
	g := bySrc[p.Source]
	if g == nil {
		g = &gauge{}
		bySrc[p.Source] = g
	}
	if !g.dirty {
		g.dirty = true
		s.dirty = append(s.dirty, p)
	}
	return g
}

// Open opens or creates the stats database in opts.Dir and loads the hot
// minutes and the issue groups.
func Open(opts Options) (*Stats, error) {
	if opts.Dir == "" {
		return nil, errors.New("stats: Dir is required")
	}
	if opts.Router == nil {
		return nil, errors.New("stats: Router is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Hot <= 0 {
		opts.Hot = DefaultHot
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Fallback == nil {
		opts.Fallback = &Redactor{}
	}
	log := opts.Logger.With("component", "stats")
	db, err := openDB(opts.Dir, &pebbledb.Options{
		// Pebble's routine lines about this secondary database go to debug.
		Logger: pebble.Logger{Log: log, InfoLevel: slog.LevelDebug},
		// Small: the hot minutes live in memory.
		MemTableSize: 4 << 20,
		Cache:        nil,
	}, log, opts.Now())
	if err != nil {
		return nil, fmt.Errorf("stats: open %s: %w", opts.Dir, err)
	}
	s := &Stats{
		opts: opts, log: log, db: db,
		hot:          map[bkey]*bucket{},
		issues:       map[Pair]*pairIssues{},
		gauges:       map[string]map[string]*gauge{},
		completeFrom: minuteOf(opts.Now().Add(-opts.Hot)),
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("stats: load %s: %w", opts.Dir, err)
	}
	return s, nil
}

func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// Observe records one delivery attempt. It is the delivery engine's
// Options.Observe hook.
func (s *Stats) Observe(r delivery.Report) {
	p := Pair{r.Queue.Source, r.Queue.Destination}
	j := r.Job
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bucket(p, minuteOf(j.Event.ReceivedAt))
	if b != nil {
		b.dirty = true
	}
	var c Counts
	ended := true
	// prior counts the failed attempts before this report: a job with
	// any is in the retry set. Attempts counts this report's attempt
	// too, unless the job expired without one.
	prior := j.Attempts
	if !r.Expired {
		prior--
	}
	switch r.End {
	case delivery.EndDelivered:
		if j.Attempts <= 1 {
			c.DeliveredFirst = 1
		} else {
			c.DeliveredRetry = 1
		}
		if b != nil {
			b.latency.Record(r.At.Sub(j.Event.ReceivedAt))
		}
	case delivery.EndFailed:
		c.Failed = 1
	case delivery.EndUnsupported:
		c.Unsupported = 1
	case delivery.EndArchived:
		c.Archived = 1
	case delivery.EndRetrying:
		ended = false
		if prior == 0 {
			c.PendingRetry = 1
		}
	}
	if ended && prior > 0 {
		c.PendingRetry = -1
	}
	if ended || c.PendingRetry != 0 {
		g := s.gauge(p)
		if ended {
			g.open--
		}
		g.pending += c.PendingRetry
	}
	if b != nil {
		b.c.add(&c)
	}
	if o := r.Result.Outcome; o == destinations.Rejected || o == destinations.Retryable {
		s.issue(p, r)
	}
}

// ObserveIngest records one tracking API request. It is the tracking API's
// Options.Observe hook.
func (s *Stats) ObserveIngest(r ingest.Report) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.bucket(Pair{Source: r.Source}, minuteOf(now))
	if src != nil {
		src.dirty = true
		src.ingest.Accepted += int64(len(r.Accepted))
		src.ingest.Deduplicated += int64(r.Duplicates)
		for _, rj := range r.Rejected {
			src.ingest.reject(Normalize(rj.Reason), 1)
		}
		if r.Failure != "" && len(r.Rejected) == 0 {
			src.ingest.reject(Normalize(r.Failure), 1)
		}
	}
	// Every event of a request has the same receivedAt, so the minute's
	// bucket of each destination is looked up once per request.
	var last struct {
		dest string
		b    *bucket
	}
	get := func(dest string, minute int64) *bucket {
		if last.b != nil && last.dest == dest {
			return last.b
		}
		b := s.bucket(Pair{r.Source, dest}, minute)
		if b != nil {
			b.dirty = true
		}
		last.dest, last.b = dest, b
		return b
	}
	for i := range r.Accepted {
		e := &r.Accepted[i]
		minute := minuteOf(e.Event.ReceivedAt)
		if i > 0 && minute != minuteOf(r.Accepted[i-1].Event.ReceivedAt) {
			last.b = nil
		}
		d := Decide(s.opts.Router, e.Event.Source, e.Event.Type, e.Destinations, e.Event.Payload)
		for _, n := range d.To {
			if b := get(n, minute); b != nil {
				b.c.Received++
			}
		}
		for _, n := range e.Destinations {
			s.gauge(Pair{r.Source, n}).open++
		}
		for _, n := range d.Filtered {
			if b := get(n, minute); b != nil {
				b.c.Received++
				b.c.Filtered++
			}
		}
		for _, n := range d.Unsupported {
			if b := get(n, minute); b != nil {
				b.c.Received++
				b.c.Unsupported++
			}
		}
	}
}

// Decide returns the routing decision the tracking API made for an
// accepted event of source, given the destinations it got jobs for (to)
// and its payload. In the common case, where every connected destination
// that takes the event type got a job, it costs two map lookups; otherwise
// it asks the router again with the payload's integrations object.
func Decide(r *router.Router, source, typ string, to []string, payload []byte) router.Decision {
	d := r.Route(source, typ, nil)
	if len(d.To) == len(to) && len(d.Filtered) == 0 && len(d.Unsupported) == 0 {
		return d
	}
	if len(d.To) == len(to) && !bytes.Contains(payload, []byte(`"integrations"`)) {
		return d
	}
	var v struct {
		Integrations map[string]any `json:"integrations"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return router.Decision{To: to}
	}
	return r.Route(source, typ, v.Integrations)
}

// bucket returns the bucket of p for minute, loading it from disk when it
// is older than the hot minutes, and nil when it is beyond retention.
// s.mu is held.
func (s *Stats) bucket(p Pair, minute int64) *bucket {
	k := bkey{p, minute}
	if b, ok := s.hot[k]; ok {
		return b
	}
	if minute < minuteOf(s.opts.Now().Add(-s.opts.Retention)) {
		return nil
	}
	b := &bucket{}
	if minute < s.completeFrom {
		// A retry of an event received hours ago: read its minute back.
		// This is a point read under the lock, rare by construction.
		v, closer, err := s.db.Get(bucketKey(p, minute))
		if err == nil {
			err = b.decode(v)
			closer.Close()
			if err != nil {
				s.log.Error("stats minute is unreadable; counting from zero", "source", p.Source,
					"destination", p.Destination, "minute", time.Unix(minute*60, 0).UTC(), "err", err)
				b = &bucket{}
			}
		} else if !errors.Is(err, pebbledb.ErrNotFound) {
			s.log.Error("read stats minute", "err", err)
		}
	}
	s.hot[k] = b
	return b
}

// Run writes changes every FlushInterval and prunes what is older than
// Retention, until ctx ends; then it writes once more and returns.
func (s *Stats) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.FlushInterval)
	defer t.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-ctx.Done():
			if err := s.Flush(); err != nil {
				s.log.Error("write stats at shutdown", "err", err)
			}
			return
		case <-t.C:
		}
		if err := s.Flush(); err != nil {
			s.log.Error("write stats", "err", err)
		}
		if now := s.opts.Now(); now.Sub(lastPrune) >= time.Hour {
			lastPrune = now
			if err := s.Prune(); err != nil {
				s.log.Error("prune stats", "err", err)
			}
		}
	}
}

// Flush writes every change since the last Flush in one synced batch, then
// forgets the clean minutes older than Hot.
func (s *Stats) Flush() error {
	batch := s.db.NewBatch()
	defer batch.Close()
	var written []*bucket
	s.mu.Lock()
	for k, b := range s.hot {
		if b.dirty {
			batch.Set(bucketKey(k.pair, k.minute), b.appendBinary(nil), nil)
			b.dirty = false
			written = append(written, b)
		}
	}
	for p, pi := range s.issues {
		for _, is := range pi.byID {
			if is.dirty {
				v, err := json.Marshal(is)
				if err == nil {
					batch.Set(issueKey(p, is.ID), v, nil)
				}
				is.dirty = false
			}
		}
	}
	for _, p := range s.dirty {
		g := s.gauges[p.Destination][p.Source]
		batch.Set(gaugeKey(p), binary.AppendVarint(binary.AppendVarint(nil, g.pending), g.open), nil)
		g.dirty = false
	}
	s.dirty = s.dirty[:0]
	s.mu.Unlock()
	if batch.Empty() {
		return nil
	}
	if err := batch.Commit(pebbledb.Sync); err != nil {
		// Mark them again so the next Flush retries.
		s.mu.Lock()
		for _, b := range written {
			b.dirty = true
		}
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	cut := minuteOf(s.opts.Now().Add(-s.opts.Hot))
	for k, b := range s.hot {
		if k.minute < cut && !b.dirty {
			delete(s.hot, k)
		}
	}
	s.completeFrom = max(s.completeFrom, cut)
	s.mu.Unlock()
	return nil
}

// Prune deletes the minutes and issue groups older than Retention.
func (s *Stats) Prune() error {
	cut := s.opts.Now().Add(-s.opts.Retention)
	cutMin := minuteOf(cut)
	var drop [][]byte
	s.mu.Lock()
	for k := range s.hot {
		if k.minute < cutMin {
			delete(s.hot, k)
		}
	}
	for p, pi := range s.issues {
		for id, is := range pi.byID {
			if is.LastSeen.Before(cut) {
				delete(pi.byID, id)
				delete(pi.byKey, is.key())
				drop = append(drop, issueKey(p, id))
			}
		}
	}
	s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange([]byte{'m'}, bucketKey(Pair{}, cutMin), nil); err != nil {
		return err
	}
	for _, k := range drop {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebbledb.NoSync)
}

// Close closes the database. Call it after Run returned.
func (s *Stats) Close() error {
	return s.db.Close()
}

// PendingRetry returns, per source, the jobs for destination that failed
// at least once and have not ended: those waiting in the retry set.
func (s *Stats) PendingRetry(destination string) map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for src, g := range s.gauges[destination] {
		if g.pending != 0 {
			out[src] = g.pending
		}
	}
	return out
}

// Depth returns, per source, the jobs for destination that were made and
// have not ended: each queue's depth, the backlog waiting on disk included.
func (s *Stats) Depth(destination string) map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for src, g := range s.gauges[destination] {
		if g.open > 0 {
			out[src] = g.open
		}
	}
	return out
}

// Replayed counts jobs made by a replay of archived events, which do not
// pass through the tracking API.
func (s *Stats) Replayed(source, destination string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gauge(Pair{source, destination}).open += int64(n)
}

// KeepDepth sets the depth of every queue not in holding to zero: holding
// lists the queues the job store holds jobs for (jobstore.Store.Queues), so
// the others hold none, whatever a crash made the counts say. Call it at
// start-up, before delivery begins.
func (s *Stats) KeepDepth(holding []jobstore.Queue) {
	keep := make(map[Pair]bool, len(holding))
	for _, q := range holding {
		keep[Pair{q.Source, q.Destination}] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for dst, bySrc := range s.gauges {
		for src, g := range bySrc {
			if g.open != 0 && !keep[Pair{src, dst}] {
				s.gauge(Pair{src, dst}).open = 0
			}
		}
	}
}

// Filter selects the stats of a query. Empty Source or Destination means
// all of them; From is inclusive, To exclusive, both rounded down to the
// minute.
type Filter struct {
	Source      string
	Destination string
	From, To    time.Time
}

func (f *Filter) match(p Pair) bool {
	return (f.Source == "" || f.Source == p.Source) &&
		(f.Destination == "" || f.Destination == p.Destination)
}

// scan calls fn for every stored minute in f's range whose pair f matches
// (per-source pairs included), the in-memory version of a minute
// replacing its stored one. fn must not keep b.
func (s *Stats) scan(f Filter, fn func(p Pair, minute int64, b *bucket)) error {
	from, to := minuteOf(f.From), minuteOf(f.To)
	if !f.To.Equal(time.Unix(to*60, 0)) {
		to++ // a partial minute at the end is included
	}
	seen := map[bkey]bool{}
	s.mu.Lock()
	for k, b := range s.hot {
		if k.minute >= from && k.minute < to && f.match(k.pair) {
			fn(k.pair, k.minute, b)
			seen[k] = true
		}
	}
	diskTo := min(to, s.completeFrom)
	s.mu.Unlock()
	if from >= diskTo {
		return nil
	}
	it, err := s.db.NewIter(&pebbledb.IterOptions{
		LowerBound: bucketKey(Pair{}, from), UpperBound: bucketKey(Pair{}, diskTo),
	})
	if err != nil {
		return err
	}
	defer it.Close()
	var b bucket
	for it.First(); it.Valid(); it.Next() {
		p, minute, ok := parseBucketKey(it.Key())
		if !ok || !f.match(p) || seen[bkey{p, minute}] {
			continue
		}
		b = bucket{}
		if err := b.decode(it.Value()); err != nil {
			s.log.Warn("skipping an unreadable stats minute", "source", p.Source, "destination", p.Destination, "err", err)
			continue
		}
		fn(p, minute, &b)
	}
	return it.Error()
}

// Latency summarises end-to-end latencies, receivedAt to the attempt that
// delivered, in milliseconds, each within HistogramError.
type Latency struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
}

func latencyOf(h *Histogram) Latency {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return Latency{Count: h.Count(), P50: ms(h.Quantile(0.50)), P95: ms(h.Quantile(0.95)), P99: ms(h.Quantile(0.99))}
}

// PairOverview is the overview of one (source, destination).
type PairOverview struct {
	Pair
	Counts
	Latency Latency `json:"latency"`
}

// Overview is what became of the events received in a range.
type Overview struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Counts sums every matching (source, destination).
	Counts
	Latency Latency `json:"latency"`
	// Ingest sums the matching sources' tracking API counts. It is
	// counted by source only, so a Destination filter leaves it out.
	Ingest *Ingest `json:"ingest,omitempty"`
	// Pairs breaks the counts down, sorted by source then destination.
	Pairs []PairOverview `json:"pairs"`
}

// Overview sums the minutes of f.
func (s *Stats) Overview(f Filter) (Overview, error) {
	out := Overview{From: f.From, To: f.To, Pairs: []PairOverview{}}
	type acc struct {
		c Counts
		h Histogram
	}
	pairs := map[Pair]*acc{}
	var total Histogram
	var ing Ingest
	err := s.scan(f, func(p Pair, _ int64, b *bucket) {
		if p.Destination == "" {
			ing.add(&b.ingest)
			return
		}
		a := pairs[p]
		if a == nil {
			a = &acc{}
			pairs[p] = a
		}
		a.c.add(&b.c)
		a.h.Merge(&b.latency)
		total.Merge(&b.latency)
	})
	if err != nil {
		return out, err
	}
	for p, a := range pairs {
		out.Counts.add(&a.c)
		out.Pairs = append(out.Pairs, PairOverview{Pair: p, Counts: a.c, Latency: latencyOf(&a.h)})
	}
	sort.Slice(out.Pairs, func(i, j int) bool {
		a, b := out.Pairs[i], out.Pairs[j]
		return a.Source < b.Source || a.Source == b.Source && a.Destination < b.Destination
	})
	out.Latency = latencyOf(&total)
	if f.Destination == "" {
		out.Ingest = &ing
	}
	return out, nil
}

// Histogram returns the merged latency histogram of f, for tests and
// callers that want other quantiles.
func (s *Stats) Histogram(f Filter) (*Histogram, error) {
	var h Histogram
	err := s.scan(f, func(p Pair, _ int64, b *bucket) {
		if p.Destination != "" {
			h.Merge(&b.latency)
		}
	})
	return &h, err
}

// load reads the hot minutes, the issue groups and the gauges. Minutes of
// a corrupt record are logged and skipped: counting them from zero is
// better than refusing to start.
func (s *Stats) load() error {
	it, err := s.db.NewIter(&pebbledb.IterOptions{
		LowerBound: bucketKey(Pair{}, s.completeFrom), UpperBound: []byte{'m' + 1},
	})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		p, minute, ok := parseBucketKey(it.Key())
		b := &bucket{}
		if !ok || b.decode(it.Value()) != nil {
			s.log.Warn("skipping an unreadable stats minute", "key", fmt.Sprintf("%q", it.Key()))
			continue
		}
		s.hot[bkey{p, minute}] = b
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = s.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{'g'}, UpperBound: []byte{'g' + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		p, ok := parsePair(it.Key()[1:])
		n, k := binary.Varint(it.Value())
		if ok && k > 0 {
			g := s.gauge(p)
			g.pending = n
			// The open count follows; records written before it existed
			// have none.
			if o, k2 := binary.Varint(it.Value()[k:]); k2 > 0 {
				g.open = o
			}
			g.dirty = false
		}
	}
	s.dirty = s.dirty[:0]
	if err := it.Close(); err != nil {
		return err
	}
	it, err = s.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{'i'}, UpperBound: []byte{'i' + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var is Issue
		if err := json.Unmarshal(it.Value(), &is); err != nil {
			s.log.Warn("skipping an unreadable issue group", "err", err)
			continue
		}
		s.pairIssues(Pair{is.Source, is.Destination}).put(&is)
	}
	return it.Error()
}

// Keys. Minutes come first so that pruning is one range deletion:
//
//	'm' minute(8, big endian) source 0x00 destination -> bucket
//	'i' source 0x00 destination 0x00 id(4)             -> issue group, JSON
//	'g' source 0x00 destination                        -> pending retry, then open jobs: varints
//
// Configured names never hold a NUL byte.
func bucketKey(p Pair, minute int64) []byte {
	k := make([]byte, 0, 10+len(p.Source)+len(p.Destination))
	k = append(k, 'm')
	k = binary.BigEndian.AppendUint64(k, uint64(minute))
	return appendPair(k, p)
}

func appendPair(k []byte, p Pair) []byte {
	k = append(k, p.Source...)
	k = append(k, 0)
	return append(k, p.Destination...)
}

func parsePair(b []byte) (Pair, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return Pair{}, false
	}
	return Pair{string(b[:i]), string(b[i+1:])}, true
}

func parseBucketKey(k []byte) (Pair, int64, bool) {
	if len(k) < 10 || k[0] != 'm' {
		return Pair{}, 0, false
	}
	p, ok := parsePair(k[9:])
	return p, int64(binary.BigEndian.Uint64(k[1:9])), ok
}

func issueKey(p Pair, id uint32) []byte {
	k := appendPair([]byte{'i'}, p)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, id)
}

func gaugeKey(p Pair) []byte { return appendPair([]byte{'g'}, p) }

// bucketVersion is the first byte of an encoded bucket.
const bucketVersion = 1

func (b *bucket) appendBinary(buf []byte) []byte {
	buf = append(buf, bucketVersion)
	c := &b.c
	for _, v := range [...]int64{c.Received, c.Filtered, c.Unsupported, c.DeliveredFirst,
		c.DeliveredRetry, c.PendingRetry, c.Failed, c.Archived} {
		buf = binary.AppendVarint(buf, v)
	}
	buf = b.latency.appendBinary(buf)
	buf = binary.AppendUvarint(buf, uint64(len(b.issues)))
	for id, n := range b.issues {
		buf = binary.AppendUvarint(buf, uint64(id))
		buf = binary.AppendVarint(buf, n)
	}
	g := &b.ingest
	buf = binary.AppendVarint(buf, g.Accepted)
	buf = binary.AppendVarint(buf, g.Deduplicated)
	buf = binary.AppendUvarint(buf, uint64(len(g.Rejected)))
	for r, n := range g.Rejected {
		buf = binary.AppendUvarint(buf, uint64(len(r)))
		buf = append(buf, r...)
		buf = binary.AppendVarint(buf, n)
	}
	return buf
}

func (b *bucket) decode(buf []byte) error {
	if len(buf) == 0 || buf[0] != bucketVersion {
		return errCorrupt
	}
	buf = buf[1:]
	varint := func() int64 {
		v, k := binary.Varint(buf)
		if k <= 0 {
			buf = nil
			return 0
		}
		buf = buf[k:]
		return v
	}
	uvarint := func() uint64 {
		v, k := binary.Uvarint(buf)
		if k <= 0 {
			buf = nil
			return 0
		}
		buf = buf[k:]
		return v
	}
	c := &b.c
	for _, p := range [...]*int64{&c.Received, &c.Filtered, &c.Unsupported, &c.DeliveredFirst,
		&c.DeliveredRetry, &c.PendingRetry, &c.Failed, &c.Archived} {
		*p = varint()
	}
	if buf == nil {
		return errCorrupt
	}
	var err error
	if buf, err = b.latency.decode(buf); err != nil {
		return err
	}
	n := uvarint()
	if n > MaxIssues+1 {
		return errCorrupt
	}
	for range n {
		id := uint32(uvarint())
		if b.issues == nil {
			b.issues = map[uint32]int64{}
		}
		b.issues[id] += varint()
	}
	b.ingest.Accepted = varint()
	b.ingest.Deduplicated = varint()
	n = uvarint()
	if n > maxReasons+1 {
		return errCorrupt
	}
	for range n {
		l := uvarint()
		if l > uint64(len(buf)) {
			return errCorrupt
		}
		r := string(buf[:l])
		buf = buf[l:]
		b.ingest.reject(r, varint())
	}
	if buf == nil {
		return errCorrupt
	}
	return nil
}
