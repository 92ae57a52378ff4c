package stats

import (
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
)

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
		s.changed = true
	}
	return g
}

// Observe records one delivery attempt. It is the delivery engine's
// Options.Observe hook.
func (s *Stats) Observe(r delivery.Report) {
	p := Pair{r.Queue.Source, r.Queue.Destination}
	j := r.Job
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed = true
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
	if !r.Expired && !r.Unattempted {
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
		if r.DuplicateRisk {
			c.RetriedDuplicateRisk = 1
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
	// A delivered result with a reason carries a warning (see
	// destinations.Result.Reason): an issue group of its own, outcome
	// "delivered"; the event is counted delivered above all the same.
	if o := r.Result.Outcome; o == destinations.Rejected || o == destinations.Retryable ||
		o == destinations.Delivered && r.Result.Reason != "" {
		s.issue(p, r)
	}
}

// ObserveIngest records one tracking API request. It is the tracking API's
// Options.Observe hook.
func (s *Stats) ObserveIngest(r ingest.Report) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed = true
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
		d := &r.Routes[i]
		for _, n := range d.To {
			if b := get(n, minute); b != nil {
				b.c.Received++
			}
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
		v, err := s.backend.get(p, minute)
		if err != nil {
			// Counting from zero would overwrite the stored minute with
			// less: this count is lost instead, and the minute kept.
			s.log.Error("read stats minute; not counting this report in it", "source", p.Source,
				"destination", p.Destination, "minute", time.Unix(minute*60, 0).UTC(), "err", err)
			return nil
		}
		if v != nil {
			if err := b.decode(v); err != nil {
				s.log.Error("stats minute is unreadable; counting from zero", "source", p.Source,
					"destination", p.Destination, "minute", time.Unix(minute*60, 0).UTC(), "err", err)
				b = &bucket{}
			}
		}
	}
	s.hot[k] = b
	return b
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
