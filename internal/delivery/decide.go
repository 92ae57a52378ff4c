package delivery

import (
	"net/http"
	"time"

	"github.com/fanout/fanout/destinations"
)

// verdict is what the results of one request mean for their queue, their
// destination and each of their jobs. decide makes it; the scheduler applies
// it (complete).
type verdict struct {
	// PauseUntil, when not zero, pauses the queue: it dispatches nothing
	// before this time. The scheduler keeps the later of it and any pause
	// the queue already had.
	PauseUntil time.Time
	// Pause says why the queue pauses, for the destination's state.
	Pause pauseReason
	// Throttled says the destination answered 429; the queue counts it
	// for visibility.
	Throttled bool
	// Streak is the queue's count of 429s without a wait in a row after
	// this request, which the next one's backoff grows from.
	Streak int
	// Circuit is what the request says about the destination's health.
	Circuit circuitStep
	// Limit is the step of the queue's adaptive concurrency (AIMD).
	Limit limitStep
	// Jobs[i] is what becomes of the job that results[i] is about.
	Jobs []jobStep
}

// pauseReason says why a queue is paused.
type pauseReason int

const (
	pauseNone      pauseReason = iota
	pauseWait                  // the destination asked for a wait (Retry-After, a documented schedule)
	pauseThrottled             // a 429 without a wait: exponential backoff
	pauseQuota                 // a quota is spent until it resets
	pauseHolds                 // too many users held: the whole queue waits instead
)

func (p pauseReason) String() string {
	return [...]string{"", "retry-after", "throttled", "quota", "holds-full"}[p]
}

// circuitStep is a request's evidence for the destination's circuit.
type circuitStep int

const (
	circuitNone    circuitStep = iota // says nothing of the destination's health
	circuitSuccess                    // the destination works: close the circuit
	circuitFailure                    // one more consecutive failure
)

// limitStep moves a queue's AIMD concurrency limit.
type limitStep int

const (
	limitIncrease limitStep = iota // additive increase, up to the destination's concurrency
	limitDecrease                  // multiplicative decrease, down to 1
	limitKeep                      // neither: the answer says nothing of the queue's concurrency
)

// jobStep is what becomes of one job after its attempt.
type jobStep struct {
	// End is how the attempt left the job: ended (delivered, failed,
	// unsupported) or EndRetrying. A retrying job whose retry window is over
	// is archived instead; that is the scheduler's to see.
	End End
	// Requeue sends a retrying job back to the head of its queue, in order,
	// without a trip through the retry set: either the verdict pauses the
	// queue, which is wait enough, or the job was not at fault (the rest
	// of a batch in which one user was held) and goes again at once. A
	// retrying job not requeued, split or held waits Backoff in the retry
	// set.
	Requeue bool
	// Split sends the job back to the head of its queue with the others
	// of its request marked Split, to go out in two halves.
	Split bool
	// HoldUntil, when not zero, holds the job, and its queue's later jobs
	// with the same hold key (Hold), until then; the rest of the queue
	// goes on.
	HoldUntil time.Time
	Hold      string
	// Unattempted says the attempt does not count against the job (a
	// quota answer): its Attempts stay as they were.
	Unattempted bool
	// DuplicateRisk says the job is retried after an ambiguous failure
	// (a timeout or 5xx on a batch) of an API that does not deduplicate:
	// the destination may have taken it already.
	DuplicateRisk bool
	// Reason, when set, replaces the result's reason (a split event
	// found alone).
	Reason string
}

// facts are what decide knows besides the results.
type facts struct {
	// Now is the Steady time the request completed; every time in the
	// verdict is a Steady time.
	Now time.Time
	// Wall is the wall time then, which a quota's reset (midnight UTC) is
	// measured on.
	Wall time.Time
	// Streak is the queue's count of 429s without a wait in a row before
	// this request.
	Streak int
	// Jitter is a random number in [0, 1) that spreads backoffs.
	Jitter float64
	// Deduplicates is the integration's Deduplicates.
	Deduplicates bool
}

// decide says what the results of one request mean, from each result's
// classification by the integration (its Outcome, StatusCode, RetryAfter,
// Quota, Split and Hold), never from the raw response. It is the one place
// the delivery rules live. For a retryable result, the first that applies:
//
//   - Quota: the queue pauses until RetryAfter from now or, without one,
//     until the next midnight UTC (at most MaxQuotaWait); the job goes
//     back to the queue's head and the attempt does not count.
//   - Split, or a 413 (on a retryable or rejected result): the job goes
//     back to the head with the others of its request marked Split, to be
//     sent in halves; alone in its request, it is rejected with its
//     reason.
//   - Hold: only the job waits, RetryAfter or DefaultHoldWait, and the
//     queue's later jobs of the same user wait behind it. The request's
//     other retryable jobs that carry no wait of their own go back to the
//     head at once: they were sent again, not failed.
//   - A wait (RetryAfter, on any status): the queue pauses that long (at
//     most MaxRetryAfter) and the job goes back to its head.
//   - A 429 without a wait: the queue pauses ThrottleBackoff of its
//     streak of such 429s, and the job goes back to its head.
//   - Otherwise the job waits Backoff in the retry set. A timeout or
//     connection error (status 0) or 5xx is a server failure; on a batch
//     of more than one event of an API that does not deduplicate, the
//     retry risks a duplicate and is counted as such.
//
// For the queue and the destination:
//
//   - A delivered, rejected, split or held result reached a working
//     destination: the circuit closes. Otherwise a server failure, with a
//     wait or without, counts toward opening it.
//   - Any wait, 429 or server failure halves the queue's concurrency (the
//     scheduler halves it once per pause, see queue.decrease); a wait is
//     never counted as a success. A quota, split or hold leaves it be.
//     Otherwise it grows.
//   - The 429 streak ends with a result that reached the destination.
//
// Results are in the order of the request's jobs.
func decide(f facts, results []destinations.SendResult) verdict {
	v := verdict{Jobs: make([]jobStep, len(results)), Streak: f.Streak}
	var (
		reached, serverFail, waited, throttled, quota, held, bare, split bool
		wait, quotaWait                                                  time.Duration
	)
	for i := range results {
		r := &results[i].Result
		step := &v.Jobs[i]
		// A 413 is about the request as a whole, whatever the integration
		// made of it: the batch is split as if it had said so.
		isSplit := (r.Split || r.StatusCode == http.StatusRequestEntityTooLarge) &&
			(r.Outcome == destinations.Retryable || r.Outcome == destinations.Rejected)
		switch {
		case r.Outcome == destinations.Delivered:
			step.End = EndDelivered
			reached = true
		case r.Outcome == destinations.Unsupported:
			step.End = EndUnsupported
		case isSplit && len(results) == 1:
			step.End = EndFailed
			step.Reason = "the destination refused this event even when sent alone: " + r.Reason
			reached = true
		case isSplit:
			step.End, step.Split = EndRetrying, true
			reached, split = true, true
		case r.Outcome == destinations.Rejected:
			step.End = EndFailed
			reached = true
		case r.Quota && r.Hold == "":
			step.End, step.Requeue, step.Unattempted = EndRetrying, true, true
			quota = true
			d := r.RetryAfter
			if d <= 0 {
				d = untilMidnight(f.Wall)
			}
			quotaWait = max(quotaWait, min(d, MaxQuotaWait))
		case r.Hold != "":
			d := r.RetryAfter
			if d <= 0 {
				d = DefaultHoldWait
			}
			step.End, step.Hold, step.HoldUntil = EndRetrying, r.Hold, f.Now.Add(min(d, MaxRetryAfter))
			// A quota one user spent (Amplitude's exceeded_daily_quota_users)
			// holds that user alone, and costs no attempt.
			step.Unattempted = r.Quota
			held, reached = true, true
		default:
			step.End = EndRetrying
			if r.StatusCode == 0 || r.StatusCode >= 500 {
				serverFail = true
			}
			if r.StatusCode == http.StatusTooManyRequests {
				throttled = true
			}
			switch {
			case r.RetryAfter > 0:
				step.Requeue = true
				waited = true
				wait = max(wait, min(r.RetryAfter, MaxRetryAfter))
			case r.StatusCode == http.StatusTooManyRequests:
				step.Requeue = true
				bare = true
			case r.StatusCode == 0 || r.StatusCode >= 500:
				// Only a request that reached the network can have been
				// taken: a failed Transform has no request.
				if !f.Deduplicates && results[i].Request != nil && len(results[i].Request.Events) > 1 {
					step.DuplicateRisk = true
				}
			}
		}
	}
	// The rest of a request in which a user was held goes again at once,
	// unless the destination asked it to wait: its 429s without a wait
	// are the held user's, not the queue's.
	if held && !waited && !quota {
		bare, throttled = false, false
		for i := range v.Jobs {
			if s := &v.Jobs[i]; s.End == EndRetrying && s.HoldUntil.IsZero() && !s.Split {
				s.Requeue, s.DuplicateRisk = true, false
			}
		}
	}

	switch {
	case reached:
		v.Circuit = circuitSuccess
	case serverFail:
		v.Circuit = circuitFailure
	}
	if throttled {
		v.Throttled = true
	}
	if bare {
		v.Streak = f.Streak + 1
	} else if reached {
		v.Streak = 0
	}
	pause := func(until time.Time, why pauseReason) {
		if until.After(v.PauseUntil) {
			v.PauseUntil, v.Pause = until, why
		}
	}
	if waited {
		pause(f.Now.Add(wait), pauseWait)
	}
	if bare {
		pause(f.Now.Add(ThrottleBackoff(v.Streak, f.Jitter)), pauseThrottled)
	}
	if quota {
		pause(f.Now.Add(quotaWait), pauseQuota)
	}
	switch {
	case waited || bare || serverFail:
		v.Limit = limitDecrease
	case quota || held || split:
		v.Limit = limitKeep
	default:
		v.Limit = limitIncrease
	}
	return v
}

// untilMidnight returns how long from wall until the next midnight UTC,
// when daily quotas reset.
func untilMidnight(wall time.Time) time.Duration {
	u := wall.UTC()
	next := time.Date(u.Year(), u.Month(), u.Day()+1, 0, 0, 0, 0, time.UTC)
	return next.Sub(u)
}
