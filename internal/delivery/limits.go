package delivery

import "time"

// The defaults of Limits, used where a field is zero. They are declared here
// and nowhere else: the configuration file starts from Limits{}.WithDefaults().
const (
	DefaultConcurrency = 64
	DefaultRetryWindow = 4 * time.Hour
	DefaultTimeout     = 10 * time.Second
)

// Limits bound how the engine delivers to one destination. A zero field
// takes its default; the configuration file's delivery section of a
// destination is a Limits.
type Limits struct {
	// Concurrency is the most requests in flight to the destination, shared
	// round-robin by its queues. Default DefaultConcurrency (64).
	Concurrency int
	// RateLimit is requests per second across all the destination's queues.
	// Default 0, which means none.
	RateLimit float64
	// RetryWindow is how long after receipt a job is retried before it is
	// archived. Default DefaultRetryWindow (4h).
	RetryWindow time.Duration
	// Timeout bounds each request. Default DefaultTimeout (10s). The engine
	// does not apply it: the Target's Client must, and
	// destinations.NewClient(Timeout, ...) builds one that does.
	Timeout time.Duration
}

// WithDefaults returns l with each zero or negative field but RateLimit set
// to its default.
func (l Limits) WithDefaults() Limits {
	if l.Concurrency <= 0 {
		l.Concurrency = DefaultConcurrency
	}
	if l.RetryWindow <= 0 {
		l.RetryWindow = DefaultRetryWindow
	}
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	return l
}
