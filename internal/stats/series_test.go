package stats

import (
	"testing"
	"time"

	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// TestSeries checks that a series cuts a range into steps whose counts add
// up to the overview of the same range, with empty steps in between.
func TestSeries(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	s := openAt(t, now)
	report := func(ago time.Duration, end delivery.End, attempts int, latency time.Duration) {
		recv := now.Add(-ago)
		s.Observe(delivery.Report{
			Queue: jobstore.Queue{Source: "s", Destination: "d"},
			Job:   &jobstore.Job{Attempts: attempts, Event: event.Event{MessageID: "m", ReceivedAt: recv}},
			End:   end, At: recv.Add(latency),
		})
	}
	// 12:00: three delivered first try; 11:55: one failed, one delivered
	// on retry; 11:10: outside a 30 minute range.
	for range 3 {
		report(0, delivery.EndDelivered, 1, 40*time.Millisecond)
	}
	report(5*time.Minute, delivery.EndFailed, 1, 0)
	report(5*time.Minute, delivery.EndDelivered, 2, 3*time.Second)
	report(50*time.Minute, delivery.EndDelivered, 1, time.Millisecond)

	f := Filter{From: now.Add(-30 * time.Minute), To: now}
	tests := []struct {
		step   time.Duration
		points int
	}{
		{time.Minute, 31},     // 11:30 .. 12:00, the partial minute included
		{5 * time.Minute, 7},  // 11:30, 11:35, .. 12:00
		{time.Hour, 2},        // 11:00 and 12:00
		{7 * time.Minute, 6},  // boundaries on multiples of 7 minutes since the epoch
		{30 * time.Minute, 2}, // 11:30 and 12:00
	}
	o, err := s.Overview(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		sr, err := s.Series(f, tt.step)
		if err != nil {
			t.Fatalf("step %v: %v", tt.step, err)
		}
		if len(sr.Points) != tt.points {
			t.Errorf("step %v: %d points, want %d", tt.step, len(sr.Points), tt.points)
		}
		var sum Counts
		for i, p := range sr.Points {
			sum.add(&p.Counts)
			if i > 0 && p.At.Sub(sr.Points[i-1].At) != tt.step {
				t.Errorf("step %v: point %d at %v follows %v", tt.step, i, p.At, sr.Points[i-1].At)
			}
		}
		if sum != o.Counts {
			t.Errorf("step %v: points sum to %+v, overview has %+v", tt.step, sum, o.Counts)
		}
		if sr.Points[0].At.After(f.From) || !sr.Points[len(sr.Points)-1].At.Add(tt.step).After(f.To.Add(-time.Minute)) {
			t.Errorf("step %v: points from %v to %v do not cover %v..%v", tt.step, sr.Points[0].At, sr.Points[len(sr.Points)-1].At, f.From, f.To)
		}
	}
	sr, _ := s.Series(f, time.Minute)
	lastP := sr.Points[len(sr.Points)-1]
	if lastP.DeliveredFirst != 3 || lastP.Latency.Count != 3 || lastP.Latency.P95 < 39 || lastP.Latency.P95 > 41 {
		t.Errorf("12:00 = %+v", lastP)
	}
	if p := sr.Points[len(sr.Points)-6]; p.Failed != 1 || p.DeliveredRetry != 1 {
		t.Errorf("11:55 = %+v", p)
	}

	for _, bad := range []time.Duration{0, 30 * time.Second, 90 * time.Second} {
		if _, err := s.Series(f, bad); err == nil {
			t.Errorf("step %v: no error", bad)
		}
	}
	if _, err := s.Series(Filter{From: now.Add(-8 * 24 * time.Hour), To: now}, time.Minute); err == nil {
		t.Error("8 days of minutes: no error")
	}
}
