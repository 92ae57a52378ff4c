package bench

import (
	"testing"
	"time"
)

// TestSoakChecks holds the growth rule: warm-up samples left out, the last
// third's max against the first third's max plus the tolerance and slack.
func TestSoakChecks(t *testing.T) {
	const mb = 1 << 20
	samples := func(rss ...int64) []SoakSample {
		out := make([]SoakSample, len(rss))
		for i, r := range rss {
			out[i] = SoakSample{AtSec: float64(i+1) * 60, RSSBytes: r * mb, Depth: map[string]int64{}}
		}
		return out
	}
	rssCheck := func(cs []SoakCheck) SoakCheck {
		for _, c := range cs {
			if c.Measure == "rss_bytes" {
				return c
			}
		}
		t.Fatal("no rss_bytes check")
		return SoakCheck{}
	}
	tests := []struct {
		name   string
		rss    []int64
		warmup time.Duration
		grew   bool
		first  float64 // MB
	}{
		{"flat", []int64{50, 100, 101, 99, 100, 102, 100}, time.Minute, false, 101},
		{"warm-up growth left out", []int64{10, 100, 100, 100, 100, 100, 100}, time.Minute, false, 100},
		{"within tolerance and slack", []int64{50, 100, 110, 120, 130, 140, 169}, time.Minute, false, 110},
		{"leak", []int64{50, 100, 110, 120, 130, 140, 171}, time.Minute, true, 110},
		{"longer warm-up", []int64{10, 20, 30, 100, 100, 100, 100, 100, 100}, 3 * time.Minute, false, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rssCheck(soakChecks(samples(tt.rss...), tt.warmup))
			if c.Grew != tt.grew || c.FirstMax != tt.first*mb {
				t.Errorf("grew %v, first third's max %.0f MB; want %v, %.0f MB (%+v)", c.Grew, c.FirstMax/mb, tt.grew, tt.first, c)
			}
		})
	}
	if cs := soakChecks(samples(1, 2, 3), time.Minute); cs != nil {
		t.Errorf("judged 2 samples after warm-up: %+v", cs)
	}
}
