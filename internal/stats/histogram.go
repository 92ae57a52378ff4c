package stats

import (
	"encoding/binary"
	"errors"
	"math"
	"sort"
	"time"
)

// HistogramError is the relative error of every quantile a Histogram
// reports: the value returned is within 1% of a value that was recorded at
// that rank.
const HistogramError = 0.01

// The histogram is log-bucketed, as DDSketch is: bucket i holds the values
// in (gamma^(i-1), gamma^i] microseconds, with gamma = (1+a)/(1-a) for the
// relative error a. Reporting 2*gamma^i/(gamma+1), the bucket's harmonic
// middle, is then within a of every value in it, whatever the magnitude:
// a 3 ms delivery and a 3 h retried one are measured equally well. Buckets
// are kept sparse, so a minute in which latencies cluster costs a few
// dozen bins; the whole range of 1 µs to 30 days is about 1,500 bins.
var (
	histGamma    = (1 + HistogramError) / (1 - HistogramError)
	histLogGamma = math.Log(histGamma)
)

// maxBin bounds the bin index so that a garbage latency cannot grow a
// histogram without limit; it is about 30 days in microseconds.
const maxBin = 1500

// Histogram counts latencies. The zero value is empty and ready to use.
// Histograms merge by adding counts, so the latency of any range of minutes
// is the merge of its minutes' histograms.
type Histogram struct {
	bins []bin // sorted by index
	n    uint64
}

type bin struct {
	i int32
	n uint64
}

func binOf(d time.Duration) int32 {
	us := float64(d) / float64(time.Microsecond)
	if us <= 1 {
		return 0
	}
	i := int32(math.Ceil(math.Log(us) / histLogGamma))
	return min(i, maxBin)
}

// binValue is the value reported for bin i.
func binValue(i int32) time.Duration {
	if i == 0 {
		return time.Microsecond
	}
	us := 2 * math.Pow(histGamma, float64(i)) / (histGamma + 1)
	return time.Duration(us * float64(time.Microsecond))
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	h.add(binOf(d), 1)
}

func (h *Histogram) add(i int32, n uint64) {
	h.n += n
	k := sort.Search(len(h.bins), func(k int) bool { return h.bins[k].i >= i })
	if k < len(h.bins) && h.bins[k].i == i {
		h.bins[k].n += n
		return
	}
	h.bins = append(h.bins, bin{})
	copy(h.bins[k+1:], h.bins[k:])
	h.bins[k] = bin{i: i, n: n}
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for _, b := range o.bins {
		h.add(b.i, b.n)
	}
}

// Count is how many latencies were recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the latency at quantile q in [0, 1]: the smallest
// recorded value that at least q of the values do not exceed, within
// HistogramError. It returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for _, b := range h.bins {
		seen += b.n
		if seen >= rank {
			return binValue(b.i)
		}
	}
	return binValue(h.bins[len(h.bins)-1].i)
}

// appendBinary encodes h as a count of bins followed by (index, count)
// pairs, as uvarints.
func (h *Histogram) appendBinary(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(h.bins)))
	for _, x := range h.bins {
		b = binary.AppendUvarint(b, uint64(x.i))
		b = binary.AppendUvarint(b, x.n)
	}
	return b
}

var errCorrupt = errors.New("corrupt record")

// decode reads what appendBinary wrote and returns the rest of b.
func (h *Histogram) decode(b []byte) ([]byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxBin+1 {
		return nil, errCorrupt
	}
	b = b[k:]
	for range n {
		i, k := binary.Uvarint(b)
		if k <= 0 || i > maxBin {
			return nil, errCorrupt
		}
		b = b[k:]
		c, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, errCorrupt
		}
		b = b[k:]
		h.add(int32(i), c)
	}
	return b, nil
}
