package delivery

import (
	"reflect"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// The wall clock reads 21:00 UTC, three hours before a daily quota
	// resets, and an hour off the steady clock: the quota's pause is
	// measured on the wall, applied on the steady clock.
	wall := time.Date(2026, 1, 2, 21, 0, 0, 0, time.UTC)
	f := facts{Now: now, Wall: wall, Jitter: 0.5}
	res := func(o destinations.Outcome, status int, retryAfter time.Duration) destinations.SendResult {
		return destinations.SendResult{Result: destinations.Result{Outcome: o, StatusCode: status, RetryAfter: retryAfter}}
	}
	batch := &destinations.Request{Events: []int{0, 1}}
	inBatch := func(r destinations.SendResult) destinations.SendResult { r.Request = batch; return r }
	alone := func(r destinations.SendResult) destinations.SendResult {
		r.Request = &destinations.Request{Events: []int{0}}
		return r
	}
	with := func(r destinations.SendResult, set func(*destinations.Result)) destinations.SendResult {
		set(&r.Result)
		return r
	}
	var (
		delivered   = res(destinations.Delivered, 200, 0)
		rejected    = res(destinations.Rejected, 400, 0)
		unsupported = res(destinations.Unsupported, 0, 0)
		throttled   = res(destinations.Retryable, 429, 0)
		timeout     = res(destinations.Retryable, 0, 0)
		unavailable = res(destinations.Retryable, 503, 0)
		conflict    = res(destinations.Retryable, 409, 0) // retryable by the integration's say
		quota       = with(res(destinations.Retryable, 429, 0), func(r *destinations.Result) { r.Quota = true })
		tooLarge    = with(res(destinations.Rejected, 413, 0), func(r *destinations.Result) { r.Split = true; r.Reason = "HTTP 413" })
		rejected413 = with(res(destinations.Rejected, 413, 0), func(r *destinations.Result) { r.Reason = "HTTP 413 Request Entity Too Large" })
		heldUser    = with(res(destinations.Retryable, 429, 0), func(r *destinations.Result) { r.Hold = "u1" })
		// The rest of a batch a user was held in: not sent, not failed.
		notSent = res(destinations.Retryable, 429, 0)
	)
	var (
		done     = jobStep{End: EndDelivered}
		failed   = jobStep{End: EndFailed}
		skipped  = jobStep{End: EndUnsupported}
		backoff  = jobStep{End: EndRetrying}
		requeued = jobStep{End: EndRetrying, Requeue: true}
		split    = jobStep{End: EndRetrying, Split: true}
		unburnt  = jobStep{End: EndRetrying, Requeue: true, Unattempted: true}
		risky    = jobStep{End: EndRetrying, DuplicateRisk: true}
	)
	heldFor := func(d time.Duration) jobStep {
		return jobStep{End: EndRetrying, Hold: "u1", HoldUntil: now.Add(d)}
	}
	// ThrottleBackoff(1, 0.5) = 0.75 s, (4, 0.5) = 6 s.
	first, fourth := ThrottleBackoff(1, 0.5), ThrottleBackoff(4, 0.5)
	tests := []struct {
		name    string
		streak  int  // the queue's 429s without a wait in a row before
		dedup   bool // the integration's Deduplicates
		results []destinations.SendResult
		want    verdict
	}{
		{"delivered", 0, false, []destinations.SendResult{delivered},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{done}}},
		{"rejected reached a working destination", 0, false, []destinations.SendResult{rejected},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{failed}}},
		{"unsupported says nothing of the destination", 0, false, []destinations.SendResult{unsupported},
			verdict{Circuit: circuitNone, Limit: limitIncrease, Jobs: []jobStep{skipped}}},

		// Waits: one rule for all statuses.
		{"429 with Retry-After pauses for it", 0, false, []destinations.SendResult{res(destinations.Retryable, 429, 30*time.Second)},
			verdict{PauseUntil: now.Add(30 * time.Second), Pause: pauseWait, Throttled: true, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"503 with Retry-After pauses for it and counts for the circuit", 0, false, []destinations.SendResult{res(destinations.Retryable, 503, 5*time.Second)},
			verdict{PauseUntil: now.Add(5 * time.Second), Pause: pauseWait, Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"500 with Retry-After pauses for it", 0, false, []destinations.SendResult{res(destinations.Retryable, 500, 2*time.Second)},
			verdict{PauseUntil: now.Add(2 * time.Second), Pause: pauseWait, Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"408 with Retry-After pauses for it", 0, false, []destinations.SendResult{res(destinations.Retryable, 408, 3*time.Second)},
			verdict{PauseUntil: now.Add(3 * time.Second), Pause: pauseWait, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"a retryable 4xx with a wait from the body pauses for it", 0, false, []destinations.SendResult{res(destinations.Retryable, 409, 20*time.Second)},
			verdict{PauseUntil: now.Add(20 * time.Second), Pause: pauseWait, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"a wait on a 200 (a documented schedule in the body) pauses for it", 0, false, []destinations.SendResult{res(destinations.Retryable, 200, 10*time.Second)},
			verdict{PauseUntil: now.Add(10 * time.Second), Pause: pauseWait, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"a timeout with a wait pauses for it", 0, false, []destinations.SendResult{res(destinations.Retryable, 0, 4*time.Second)},
			verdict{PauseUntil: now.Add(4 * time.Second), Pause: pauseWait, Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"the longest wait of a batch wins", 0, false,
			[]destinations.SendResult{res(destinations.Retryable, 429, 5*time.Second), res(destinations.Retryable, 503, 20*time.Second), delivered},
			verdict{PauseUntil: now.Add(20 * time.Second), Pause: pauseWait, Throttled: true, Circuit: circuitSuccess, Limit: limitDecrease, Jobs: []jobStep{requeued, requeued, done}}},
		{"a wait is capped at MaxRetryAfter", 0, false, []destinations.SendResult{res(destinations.Retryable, 429, 24*time.Hour)},
			verdict{PauseUntil: now.Add(MaxRetryAfter), Pause: pauseWait, Throttled: true, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"a wait keeps the 429 streak", 3, false, []destinations.SendResult{res(destinations.Retryable, 429, time.Second)},
			verdict{PauseUntil: now.Add(time.Second), Pause: pauseWait, Throttled: true, Streak: 3, Limit: limitDecrease, Jobs: []jobStep{requeued}}},

		// 429 without a wait: exponential backoff per queue.
		{"a first 429 without a wait backs off ThrottleBackoff(1)", 0, false, []destinations.SendResult{throttled},
			verdict{PauseUntil: now.Add(first), Pause: pauseThrottled, Throttled: true, Streak: 1, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"the fourth 429 in a row backs off ThrottleBackoff(4)", 3, false, []destinations.SendResult{throttled},
			verdict{PauseUntil: now.Add(fourth), Pause: pauseThrottled, Throttled: true, Streak: 4, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"a delivery ends the streak", 5, false, []destinations.SendResult{delivered},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{done}}},
		{"a 429 beside a delivery: paused, circuit closed, streak grows", 0, false, []destinations.SendResult{delivered, throttled},
			verdict{PauseUntil: now.Add(first), Pause: pauseThrottled, Throttled: true, Streak: 1, Circuit: circuitSuccess, Limit: limitDecrease, Jobs: []jobStep{done, requeued}}},
		{"a 429 with a server failure: paused, and the circuit counts the failure", 0, false, []destinations.SendResult{throttled, timeout},
			verdict{PauseUntil: now.Add(first), Pause: pauseThrottled, Throttled: true, Streak: 1, Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{requeued, backoff}}},

		// Quotas.
		{"a quota without a wait pauses until midnight UTC and burns no attempt", 0, false, []destinations.SendResult{quota},
			verdict{PauseUntil: now.Add(3 * time.Hour), Pause: pauseQuota, Throttled: false, Limit: limitKeep, Jobs: []jobStep{unburnt}}},
		{"a quota with a wait pauses for it", 0, false, []destinations.SendResult{with(quota, func(r *destinations.Result) { r.RetryAfter = 90 * time.Minute })},
			verdict{PauseUntil: now.Add(90 * time.Minute), Pause: pauseQuota, Limit: limitKeep, Jobs: []jobStep{unburnt}}},
		{"a quota's wait is capped at MaxQuotaWait, not MaxRetryAfter", 0, false, []destinations.SendResult{with(quota, func(r *destinations.Result) { r.RetryAfter = 72 * time.Hour })},
			verdict{PauseUntil: now.Add(MaxQuotaWait), Pause: pauseQuota, Limit: limitKeep, Jobs: []jobStep{unburnt}}},

		// Splits.
		{"a 413 on a batch splits it", 0, false, []destinations.SendResult{tooLarge, tooLarge, tooLarge},
			verdict{Circuit: circuitSuccess, Limit: limitKeep, Jobs: []jobStep{split, split, split}}},
		{"a split event alone is rejected with the reason", 0, false, []destinations.SendResult{tooLarge},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{{End: EndFailed,
				Reason: "the destination refused this event even when sent alone: HTTP 413"}}}},
		{"a 413 splits a batch though the integration did not say Split", 0, false, []destinations.SendResult{rejected413, rejected413},
			verdict{Circuit: circuitSuccess, Limit: limitKeep, Jobs: []jobStep{split, split}}},
		{"a 413 alone is rejected", 0, false, []destinations.SendResult{rejected413},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{{End: EndFailed,
				Reason: "the destination refused this event even when sent alone: HTTP 413 Request Entity Too Large"}}}},
		{"a retryable split splits too", 0, false, []destinations.SendResult{with(conflict, func(r *destinations.Result) { r.Split = true }), delivered},
			verdict{Circuit: circuitSuccess, Limit: limitKeep, Jobs: []jobStep{split, done}}},

		// Holds.
		{"a held user waits alone; the rest of the batch goes again at once", 0, false, []destinations.SendResult{notSent, heldUser, delivered},
			verdict{Circuit: circuitSuccess, Limit: limitKeep, Jobs: []jobStep{requeued, heldFor(DefaultHoldWait), done}}},
		{"a held user waits its Retry-After", 0, false, []destinations.SendResult{with(heldUser, func(r *destinations.Result) { r.RetryAfter = time.Minute }), delivered},
			verdict{Circuit: circuitSuccess, Limit: limitKeep, Jobs: []jobStep{heldFor(time.Minute), done}}},
		{"a user's spent quota holds that user alone, costing no attempt", 0, false,
			[]destinations.SendResult{with(heldUser, func(r *destinations.Result) { r.Quota = true; r.RetryAfter = time.Hour }), delivered},
			verdict{Circuit: circuitSuccess, Limit: limitKeep, Jobs: []jobStep{func() jobStep { s := heldFor(time.Hour); s.Unattempted = true; return s }(), done}}},
		{"a hold beside a wait for the whole queue: the queue waits", 0, false,
			[]destinations.SendResult{heldUser, res(destinations.Retryable, 429, 10*time.Second)},
			verdict{PauseUntil: now.Add(10 * time.Second), Pause: pauseWait, Throttled: true, Circuit: circuitSuccess, Limit: limitDecrease,
				Jobs: []jobStep{heldFor(DefaultHoldWait), requeued}}},

		// Server failures and duplicates.
		{"timeout is a server failure", 0, false, []destinations.SendResult{timeout},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff}}},
		{"5xx is a server failure", 0, false, []destinations.SendResult{unavailable},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff}}},
		{"a 5xx on a batch of an API that does not deduplicate risks duplicates", 0, false, []destinations.SendResult{inBatch(unavailable), inBatch(unavailable)},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{risky, risky}}},
		{"a timeout on a batch risks duplicates", 0, false, []destinations.SendResult{inBatch(timeout), inBatch(timeout)},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{risky, risky}}},
		{"a 5xx on a batch of an API that deduplicates does not", 0, true, []destinations.SendResult{inBatch(unavailable), inBatch(unavailable)},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff, backoff}}},
		{"a 5xx on a request of one event does not", 0, false, []destinations.SendResult{alone(unavailable)},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff}}},
		{"a 429 on a batch does not", 0, false, []destinations.SendResult{inBatch(throttled), inBatch(throttled)},
			verdict{PauseUntil: now.Add(first), Pause: pauseThrottled, Throttled: true, Streak: 1, Limit: limitDecrease, Jobs: []jobStep{requeued, requeued}}},
		{"retryable 4xx other than 429 backs off and grows the limit", 0, false, []destinations.SendResult{conflict},
			verdict{Circuit: circuitNone, Limit: limitIncrease, Jobs: []jobStep{backoff}}},
		{"a result that reached the destination outweighs a server failure", 0, false, []destinations.SendResult{unavailable, delivered},
			verdict{Circuit: circuitSuccess, Limit: limitDecrease, Jobs: []jobStep{backoff, done}}},
		{"each job of a batch ends by its own result", 0, false, []destinations.SendResult{delivered, rejected, unsupported, conflict},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{done, failed, skipped, backoff}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := f
			f.Streak, f.Deduplicates = tt.streak, tt.dedup
			if got := decide(f, tt.results); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("decide =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestThrottleBackoffGrows(t *testing.T) {
	prevHi := time.Duration(0)
	for streak := 1; streak <= 30; streak++ {
		d := min(ThrottleBackoffBase<<min(streak-1, 20), ThrottleBackoffCap)
		lo, hi := ThrottleBackoff(streak, 0), ThrottleBackoff(streak, 0.999999)
		if lo != d/2 || hi >= d {
			t.Fatalf("ThrottleBackoff(%d) in [%v, %v], want [%v, %v)", streak, lo, hi, d/2, d)
		}
		if d < ThrottleBackoffCap && lo < prevHi {
			t.Fatalf("ThrottleBackoff(%d) may be shorter than the wait before it", streak)
		}
		prevHi = hi
	}
}

func TestUntilMidnight(t *testing.T) {
	for _, tc := range []struct {
		wall time.Time
		want time.Duration
	}{
		{time.Date(2026, 1, 2, 21, 0, 0, 0, time.UTC), 3 * time.Hour},
		{time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), 24 * time.Hour},
		{time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC), time.Second},
		// A local time is read in UTC: 20:00 in UTC-5 is 01:00 UTC.
		{time.Date(2026, 1, 2, 20, 0, 0, 0, time.FixedZone("EST", -5*3600)), 23 * time.Hour},
	} {
		if got := untilMidnight(tc.wall); got != tc.want {
			t.Errorf("untilMidnight(%v) = %v, want %v", tc.wall, got, tc.want)
		}
	}
}
