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
	// before this time. It replaces any pause the queue had.
	PauseUntil time.Time
	// Throttled says the destination pushed back on the queue; the queue
	// counts it for visibility.
	Throttled bool
	// Circuit is what the request says about the destination's health.
	Circuit circuitStep
	// Limit is the step of the queue's adaptive concurrency (AIMD).
	Limit limitStep
	// Jobs[i] is what becomes of the job that results[i] is about.
	Jobs []jobStep
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
)

// jobStep is what becomes of one job after its attempt.
type jobStep struct {
	// End is how the attempt left the job: ended (delivered, failed,
	// unsupported) or EndRetrying. A retrying job whose retry window is over
	// is archived instead; that is the scheduler's to see.
	End End
	// Requeue sends a retrying job back to the head of its queue, in order,
	// without a trip through the retry set: the verdict pauses the queue,
	// which is wait enough. A retrying job not requeued waits Backoff in
	// the retry set.
	Requeue bool
}

// decide says what the results of one request mean, from each result's
// classification by the integration (its Outcome, StatusCode and
// RetryAfter), never from the raw response. It is the one place the
// delivery rules live:
//
//   - A retryable 429 throttles the queue: it pauses for the longest
//     RetryAfter of the request's 429s (DefaultRetryAfter when none says,
//     at most MaxRetryAfter), its concurrency halves, and its 429'd jobs go
//     back to its head.
//   - A retryable timeout, connection error (status 0) or 5xx is a server
//     failure: the destination's circuit counts it unless another result
//     of the request reached the destination, and the queue's concurrency
//     halves.
//   - A delivered or rejected result reached a working destination: the
//     circuit closes.
//   - Otherwise the queue's concurrency grows.
//
// now is when the request completed; results are in the order of its jobs.
func decide(now time.Time, results []destinations.SendResult) verdict {
	v := verdict{Jobs: make([]jobStep, len(results))}
	throttled, serverFail, reached := false, false, false
	var retryAfter time.Duration
	for i := range results {
		r := &results[i].Result
		switch {
		case r.Outcome == destinations.Retryable && r.StatusCode == http.StatusTooManyRequests:
			throttled = true
			retryAfter = max(retryAfter, r.RetryAfter)
		case r.Outcome == destinations.Retryable && (r.StatusCode == 0 || r.StatusCode >= 500):
			serverFail = true
		case r.Outcome == destinations.Delivered || r.Outcome == destinations.Rejected:
			reached = true
		}
		switch r.Outcome {
		case destinations.Delivered:
			v.Jobs[i].End = EndDelivered
		case destinations.Rejected:
			v.Jobs[i].End = EndFailed
		case destinations.Unsupported:
			v.Jobs[i].End = EndUnsupported
		default:
			v.Jobs[i] = jobStep{End: EndRetrying, Requeue: r.StatusCode == http.StatusTooManyRequests}
		}
	}
	switch {
	case reached:
		v.Circuit = circuitSuccess
	case serverFail:
		v.Circuit = circuitFailure
	}
	switch {
	case throttled:
		if retryAfter <= 0 {
			retryAfter = DefaultRetryAfter
		}
		v.PauseUntil = now.Add(min(retryAfter, MaxRetryAfter))
		v.Throttled = true
		v.Limit = limitDecrease
	case serverFail:
		v.Limit = limitDecrease
	default:
		v.Limit = limitIncrease
	}
	return v
}
