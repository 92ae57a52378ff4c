package stats

import (
	"errors"
	"fmt"
	"time"

	"github.com/fanout/fanout/internal/latency"
)

// ErrStep wraps the error Series returns for a step it cannot use.
var ErrStep = errors.New("bad step")

// MaxSeriesPoints bounds the points of one Series: 7 days of minutes.
const MaxSeriesPoints = 7 * 24 * 60

// Point is one step of a Series: what became of the events received in
// [At, At+step), and the latency of those delivered.
type Point struct {
	At time.Time `json:"at"`
	Counts
	Latency Latency `json:"latency"`
}

// Series is a range cut into equal steps, for trend charts.
type Series struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Step is the length of each point, in seconds.
	Step int64 `json:"step_seconds"`
	// Points cover the range without gaps, oldest first; a step without
	// traffic has zero counts.
	Points []Point `json:"points"`
}

// Series sums the minutes of f into steps of step, a whole number of
// minutes. The first step starts at f.From rounded down to a multiple of
// step (since the Unix epoch), so that the points of a range that slides
// with the clock stay on the same boundaries.
func (s *Stats) Series(f Filter, step time.Duration) (Series, error) {
	if step < time.Minute || step%time.Minute != 0 {
		return Series{}, fmt.Errorf("%w: expected a whole number of minutes, found %v", ErrStep, step)
	}
	stepMin := int64(step / time.Minute)
	first := minuteOf(f.From) / stepMin * stepMin
	last := minuteOf(f.To)
	if !f.To.Equal(time.Unix(last*60, 0)) {
		last++ // a partial minute at the end is included, as in scan
	}
	n := (last - first + stepMin - 1) / stepMin
	if n > MaxSeriesPoints {
		return Series{}, fmt.Errorf("%w: %v cuts the range into %d points, more than %d; choose a longer step", ErrStep, step, n, MaxSeriesPoints)
	}
	out := Series{From: f.From, To: f.To, Step: int64(step / time.Second), Points: make([]Point, n)}
	hists := make([]latency.Histogram, n)
	err := s.scan(f, func(p Pair, minute int64, b *bucket) {
		if p.Destination == "" {
			return
		}
		i := (minute - first) / stepMin
		if i < 0 || i >= n {
			return
		}
		out.Points[i].Counts.add(&b.c)
		hists[i].Merge(&b.latency)
	})
	if err != nil {
		return Series{}, err
	}
	for i := range out.Points {
		out.Points[i].At = time.Unix((first+int64(i)*stepMin)*60, 0).UTC()
		out.Points[i].Latency = latencyOf(&hists[i])
	}
	return out, nil
}
