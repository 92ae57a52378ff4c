// Package latency counts latencies in histograms that merge exactly and
// report every quantile within RelativeError, whatever the range: the
// delivery latency of the stats (internal/stats), kept per minute and
// merged over a range, and the latency the test destination measures
// (internal/sink).
package latency

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

// RelativeError is the relative error of every quantile a Histogram
// reports: the value returned is within 1% of a value that was recorded at
// that rank.
const RelativeError = 0.01

// histMapping maps latencies to the buckets of every Histogram, each a
// DDSketch (github.com/DataDog/sketches-go), the sketch behind Datadog's
// distributions. Bucket i holds the values in [gamma^i, gamma^(i+1))
// microseconds, with gamma = (1+a)/(1-a) for the relative error a, and reports gamma^i*(1+a), which is within a of every
// value in the bucket whatever the magnitude: a 3 ms delivery and a 3 h
// retried one are measured equally well. Sketches merge by adding bucket
// counts, exactly, so a range of minutes is the merge of its minutes.
//
// The unit is the microsecond because the hand-written sketch that came
// before used the same gamma on microseconds: its bucket i is the
// library's bucket i-1, and the stats' minutes it wrote decode to the
// same quantiles (see decodeLegacy).
//
// The store is the library's default, the buffered paginated store: most
// minutes hold a few latencies, which it keeps as a short list of bucket
// indexes, and it allocates 32-bucket pages only where values are dense. It
// never collapses buckets, so it adds no error; what bounds it is the range
// of indexes it can be given. Record clamps latencies to
// [1 µs, maxLatency], indexes minIndex to maxIndex (1,430 buckets, 45
// pages), and Decode refuses anything outside that range, so a garbage
// latency, a clock step or a corrupt record cannot grow a histogram beyond
// about 20 kB, however many latencies it holds.
var histMapping = func() *mapping.LogarithmicMapping {
	m, err := mapping.NewLogarithmicMapping(RelativeError)
	if err != nil {
		panic(err) // RelativeError is a constant in (0, 1)
	}
	return m
}()

// maxLatency caps what a Histogram records. Nothing real comes near it: a
// delivery is counted in the stats' minute its event was received, and
// minutes older than the retention (14 days by default) are gone.
const maxLatency = 30 * 24 * time.Hour

var (
	minIndex = histMapping.Index(1) // 1 µs
	maxIndex = histMapping.Index(micros(maxLatency))
)

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Histogram counts latencies. The zero value is empty and ready to use.
// Histograms merge by adding counts, so the latency of any range of minutes
// is the merge of its minutes' histograms.
//
// A Histogram is not safe for concurrent use, not even by readers: the
// library's store sorts and compacts its buffer of indexes when it is read
// (Quantile, AppendBinary).
type Histogram struct {
	s *ddsketch.DDSketch // nil until the first value
}

func (h *Histogram) sketch() *ddsketch.DDSketch {
	if h.s == nil {
		h.s = ddsketch.NewDDSketchFromStoreProvider(histMapping, store.BufferedPaginatedStoreConstructor)
	}
	return h.s
}

// Record adds one latency. Latencies under a microsecond, negative ones
// after a clock step included, count as 1 µs, and those over maxLatency
// as maxLatency, so that all fall in the sketch's bounded range of
// buckets.
func (h *Histogram) Record(d time.Duration) {
	d = min(max(d, time.Microsecond), maxLatency)
	// Add fails only for values the mapping cannot index (below about
	// 1e-308 or above about 1e308), which the clamp rules out.
	_ = h.sketch().Add(micros(d))
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.s == nil || o.s.IsEmpty() {
		return
	}
	// MergeWith fails only for sketches of different mappings, and every
	// Histogram uses histMapping.
	_ = h.sketch().MergeWith(o.s)
}

// Count is how many latencies were recorded.
func (h *Histogram) Count() uint64 {
	if h.s == nil {
		return 0
	}
	return uint64(h.s.GetCount())
}

// Quantile returns the latency at quantile q in [0, 1]: the smallest
// recorded value that at least q of the values do not exceed, within
// RelativeError. It returns 0 for an empty histogram.
//
// That is the nearest rank, ceil(q*n), rather than the library's
// GetValueAtQuantile, which ranks at q*(n-1): with few values the two
// differ, and the library's p99 of 13 deliveries is the second slowest,
// not the slowest. Every value is in the positive store (Record clamps to
// 1 µs, Decode refuses zero and negative values), so ranking that store is
// ranking the sketch.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.s == nil || h.s.IsEmpty() {
		return 0
	}
	rank := max(math.Ceil(q*h.s.GetCount()), 1)
	// KeyAtRank(r) is the first bucket whose cumulative count exceeds r;
	// counts are whole numbers, so it is the bucket of the rank-th value.
	i := h.s.GetPositiveValueStore().KeyAtRank(rank - 1)
	return time.Duration(math.Round(histMapping.Value(i) * float64(time.Microsecond)))
}

// A histogram is encoded inside a stats bucket record (internal/stats),
// whose version byte predates the DDSketch, so the histogram's encoding marks its own format.
// It starts with a uvarint:
//
//   - sketchFormat: then the count of latencies, the length of the sketch
//     and the sketch as the library's Encode writes it, without the index
//     mapping (the format implies histMapping). The count is checked
//     against the decoded sketch because the library's decoder does not
//     report every malformed run of buckets; it can return a sketch that
//     holds only part of the record.
//   - 0 to legacyMaxBin+1: the legacy format, written before the DDSketch,
//     where that number is a count of bins followed by (index, count)
//     uvarint pairs. It is still decoded. The empty histogram is still
//     written this way, as a single 0, which means the same in both.
//
// sketchFormat is above any count of bins the legacy decoder accepted, so
// it cannot be mistaken for a legacy record, and a binary from before the
// DDSketch reports a new record as corrupt (and skips the minute) rather
// than misreading it.
const (
	legacyMaxBin = 1500
	sketchFormat = 2048
)

// AppendBinary appends h's encoding to b, which Decode reads back.
func (h *Histogram) AppendBinary(b []byte) []byte {
	if h.s == nil || h.s.IsEmpty() {
		return binary.AppendUvarint(b, 0)
	}
	var sk []byte
	h.s.Encode(&sk, true)
	b = binary.AppendUvarint(b, sketchFormat)
	b = binary.AppendUvarint(b, h.Count())
	b = binary.AppendUvarint(b, uint64(len(sk)))
	return append(b, sk...)
}

// maxCount bounds the latencies a decoded histogram may hold: the library
// counts in float64 and encodes a count c as the float c+1, which is exact
// up to 2^53.
const maxCount = 1<<53 - 1

var errCorrupt = errors.New("corrupt record")

// Decode adds to h the histogram that AppendBinary wrote at the start of
// b, of either format, and returns the rest of b. On error h is unchanged.
func (h *Histogram) Decode(b []byte) ([]byte, error) {
	format, k := binary.Uvarint(b)
	switch {
	case k <= 0:
		return nil, fmt.Errorf("%w: latency histogram: truncated format", errCorrupt)
	case format == sketchFormat:
		return h.decodeSketch(b[k:])
	case format <= legacyMaxBin+1:
		return h.decodeLegacy(b[k:], format)
	default:
		return nil, fmt.Errorf("%w: latency histogram: unknown format %d", errCorrupt, format)
	}
}

func (h *Histogram) decodeSketch(b []byte) ([]byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, fmt.Errorf("%w: latency histogram: truncated count", errCorrupt)
	}
	b = b[k:]
	size, k := binary.Uvarint(b)
	if k <= 0 || size > uint64(len(b)-k) {
		return nil, fmt.Errorf("%w: latency histogram: sketch length past the end of the record", errCorrupt)
	}
	sk, rest := b[k:k+int(size)], b[k+int(size):]
	// The library's decoder adds each bucket to the store as it reads it,
	// so a wild index would have a paginated store allocate pages for the
	// whole span before it could be refused. A sparse store only grows
	// with the length of the record; once checked, its buckets are merged
	// into h's store.
	s, err := ddsketch.DecodeDDSketch(sk, store.SparseStoreConstructor, histMapping)
	if err != nil {
		return nil, fmt.Errorf("%w: latency histogram: %w", errCorrupt, err)
	}
	if s.GetZeroCount() != 0 || !s.GetNegativeValueStore().IsEmpty() {
		return nil, fmt.Errorf("%w: latency histogram: latencies under 1 µs", errCorrupt)
	}
	var total uint64
	s.GetPositiveValueStore().ForEach(func(i int, c float64) bool {
		if i < minIndex || i > maxIndex {
			err = fmt.Errorf("%w: latency histogram: bucket %d outside %d..%d", errCorrupt, i, minIndex, maxIndex)
		} else if !(c >= 1 && c <= float64(maxCount-total) && c == math.Trunc(c)) {
			err = fmt.Errorf("%w: latency histogram: bucket %d counts %v, not a whole number up to 2^53-1 in all", errCorrupt, i, c)
		}
		total += uint64(c)
		return err != nil
	})
	if err != nil {
		return nil, err
	}
	if total != n {
		return nil, fmt.Errorf("%w: latency histogram: sketch holds %d latencies, the record says %d", errCorrupt, total, n)
	}
	h.Merge(&Histogram{s: s})
	return rest, nil
}

// decodeLegacy reads the n (index, count) pairs of the legacy format. Its
// bin i held (gamma^(i-1), gamma^i] microseconds, bin 0 everything up to
// 1 µs: that is the library's bucket i-1, but for which edge is closed,
// and the same value is reported for it. Bin 0 goes to the bucket of 1 µs,
// where Record now counts what it held, and the bins past maxLatency (the
// legacy cap was at bin 1500, about 124 days) to the last bucket.
func (h *Histogram) decodeLegacy(b []byte, n uint64) ([]byte, error) {
	var d Histogram
	var total uint64
	for range n {
		i, k := binary.Uvarint(b)
		if k <= 0 || i > legacyMaxBin {
			return nil, fmt.Errorf("%w: latency histogram: bad legacy bin", errCorrupt)
		}
		b = b[k:]
		c, k := binary.Uvarint(b)
		if k <= 0 || c > maxCount-total {
			return nil, fmt.Errorf("%w: latency histogram: bad legacy count", errCorrupt)
		}
		b = b[k:]
		total += c
		d.sketch().GetPositiveValueStore().AddWithCount(min(max(int(i)-1, minIndex), maxIndex), float64(c))
	}
	h.Merge(&d)
	return b, nil
}
