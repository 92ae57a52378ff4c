package latency

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

// TestRelativeError compares the histogram's quantiles with exact ones
// over latencies spread across six orders of magnitude.
func TestRelativeError(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var h, a, b Histogram
	var vals []time.Duration
	for i := range 20000 {
		d := time.Duration(math.Exp(rnd.Float64()*math.Log(1e7))) * time.Microsecond // 1µs..10s
		vals = append(vals, d)
		h.Record(d)
		if i%2 == 0 { // two halves merged must equal the whole
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	slices.Sort(vals)
	for _, q := range []float64{0.01, 0.5, 0.95, 0.99, 1} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := h.Quantile(q)
		if rel := math.Abs(float64(got-exact)) / float64(exact); rel > RelativeError {
			t.Errorf("q%v = %v, exact %v: relative error %.4f over %v", q, got, exact, rel, RelativeError)
		}
		if a.Quantile(q) != got {
			t.Errorf("q%v of merged halves = %v, of the whole %v", q, a.Quantile(q), got)
		}
	}
	enc := h.AppendBinary(nil)
	var back Histogram
	if rest, err := back.Decode(enc); err != nil || len(rest) != 0 || back.Quantile(0.5) != h.Quantile(0.5) || back.Count() != h.Count() {
		t.Errorf("decode: %v, rest %d", err, len(rest))
	}
}

var testQuantiles = []float64{0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1}

// exactQuantile is the nearest-rank quantile that Quantile promises, of
// sorted values.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	rank := max(int(math.Ceil(q*float64(len(sorted)))), 1)
	return sorted[rank-1]
}

func relErr(got, exact time.Duration) float64 {
	return math.Abs(float64(got-exact)) / float64(exact)
}

// TestHistogramQuantiles compares the quantiles of a histogram with the
// exact ones over several shapes of latency, from a single value to 50,000
// spread across ten orders of magnitude, and checks that any split of the
// values into parts, merged, and each part through the encoding and back,
// gives the same quantiles as the whole.
func TestHistogramQuantiles(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	logUniform := func(lo, hi time.Duration) func() time.Duration {
		return func() time.Duration {
			return time.Duration(math.Exp(math.Log(float64(lo)) + rnd.Float64()*math.Log(float64(hi)/float64(lo))))
		}
	}
	lognormal := func() time.Duration { return time.Duration(1e8 * math.Exp(rnd.NormFloat64())) } // around 100 ms
	tests := []struct {
		name string
		n    int
		gen  func() time.Duration
	}{
		{"log-uniform 1µs..10s", 20000, logUniform(time.Microsecond, 10*time.Second)},
		{"log-uniform 1µs..30 days", 50000, logUniform(time.Microsecond, maxLatency)},
		{"whole microseconds near 1µs", 5000, func() time.Duration { return time.Duration(1+rnd.IntN(50)) * time.Microsecond }},
		{"lognormal with a retry tail", 10000, func() time.Duration {
			if rnd.IntN(50) == 0 {
				return logUniform(time.Minute, 6*time.Hour)()
			}
			return lognormal()
		}},
		{"constant", 300, func() time.Duration { return 40 * time.Millisecond }},
		{"one value", 1, lognormal},
		{"two values", 2, lognormal},
		{"13 values", 13, lognormal},
		{"99 values", 99, lognormal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vals := make([]time.Duration, tt.n)
			var whole Histogram
			for i := range vals {
				vals[i] = tt.gen()
				whole.Record(vals[i])
			}
			if whole.Count() != uint64(tt.n) {
				t.Fatalf("Count = %d, want %d", whole.Count(), tt.n)
			}
			sorted := slices.Sorted(slices.Values(vals))
			for _, q := range testQuantiles {
				exact := exactQuantile(sorted, q)
				if got := whole.Quantile(q); relErr(got, exact) > RelativeError {
					t.Errorf("q%v = %v, exact %v: relative error %.4f over %v", q, got, exact, relErr(got, exact), RelativeError)
				}
			}
			for _, parts := range []int{2, 3, 7} {
				hs := make([]Histogram, parts)
				for _, v := range vals {
					hs[rnd.IntN(parts)].Record(v)
				}
				var merged, decoded Histogram
				for i := range hs {
					merged.Merge(&hs[i])
					if rest, err := decoded.Decode(hs[i].AppendBinary(nil)); err != nil || len(rest) != 0 {
						t.Fatalf("decode part %d: %v, %d bytes left", i, err, len(rest))
					}
				}
				for name, h := range map[string]*Histogram{"merged": &merged, "decoded and merged": &decoded} {
					if h.Count() != whole.Count() {
						t.Errorf("%d parts %s: Count = %d, want %d", parts, name, h.Count(), whole.Count())
					}
					for _, q := range testQuantiles {
						if got, want := h.Quantile(q), whole.Quantile(q); got != want {
							t.Errorf("%d parts %s: q%v = %v, the whole has %v", parts, name, q, got, want)
						}
					}
				}
			}
		})
	}
}

func TestHistogramEmpty(t *testing.T) {
	var h, o Histogram
	h.Merge(&o)
	if h.Count() != 0 || h.Quantile(0.5) != 0 {
		t.Errorf("empty: Count %d, median %v", h.Count(), h.Quantile(0.5))
	}
	// The empty histogram is written as the legacy format's empty one, a
	// single 0, which a binary from before the DDSketch reads too.
	if enc := h.AppendBinary([]byte{9}); string(enc) != "\x09\x00" {
		t.Errorf("AppendBinary(empty) = %x, want 0900", enc)
	}
}

// TestHistogramBounded records garbage, a clock step backwards and
// durations up to the largest there is, and checks that they land in the
// bounded range of buckets that bounds a histogram's memory, reported as
// 1 µs and maxLatency.
func TestHistogramBounded(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{math.MinInt64, -time.Hour, 0, 1, 999} {
		h.Record(d)
	}
	for d := time.Duration(1); d > 0; d = d*101/100 + 1 { // every bucket, up to overflow
		h.Record(d)
	}
	h.Record(math.MaxInt64)
	ps := h.s.GetPositiveValueStore()
	lo, _ := ps.MinIndex()
	hi, _ := ps.MaxIndex()
	if lo != minIndex || hi != maxIndex {
		t.Errorf("buckets %d..%d, want %d..%d", lo, hi, minIndex, maxIndex)
	}
	if h.s.GetZeroCount() != 0 || !h.s.GetNegativeValueStore().IsEmpty() {
		t.Error("values outside the positive store")
	}
	if got := h.Quantile(0); relErr(got, time.Microsecond) > RelativeError {
		t.Errorf("minimum = %v, want 1µs", got)
	}
	if got := h.Quantile(1); relErr(got, maxLatency) > RelativeError {
		t.Errorf("maximum = %v, want %v", got, maxLatency)
	}
	// A histogram holding every bucket, the largest there can be, encodes
	// to a few kilobytes.
	if enc := h.AppendBinary(nil); len(enc) > 16<<10 {
		t.Errorf("full histogram encodes to %d bytes", len(enc))
	}
}

// legacyMinute was written by the hand-written sketch that came before
// the DDSketch (commit 97ad5ce), for these latencies: 40µs, 3ms, 12ms,
// 12ms, 45ms, 80ms, 120ms, 250ms, 250ms, 900ms, 1.5s, 4s, 31s, 5m, 2h, 72h.
// legacyQuantiles is what that code reported for it.
const legacyMinute = "0eb90101910301d60302980401b50401c90401ee0402ae0501c80501f90501df0601d00701ef0801a20a01"

var legacyQuantiles = []struct {
	q    float64
	want time.Duration
}{
	{0, 40047}, {0.05, 40047}, {0.1, 3011570}, {0.25, 11971247}, {0.5, 250287204},
	{0.75, 4034758586}, {0.9, 7152346890415}, {0.95, 256610630537767}, {1, 256610630537767},
}

// TestHistogramLegacy decodes a minute of the legacy format to the same
// count and quantiles, and re-encodes it in the DDSketch format without a
// change. The same quantiles: up to floating-point rounding, as the legacy
// code computed a bucket's value by another formula, and truncated it to
// the nanosecond where Quantile rounds.
func TestHistogramLegacy(t *testing.T) {
	enc, err := hex.DecodeString(legacyMinute)
	if err != nil {
		t.Fatal(err)
	}
	var h Histogram
	rest, err := h.Decode(append(enc, "rest"...))
	if err != nil || string(rest) != "rest" {
		t.Fatalf("decode: %v, rest %q", err, rest)
	}
	var again Histogram
	if _, err := again.Decode(h.AppendBinary(nil)); err != nil {
		t.Fatalf("decode of the re-encoding: %v", err)
	}
	for name, h := range map[string]*Histogram{"legacy": &h, "re-encoded": &again} {
		if h.Count() != 16 {
			t.Errorf("%s: Count = %d, want 16", name, h.Count())
		}
		for _, tt := range legacyQuantiles {
			if got := h.Quantile(tt.q); math.Abs(float64(got-tt.want)) > max(1, 1e-12*float64(tt.want)) {
				t.Errorf("%s: q%v = %v, the legacy code reported %v", name, tt.q, got, tt.want)
			}
		}
	}

	// The edges: legacy bin 0 held latencies up to 1 µs and reported 1 µs;
	// bin 1500, about 124 days, held everything longer. They read as 1 µs
	// and maxLatency, within the error.
	var edges Histogram
	if _, err := edges.Decode([]byte{2, 0, 3, 0xdc, 0x0b, 1}); err != nil {
		t.Fatal(err)
	}
	if edges.Count() != 4 || relErr(edges.Quantile(0.75), time.Microsecond) > RelativeError ||
		relErr(edges.Quantile(1), maxLatency) > RelativeError {
		t.Errorf("edges: Count %d, q0.75 %v, max %v", edges.Count(), edges.Quantile(0.75), edges.Quantile(1))
	}
}

// sketchRecord frames the library encoding of s as a sketchFormat record
// that says it holds n latencies.
func sketchRecord(n uint64, s *ddsketch.DDSketch) []byte {
	var sk []byte
	s.Encode(&sk, true)
	return framed(n, sk)
}

func framed(n uint64, sk []byte) []byte {
	b := binary.AppendUvarint(nil, sketchFormat)
	b = binary.AppendUvarint(b, n)
	b = binary.AppendUvarint(b, uint64(len(sk)))
	return append(b, sk...)
}

// TestHistogramCorrupt checks that every malformed record is refused with
// an error wrapping errCorrupt, and leaves the histogram unchanged.
func TestHistogramCorrupt(t *testing.T) {
	sketch := func(add func(s *ddsketch.DDSketch)) *ddsketch.DDSketch {
		s := ddsketch.NewDDSketchFromStoreProvider(histMapping, store.SparseStoreConstructor)
		add(s)
		return s
	}
	three := sketch(func(s *ddsketch.DDSketch) { s.Add(10); s.Add(1000); s.Add(1e6) })
	var threeSk []byte
	three.Encode(&threeSk, true)
	other, _ := mapping.NewLogarithmicMapping(0.02)
	var otherSk []byte
	ddsketch.NewDDSketchFromStoreProvider(other, store.SparseStoreConstructor).Encode(&otherSk, false)

	if _, err := new(Histogram).Decode(sketchRecord(3, three)); err != nil {
		t.Fatalf("the well-formed record: %v", err)
	}
	tests := map[string][]byte{
		"nothing":            nil,
		"truncated format":   {0x80},
		"unknown format":     binary.AppendUvarint(nil, sketchFormat+1),
		"truncated count":    binary.AppendUvarint(nil, sketchFormat),
		"count mismatch":     sketchRecord(4, three),
		"length past end":    framed(3, threeSk)[:4+len(threeSk)-1],
		"bucket above":       sketchRecord(1, sketch(func(s *ddsketch.DDSketch) { s.GetPositiveValueStore().Add(maxIndex + 1) })),
		"bucket below":       sketchRecord(1, sketch(func(s *ddsketch.DDSketch) { s.GetPositiveValueStore().Add(minIndex - 1) })),
		"huge bucket":        sketchRecord(1, sketch(func(s *ddsketch.DDSketch) { s.GetPositiveValueStore().Add(math.MaxInt64) })),
		"fractional count":   sketchRecord(1, sketch(func(s *ddsketch.DDSketch) { s.AddWithCount(100, 1.5) })),
		"NaN count":          sketchRecord(0, sketch(func(s *ddsketch.DDSketch) { s.GetPositiveValueStore().AddWithCount(5, math.NaN()) })),
		"zero latency":       sketchRecord(1, sketch(func(s *ddsketch.DDSketch) { s.Add(0) })),
		"negative latency":   sketchRecord(1, sketch(func(s *ddsketch.DDSketch) { s.Add(-5) })),
		"another mapping":    framed(0, otherSk),
		"garbage sketch":     framed(1, []byte{0xff, 0xff, 0xff}),
		"legacy too many":    binary.AppendUvarint(nil, legacyMaxBin+2),
		"legacy bin above":   {1, 0xdd, 0x0b, 1},
		"legacy truncated":   {2, 5, 1},
		"legacy bad count":   {1, 5},
		"legacy bad varints": {1, 0x80, 0x80},
		"legacy count over":  binary.AppendUvarint([]byte{1, 5}, maxCount+1),
		"legacy sum over":    binary.AppendUvarint(append(binary.AppendUvarint([]byte{2, 5}, maxCount/2+1), 6), maxCount/2+1),
		"count over":         sketchRecord(maxCount+1, sketch(func(s *ddsketch.DDSketch) { s.AddWithCount(100, maxCount); s.Add(1000) })),
	}
	for name, b := range tests {
		var h Histogram
		h.Record(time.Second)
		if _, err := h.Decode(b); !errors.Is(err, errCorrupt) {
			t.Errorf("%s (%x): err = %v, want errCorrupt", name, b, err)
		}
		if h.Count() != 1 {
			t.Errorf("%s: the histogram changed to %d latencies", name, h.Count())
		}
	}
}

// FuzzHistogramDecode checks that decode never panics nor grows a
// histogram past its bounds, and that whatever it accepts survives an
// encoding and decoding unchanged.
func FuzzHistogramDecode(f *testing.F) {
	legacy, _ := hex.DecodeString(legacyMinute)
	f.Add(legacy)
	f.Add([]byte{0})
	var h Histogram
	for _, d := range []time.Duration{time.Millisecond, time.Millisecond, 3 * time.Second, time.Hour} {
		h.Record(d)
	}
	f.Add(h.AppendBinary(nil))
	for range 100 {
		h.Record(50 * time.Millisecond)
	}
	f.Add(h.AppendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Histogram
		rest, err := h.Decode(b)
		if err != nil {
			if h.Count() != 0 {
				t.Fatalf("failed decode left %d latencies", h.Count())
			}
			return
		}
		if len(rest) > len(b) {
			t.Fatalf("rest of %d bytes out of %d", len(rest), len(b))
		}
		if h.Count() == 0 {
			return
		}
		ps := h.s.GetPositiveValueStore()
		if lo, _ := ps.MinIndex(); lo < minIndex {
			t.Fatalf("bucket %d below %d", lo, minIndex)
		}
		if hi, _ := ps.MaxIndex(); hi > maxIndex {
			t.Fatalf("bucket %d above %d", hi, maxIndex)
		}
		var again Histogram
		if rest, err := again.Decode(h.AppendBinary(nil)); err != nil || len(rest) != 0 {
			t.Fatalf("decode of the re-encoding: %v, %d bytes left", err, len(rest))
		}
		if again.Count() != h.Count() {
			t.Fatalf("re-encoded Count = %d, want %d", again.Count(), h.Count())
		}
		for _, q := range testQuantiles {
			if again.Quantile(q) != h.Quantile(q) {
				t.Fatalf("re-encoded q%v = %v, want %v", q, again.Quantile(q), h.Quantile(q))
			}
		}
	})
}
