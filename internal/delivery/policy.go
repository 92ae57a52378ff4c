package delivery

import "time"

// Backoff schedule. Attempt n (1-based) of a job that failed with a
// retryable error waits a random duration in [d/2, d), where
// d = min(BackoffBase * 2^(n-1), BackoffCap):
//
//	attempt  1    2    3    4     5     6     7      8      9      10     11+
//	d        2s   4s   8s   16s   32s   64s   128s   256s   512s   1024s  1800s
//
// so a job is tried about 16 times in the default 4 h retry window. The
// randomness spreads the retries of a burst of failures so that they do not
// all come back at once.
const (
	BackoffBase = 2 * time.Second
	BackoffCap  = 30 * time.Minute
)

// Backoff returns the wait before the next try of a job that has failed
// attempts times; r is a random number in [0, 1).
func Backoff(attempts int, r float64) time.Duration {
	return exponential(BackoffBase, BackoffCap, attempts, r)
}

// exponential returns a random duration in [d/2, d), where d =
// min(base * 2^(n-1), limit) and n is at least 1; r is a random number in
// [0, 1). Past n = 20 d is limit, so that the shift cannot overflow.
func exponential(base, limit time.Duration, n int, r float64) time.Duration {
	d := limit
	if n < 1 {
		n = 1
	}
	if n <= 20 {
		if e := base << (n - 1); e < d {
			d = e
		}
	}
	return d/2 + time.Duration(r*float64(d/2))
}

// ThrottleBackoff returns how long a queue pauses after the streak-th 429
// in a row that did not say how long to wait (streak from 1): a random
// duration in [d/2, d), where d = min(ThrottleBackoffBase * 2^(streak-1),
// ThrottleBackoffCap), so 0.5-1 s, 1-2 s, 2-4 s, ... up to 30-60 s. The
// ranges do not overlap, so each wait of a streak is longer than the last
// until the cap. r is a random number in [0, 1).
func ThrottleBackoff(streak int, r float64) time.Duration {
	return exponential(ThrottleBackoffBase, ThrottleBackoffCap, streak, r)
}

// Waits a destination asks for, and those of 429s that do not say.
//
// ThrottleBackoffBase and ThrottleBackoffCap bound ThrottleBackoff.
// MaxRetryAfter caps the wait a result may ask for (Retry-After or a
// documented schedule), so a mistaken or hostile header cannot stop a
// queue for good. MaxQuotaWait caps a quota's pause: a quota resets within
// a day. DefaultHoldWait is how long a held user waits when the
// destination did not say.
const (
	ThrottleBackoffBase = time.Second
	ThrottleBackoffCap  = time.Minute
	MaxRetryAfter       = time.Hour
	MaxQuotaWait        = 25 * time.Hour
	DefaultHoldWait     = time.Second
)

// Circuit breaking: after CircuitThreshold consecutive failed attempts
// (transport errors and 5xx) across a destination, its circuit opens. While
// open, no queue of the destination is dispatched except a single probe
// (one request), sent CircuitProbeMin after opening, then at intervals
// that double up to CircuitProbeMax while probes keep failing, each
// randomized in [interval/2, interval). Any success closes it. The cap is
// low so that a destination that comes back is noticed within seconds (5 s
// at most, counting the probe's own request), and a probe costs one request
// every few seconds however long the destination stays down.
const (
	CircuitThreshold = 10
	CircuitProbeMin  = time.Second
	CircuitProbeMax  = 4 * time.Second
)

// circuit is one destination's circuit breaker. The zero value is closed.
type circuit struct {
	fails    int
	open     bool
	probing  bool // a probe is in flight
	interval time.Duration
	probeAt  time.Time
}

// failure records a failed attempt. A failed probe doubles the interval;
// the next probe comes after a random part of it, from half to all (r is
// a random number in [0, 1)).
func (c *circuit) failure(now time.Time, probe bool, r float64) {
	c.fails++
	switch {
	case c.open && probe:
		c.probing = false
		c.interval = min(2*c.interval, CircuitProbeMax)
		c.probeAt = now.Add(c.interval/2 + time.Duration(r*float64(c.interval/2)))
	case !c.open && c.fails >= CircuitThreshold:
		c.open = true
		c.interval = CircuitProbeMin
		c.probeAt = now.Add(c.interval)
	}
}

// success records an attempt that reached a working destination (delivered
// or rejected); it closes the circuit.
func (c *circuit) success() {
	*c = circuit{}
}

// allow reports whether a dispatch may go out now, and whether it is the
// probe of an open circuit.
func (c *circuit) allow(now time.Time) (ok, probe bool) {
	if !c.open {
		return true, false
	}
	if c.probing || now.Before(c.probeAt) {
		return false, false
	}
	return true, true
}

// Concurrency adapts per queue by additive increase, multiplicative
// decrease (AIMD), as TCP does: every completed request that was not
// throttled adds 1/limit (about +1 per round of requests), and a 429, a
// wait or a timeout halves the limit, down to 1, once per round: the
// requests already in flight when the limit was cut answer for the old
// limit, not the new one (queue.decrease). Near the limit of its last
// cut, the increase slows (queue.increase). A queue so finds the concurrency its
// destination accepts instead of hammering it.
func aimdDecrease(limit float64) float64 {
	return max(limit/2, 1)
}
