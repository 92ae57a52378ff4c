package sink

import (
	"time"

	"github.com/fanout/fanout/internal/latency"
)

// histogram counts latencies in a latency.Histogram, the stats' own, within
// latency.RelativeError of the true quantile whatever the range: 50µs and
// 50s are measured equally well, in a few KB per key, with no sample kept.
// Beside it, the largest latency, exactly.
type histogram struct {
	h   latency.Histogram
	max time.Duration
}

func (h *histogram) record(us int64) {
	// receivedAt is stamped by another clock; a sink slightly behind it
	// must not produce negative latencies.
	d := max(time.Duration(us)*time.Microsecond, 0)
	h.h.Record(d)
	h.max = max(h.max, d)
}

// merge adds o's counts to h.
func (h *histogram) merge(o *histogram) {
	h.h.Merge(&o.h)
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q in [0, 1], in microseconds,
// capped at the largest value seen.
func (h *histogram) quantile(q float64) float64 {
	return float64(min(h.h.Quantile(q), h.max)) / float64(time.Microsecond)
}

// Latency summarizes a histogram, in milliseconds.
type Latency struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func (h *histogram) summary() Latency {
	return Latency{
		Count: h.h.Count(),
		P50:   h.quantile(0.50) / 1000,
		P95:   h.quantile(0.95) / 1000,
		P99:   h.quantile(0.99) / 1000,
		Max:   float64(h.max) / float64(time.Millisecond),
	}
}
