package stats

import (
	"sort"
	"time"

	"github.com/fanout/fanout/internal/latency"
)

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

// Gauges are a queue's running counts (see PendingRetry and Depth).
type Gauges struct {
	PendingRetry int64 `json:"pending_retry"`
	Depth        int64 `json:"depth"`
}

// ClusterGauges returns every pair's running counts summed over the nodes
// sharing the backend: this node's from memory, the others' as they last
// flushed them (Flush them first for figures that agree from every node).
// With a backend of the node's own, they are this node's. Pairs whose
// counts are all zero are left out.
func (s *Stats) ClusterGauges() (map[Pair]Gauges, error) {
	out := map[Pair]Gauges{}
	add := func(p Pair, pending, open int64) {
		g := out[p]
		g.PendingRetry += pending
		g.Depth += open
		out[p] = g
	}
	if err := s.backend.otherGauges(add); err != nil {
		return nil, err
	}
	s.mu.Lock()
	for dst, bySrc := range s.gauges {
		for src, g := range bySrc {
			add(Pair{src, dst}, g.pending, g.open)
		}
	}
	s.mu.Unlock()
	for p, g := range out {
		// Depth may dip below zero for a moment (see gauge.open).
		g.Depth = max(g.Depth, 0)
		if g == (Gauges{}) {
			delete(out, p)
			continue
		}
		out[p] = g
	}
	return out, nil
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
// replacing its stored one. With a shared backend, other nodes' minutes
// come too, a minute of several nodes once per node: fn adds them up.
// fn must not keep b.
func (s *Stats) scan(f Filter, fn func(p Pair, minute int64, b *bucket)) error {
	return s.scanNodes(f, func(_ string, p Pair, minute int64, b *bucket) { fn(p, minute, b) })
}

// scanNodes is scan that also tells fn which node counted each minute: ""
// for this node, the node's name for another node's minute of a shared
// backend.
func (s *Stats) scanNodes(f Filter, fn func(node string, p Pair, minute int64, b *bucket)) error {
	from, to := minuteOf(f.From), minuteOf(f.To)
	if !f.To.Equal(time.Unix(to*60, 0)) {
		to++ // a partial minute at the end is included
	}
	seen := map[bkey]bool{}
	s.mu.Lock()
	for k, b := range s.hot {
		if k.minute >= from && k.minute < to && f.match(k.pair) {
			fn("", k.pair, k.minute, b)
			seen[k] = true
		}
	}
	ownTo := s.completeFrom
	s.mu.Unlock()
	if from >= to {
		return nil
	}
	var b bucket
	return s.backend.scan(from, to, ownTo, &f, func(p Pair, minute int64, node string, v []byte) {
		if node == "" && seen[bkey{p, minute}] {
			return
		}
		b = bucket{}
		if err := b.decode(v); err != nil {
			s.log.Warn("skipping an unreadable stats minute", "source", p.Source, "destination", p.Destination, "err", err)
			return
		}
		fn(node, p, minute, &b)
	})
}

// Latency summarises end-to-end latencies, receivedAt to the attempt that
// delivered, in milliseconds, each within latency.RelativeError.
type Latency struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
}

func latencyOf(h *latency.Histogram) Latency {
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
		h latency.Histogram
	}
	pairs := map[Pair]*acc{}
	var total latency.Histogram
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
func (s *Stats) Histogram(f Filter) (*latency.Histogram, error) {
	var h latency.Histogram
	err := s.scan(f, func(p Pair, _ int64, b *bucket) {
		if p.Destination != "" {
			h.Merge(&b.latency)
		}
	})
	return &h, err
}
