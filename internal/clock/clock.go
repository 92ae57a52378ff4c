// Package clock lets the code that decides retries, backoff, pauses and
// windows take its time from outside, so tests drive time instead of
// sleeping.
//
// A clock tells two times. Now is the wall clock: what a person or another
// machine would call the time, which an administrator or NTP may set
// backwards or forwards. Steady never jumps: it reads like the wall clock
// did when the process started, and moves only by the monotonic time
// elapsed since. Intervals (a pause, a backoff, a timer) are measured on
// Steady; times that mean something outside the process (an event's
// receipt, an HTTP date, midnight UTC) on Now.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	// Now returns the wall time, which may jump.
	Now() time.Time
	// Steady returns the time on a clock that never jumps: the wall time
	// of the process's start plus the monotonic time elapsed since.
	Steady() time.Time
	// NewTimer returns a stopped timer, which fires on the Steady clock.
	NewTimer() Timer
}

// Timer is the part of time.Timer that fanout uses.
type Timer interface {
	C() <-chan time.Time
	// Set makes the timer fire at t, a Steady time, at once if t has
	// passed. Taking an
	// absolute time, not a duration, means a fake clock that moves between
	// the caller reading the time and setting the timer cannot make it miss.
	Set(t time.Time)
	Stop()
}

// Real is the wall clock.
type Real struct{}

var _ Clock = Real{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// epoch anchors Real's Steady clock.
var epoch = time.Now()

// Steady returns the wall time of the process's start plus the monotonic
// time elapsed since. The result carries a monotonic reading too, so that
// comparisons and time.Until between Steady times use it.
func (Real) Steady() time.Time { return epoch.Add(time.Since(epoch)) }

// NewTimer returns a stopped time.Timer.
func (Real) NewTimer() Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return realTimer{t}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Set(t time.Time)     { r.t.Reset(time.Until(t)) }
func (r realTimer) Stop()               { r.t.Stop() }

// Fake is a clock that moves only when Advance or Jump is called. The zero
// value is not usable; use NewFake.
type Fake struct {
	mu sync.Mutex
	// now is the Steady time; the wall time is now + skew.
	now    time.Time
	skew   time.Duration
	timers []*fakeTimer
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock set to start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now returns the fake wall time: start, plus every Advance and Jump.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now.Add(f.skew)
}

// Steady returns the fake steady time: start plus every Advance.
func (f *Fake) Steady() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Jump sets the wall clock forwards (d > 0) or backwards without moving
// the steady clock, as an administrator or NTP stepping the clock does.
// No timer fires.
func (f *Fake) Jump(d time.Duration) {
	f.mu.Lock()
	f.skew += d
	f.mu.Unlock()
}

// Advance moves both clocks forward by d and fires every timer that is
// due, earliest first.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	now := f.now
	var due []*fakeTimer
	for _, t := range f.timers {
		if t.armed && !t.at.After(now) {
			t.armed = false
			due = append(due, t)
		}
	}
	f.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		select {
		case t.c <- now:
		default:
		}
	}
}

// NewTimer returns a stopped timer of the fake clock.
func (f *Fake) NewTimer() Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	f.mu.Lock()
	f.timers = append(f.timers, t)
	f.mu.Unlock()
	return t
}

type fakeTimer struct {
	f     *Fake
	c     chan time.Time
	at    time.Time
	armed bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Set(at time.Time) {
	t.f.mu.Lock()
	t.at = at
	t.armed = true
	fire := !at.After(t.f.now)
	if fire {
		t.armed = false
	}
	now := t.f.now
	t.f.mu.Unlock()
	if fire {
		select {
		case t.c <- now:
		default:
		}
	}
}

func (t *fakeTimer) Stop() {
	t.f.mu.Lock()
	t.armed = false
	t.f.mu.Unlock()
}
