package delivery

import (
	"reflect"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	res := func(o destinations.Outcome, status int, retryAfter time.Duration) destinations.SendResult {
		return destinations.SendResult{Result: destinations.Result{Outcome: o, StatusCode: status, RetryAfter: retryAfter}}
	}
	var (
		delivered   = res(destinations.Delivered, 200, 0)
		rejected    = res(destinations.Rejected, 400, 0)
		unsupported = res(destinations.Unsupported, 0, 0)
		throttled   = res(destinations.Retryable, 429, 0)
		timeout     = res(destinations.Retryable, 0, 0)
		unavailable = res(destinations.Retryable, 503, 0)
		conflict    = res(destinations.Retryable, 409, 0) // retryable by the integration's say
	)
	var (
		done     = jobStep{End: EndDelivered}
		failed   = jobStep{End: EndFailed}
		skipped  = jobStep{End: EndUnsupported}
		backoff  = jobStep{End: EndRetrying}
		requeued = jobStep{End: EndRetrying, Requeue: true}
	)
	tests := []struct {
		name    string
		results []destinations.SendResult
		want    verdict
	}{
		{"delivered", []destinations.SendResult{delivered},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{done}}},
		{"rejected reached a working destination", []destinations.SendResult{rejected},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{failed}}},
		{"unsupported says nothing of the destination", []destinations.SendResult{unsupported},
			verdict{Circuit: circuitNone, Limit: limitIncrease, Jobs: []jobStep{skipped}}},
		{"429 without Retry-After pauses DefaultRetryAfter", []destinations.SendResult{throttled},
			verdict{PauseUntil: now.Add(DefaultRetryAfter), Throttled: true, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"429 pauses for its Retry-After", []destinations.SendResult{res(destinations.Retryable, 429, 30*time.Second)},
			verdict{PauseUntil: now.Add(30 * time.Second), Throttled: true, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"429s of a batch pause for the longest Retry-After",
			[]destinations.SendResult{res(destinations.Retryable, 429, 5*time.Second), res(destinations.Retryable, 429, 20*time.Second), throttled},
			verdict{PauseUntil: now.Add(20 * time.Second), Throttled: true, Limit: limitDecrease, Jobs: []jobStep{requeued, requeued, requeued}}},
		{"Retry-After is capped at MaxRetryAfter", []destinations.SendResult{res(destinations.Retryable, 429, 24*time.Hour)},
			verdict{PauseUntil: now.Add(MaxRetryAfter), Throttled: true, Limit: limitDecrease, Jobs: []jobStep{requeued}}},
		{"timeout is a server failure", []destinations.SendResult{timeout},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff}}},
		{"5xx is a server failure", []destinations.SendResult{unavailable},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff}}},
		{"Retry-After on a 503 does not pause the queue", []destinations.SendResult{res(destinations.Retryable, 503, time.Minute)},
			verdict{Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{backoff}}},
		{"retryable 4xx other than 429 backs off and grows the limit", []destinations.SendResult{conflict},
			verdict{Circuit: circuitNone, Limit: limitIncrease, Jobs: []jobStep{backoff}}},
		{"a result that reached the destination outweighs a server failure", []destinations.SendResult{unavailable, delivered},
			verdict{Circuit: circuitSuccess, Limit: limitDecrease, Jobs: []jobStep{backoff, done}}},
		{"a 429 with a server failure: paused, and the circuit counts the failure", []destinations.SendResult{throttled, timeout},
			verdict{PauseUntil: now.Add(DefaultRetryAfter), Throttled: true, Circuit: circuitFailure, Limit: limitDecrease, Jobs: []jobStep{requeued, backoff}}},
		{"a 429 beside a delivery: paused, circuit closed", []destinations.SendResult{delivered, throttled},
			verdict{PauseUntil: now.Add(DefaultRetryAfter), Throttled: true, Circuit: circuitSuccess, Limit: limitDecrease, Jobs: []jobStep{done, requeued}}},
		{"each job of a batch ends by its own result", []destinations.SendResult{delivered, rejected, unsupported, conflict},
			verdict{Circuit: circuitSuccess, Limit: limitIncrease, Jobs: []jobStep{done, failed, skipped, backoff}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(now, tt.results); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("decide =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}
