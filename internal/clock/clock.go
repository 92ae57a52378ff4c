// Package clock lets the code that decides retries, backoff, pauses and
// windows take its time from outside, so tests drive time instead of
// sleeping.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	// NewTimer returns a stopped timer.
	NewTimer() Timer
}

// Timer is the part of time.Timer that fanout uses.
type Timer interface {
	C() <-chan time.Time
	// Set makes the timer fire at t, at once if t has passed. Taking an
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

// Fake is a clock that moves only when Advance is called. The zero value is
// not usable; use NewFake.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock set to start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the clock forward by d and fires every timer that is due,
// earliest first.
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
