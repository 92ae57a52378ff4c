package sink

import "math/bits"

// histogram counts latencies in microseconds in log-linear buckets, the
// layout HDR histograms use: values below 256 have a bucket each, and every
// power of two above is split into 128 equal buckets. A bucket is thus at
// most 1/128 of its lower bound wide, and reporting its midpoint is within
// 0.4% of every value in it, whatever the range: 50µs and 50s are measured
// equally well, in a few KB per key, with no sample kept.
type histogram struct {
	// counts grows to the highest bucket used, so a key that only sees
	// milliseconds never pays for the buckets of hours.
	counts []uint64
	n      uint64
	max    int64
}

const subBuckets = 128

// bucketOf returns the index of the bucket holding v, which is >= 0.
func bucketOf(v uint64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	// e is how far v must be shifted right to fall in [128, 256).
	e := bits.Len64(v) - 8
	return (e+1)*subBuckets + int((v>>e)&(subBuckets-1))
}

// bucketRange returns the lowest value in bucket i and its width.
func bucketRange(i int) (low, width uint64) {
	if i < 2*subBuckets {
		return uint64(i), 1
	}
	e := i/subBuckets - 1
	m := uint64(i%subBuckets + subBuckets)
	return m << e, 1 << e
}

func (h *histogram) record(us int64) {
	if us < 0 {
		// receivedAt is stamped by another clock; a sink slightly behind
		// it must not produce negative latencies.
		us = 0
	}
	i := bucketOf(uint64(us))
	if i >= len(h.counts) {
		grown := make([]uint64, i+1, max(i+1, 2*len(h.counts)))
		copy(grown, h.counts)
		h.counts = grown
	}
	h.counts[i]++
	h.n++
	h.max = max(h.max, us)
}

// merge adds o's counts to h.
func (h *histogram) merge(o *histogram) {
	if len(o.counts) > len(h.counts) {
		grown := make([]uint64, len(o.counts))
		copy(grown, h.counts)
		h.counts = grown
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q in [0, 1], in microseconds: the
// midpoint of the bucket holding the ceil(q*n)-th smallest value, capped at
// the largest value seen.
func (h *histogram) quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if float64(rank) < q*float64(h.n) || rank == 0 {
		rank++
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			low, width := bucketRange(i)
			mid := float64(low) + float64(width-1)/2
			return min(mid, float64(h.max))
		}
	}
	return float64(h.max)
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
		Count: h.n,
		P50:   h.quantile(0.50) / 1000,
		P95:   h.quantile(0.95) / 1000,
		P99:   h.quantile(0.99) / 1000,
		Max:   float64(h.max) / 1000,
	}
}
