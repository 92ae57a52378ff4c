package admin

import (
	"context"
	"math"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/ingest"
)

// Metrics holds fanout's Prometheus metrics in a registry of its own. Labels
// are configured names only (destination, source) and fixed sets
// (outcome, result), so cardinality is bounded by the configuration.
//
//	fanout_delivery_attempts_total{destination,outcome}  counter: events attempted, by how the attempt left them
//	                                                     (delivered, failed, unsupported, archived, retrying);
//	                                                     archived also counts jobs an open circuit's sweep
//	                                                     archived without an attempt (delivery.Report.Expired)
//	fanout_delivery_latency_seconds{destination}         histogram: receivedAt to the delivering attempt's end
//	fanout_delivery_throttled_total{destination}         counter: events answered 429; each pauses its queue
//	fanout_ingest_events_total{source,result}            counter: accepted, deduplicated, rejected
//	fanout_ingest_refused_total{source,reason}           counter: requests refused for origin or rate_limit
//	                                                     (registered by the server from ingest.Handler.Collectors)
//	fanout_ingest_client_metrics_total                   counter: metric series client libraries sent to /v1/m
//	fanout_queue_depth{destination}                      gauge: jobs made and not ended, the backlog on disk
//	                                                     included (from the stats; see MetricsOptions.Depth)
//	fanout_queue_backlog_queues{destination}             gauge: queues with more pending jobs on disk than loaded
//	fanout_queue_paused_queues{destination}              gauge: queues paused by a 429
//	fanout_inflight_requests{destination}                gauge: requests in flight
//	fanout_unwritten_outcomes{destination}               gauge: outcomes of ended requests not yet written
//	                                                     (see delivery.DestinationState.Unwritten)
//	fanout_concurrency_limit{destination}                gauge: the destination's concurrency setting
//	fanout_circuit_open{destination}                     gauge: 1 while the circuit is open
//	fanout_queue_oldest_job_age_seconds{destination}     gauge: age of the oldest job of the destination's queues
//	                                                     (see delivery.QueueState.Oldest)
//	fanout_delivery_store_wait_seconds{destination}      gauge: how long the scheduler has waited on the job store in
//	                                                     its current call; 0 when in none (see
//	                                                     delivery.DestinationState.StoreWaitSince)
//	fanout_delivery_state_stale_seconds{destination}     gauge: 0 when the scheduler gave this scrape its state,
//	                                                     else the age of the last snapshot the destination's
//	                                                     gauges show, +Inf if none was taken
//	                                                     (see delivery.DestinationState.Stale)
//
// plus the Go runtime and process collectors (go_*, process_*), and the
// server registers the disk space gauges (fanout_disk_*, fanout_storage_*:
// see diskspace.Watcher).
type Metrics struct {
	reg   *prometheus.Registry
	dests map[string]*destMetrics
	srcs  map[string]*srcMetrics
	other *srcMetrics // requests whose write key named no source
}

type destMetrics struct {
	attempts      [delivery.EndRetrying + 1]prometheus.Counter
	latency       prometheus.Observer
	throttled     prometheus.Counter
	duplicateRisk prometheus.Counter
}

type srcMetrics struct {
	accepted, deduplicated, rejected prometheus.Counter
}

// MetricsOptions configures NewMetrics.
type MetricsOptions struct {
	// Destinations and Sources are the configured names; the counters of
	// each are created up front, so the hooks never take a lock.
	Destinations []string
	Sources      []string
	// State returns the delivery engine's state; read at every scrape.
	State func(ctx context.Context) []delivery.DestinationState
	// Depth returns, per source, the jobs made for a destination and not
	// ended yet, the backlog on disk included (stats.Stats.Depth).
	// Optional: without it, the depth is what the queues hold in memory.
	Depth func(destination string) map[string]int64
	// Now is the clock ages and pauses are measured on. Default time.Now.
	Now func() time.Time
}

// NewMetrics builds the registry.
func NewMetrics(o MetricsOptions) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), dests: map[string]*destMetrics{}, srcs: map[string]*srcMetrics{}}
	attempts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fanout_delivery_attempts_total",
		Help: "Delivery attempts of events, by destination and by how the attempt left the event.",
	}, []string{"destination", "outcome"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fanout_delivery_latency_seconds",
		Help:    "End-to-end latency of delivered events: receivedAt to the end of the attempt that delivered.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400},
	}, []string{"destination"})
	throttled := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fanout_delivery_throttled_total",
		Help: "Events answered 429 Too Many Requests; each pauses its queue.",
	}, []string{"destination"})
	duplicateRisk := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fanout_delivery_retried_duplicate_risk_total",
		Help: "Events retried after a timeout or 5xx on a batch, to a destination whose API does not deduplicate: each may be counted twice there.",
	}, []string{"destination"})
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fanout_ingest_events_total",
		Help: "Events taken by the tracking API, by source and result (accepted, deduplicated, rejected).",
	}, []string{"source", "result"})
	m.reg.MustRegister(attempts, latency, throttled, duplicateRisk, events,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{state: o.State, depth: o.Depth, now: o.Now})
	for _, d := range o.Destinations {
		dm := &destMetrics{latency: latency.WithLabelValues(d), throttled: throttled.WithLabelValues(d),
			duplicateRisk: duplicateRisk.WithLabelValues(d)}
		for e := delivery.EndDelivered; e <= delivery.EndRetrying; e++ {
			dm.attempts[e] = attempts.WithLabelValues(d, e.String())
		}
		m.dests[d] = dm
	}
	src := func(name string) *srcMetrics {
		return &srcMetrics{
			accepted:     events.WithLabelValues(name, "accepted"),
			deduplicated: events.WithLabelValues(name, "deduplicated"),
			rejected:     events.WithLabelValues(name, "rejected"),
		}
	}
	for _, s := range o.Sources {
		m.srcs[s] = src(s)
	}
	m.other = src("")
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe counts a delivery attempt. It is a delivery Options.Observe hook.
func (m *Metrics) Observe(r delivery.Report) {
	dm := m.dests[r.Queue.Destination]
	if dm == nil || r.End < delivery.EndDelivered || r.End > delivery.EndRetrying {
		return
	}
	dm.attempts[r.End].Inc()
	if r.End == delivery.EndDelivered {
		dm.latency.Observe(r.At.Sub(r.Job.Event.ReceivedAt).Seconds())
	}
	if r.Result.StatusCode == http.StatusTooManyRequests {
		dm.throttled.Inc()
	}
	if r.DuplicateRisk {
		dm.duplicateRisk.Inc()
	}
}

// ObserveIngest counts a tracking API request. It is an ingest
// Options.Observe hook.
func (m *Metrics) ObserveIngest(r ingest.Report) {
	sm := m.srcs[r.Source]
	if sm == nil {
		sm = m.other
	}
	if n := len(r.Accepted); n > 0 {
		sm.accepted.Add(float64(n))
	}
	if r.Duplicates > 0 {
		sm.deduplicated.Add(float64(r.Duplicates))
	}
	switch {
	case len(r.Rejected) > 0:
		sm.rejected.Add(float64(len(r.Rejected)))
	case r.Failure != "":
		sm.rejected.Inc()
	}
}

// stateCollector turns the engine's state into gauges at scrape time, so
// the schedulers do no metric work of their own.
type stateCollector struct {
	state func(ctx context.Context) []delivery.DestinationState
	depth func(destination string) map[string]int64
	now   func() time.Time
}

var (
	descDepth     = prometheus.NewDesc("fanout_queue_depth", "Jobs made for the destination and not ended yet (delivered, failed, unsupported or archived), the backlog waiting on disk included. Approximate after a crash.", []string{"destination"}, nil)
	descBacklog   = prometheus.NewDesc("fanout_queue_backlog_queues", "Queues with more pending jobs on disk than are loaded.", []string{"destination"}, nil)
	descPaused    = prometheus.NewDesc("fanout_queue_paused_queues", "Queues paused: by a wait the destination asked for, a 429, a spent quota, or too many users held.", []string{"destination"}, nil)
	descQuota     = prometheus.NewDesc("fanout_queue_quota_paused_until_timestamp_seconds", "While queues of the destination are paused because a quota is spent (a daily limit): when the last of them resumes, the quota's reset, as a Unix time. Absent otherwise.", []string{"destination"}, nil)
	descInflight  = prometheus.NewDesc("fanout_inflight_requests", "Requests in flight to the destination.", []string{"destination"}, nil)
	descUnwritten = prometheus.NewDesc("fanout_unwritten_outcomes", "Outcomes of ended requests to the destination gathered and not yet written to the store: after a crash their jobs are sent again, as those of the requests in flight.", []string{"destination"}, nil)
	descLimit     = prometheus.NewDesc("fanout_concurrency_limit", "The destination's concurrency setting.", []string{"destination"}, nil)
	descCircuit   = prometheus.NewDesc("fanout_circuit_open", "1 while the destination's circuit breaker is open.", []string{"destination"}, nil)
	descOldest    = prometheus.NewDesc("fanout_queue_oldest_job_age_seconds", "Age of the oldest job the destination's queues hold: each queue's head of pending jobs, and its retries (for those on disk, the oldest rescheduled since the queue's retry set was last empty).", []string{"destination"}, nil)
	descStoreWait = prometheus.NewDesc("fanout_delivery_store_wait_seconds", "How long the destination's scheduler has been waiting on the job store in its current call (an outcome write or a read); 0 when it waits in none. While it waits it sends nothing more.", []string{"destination"}, nil)
	descStale     = prometheus.NewDesc("fanout_delivery_state_stale_seconds", "0 when the destination's scheduler gave this scrape its state. Otherwise it did not answer within the scrape's timeout, and this is the age of its last snapshot, which the destination's other scheduler gauges show (+Inf when none was taken).", []string{"destination"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDepth, descBacklog, descPaused, descQuota, descInflight, descUnwritten, descLimit, descCircuit, descOldest, descStoreWait, descStale} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.state == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := time.Now()
	if c.now != nil {
		now = c.now()
	}
	for _, d := range c.state(ctx) {
		var depth, backlog, paused, oldest float64
		var quota time.Time
		for _, q := range d.Queues {
			if !q.Oldest.IsZero() {
				oldest = max(oldest, now.Sub(q.Oldest).Seconds())
			}
			depth += float64(q.Buffered + q.InFlight)
			if q.Backlog {
				backlog++
			}
			if q.PausedUntil.After(now) {
				paused++
				if q.PauseReason == "quota" && q.PausedUntil.After(quota) {
					quota = q.PausedUntil
				}
			}
		}
		if !quota.IsZero() {
			ch <- prometheus.MustNewConstMetric(descQuota, prometheus.GaugeValue, float64(quota.UnixMilli())/1000, d.Name)
		}
		if c.depth != nil {
			depth = 0
			for _, n := range c.depth(d.Name) {
				depth += float64(n)
			}
		}
		open := 0.0
		if d.CircuitOpen {
			open = 1
		}
		ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, depth, d.Name)
		ch <- prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, backlog, d.Name)
		ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, paused, d.Name)
		ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(d.InFlight), d.Name)
		ch <- prometheus.MustNewConstMetric(descUnwritten, prometheus.GaugeValue, float64(d.Unwritten), d.Name)
		ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, float64(d.Concurrency), d.Name)
		ch <- prometheus.MustNewConstMetric(descCircuit, prometheus.GaugeValue, open, d.Name)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, oldest, d.Name)
		var wait, stale float64
		if !d.StoreWaitSince.IsZero() {
			wait = max(now.Sub(d.StoreWaitSince).Seconds(), 0)
		}
		if d.Stale {
			stale = math.Inf(1)
			if !d.At.IsZero() {
				stale = max(now.Sub(d.At).Seconds(), 0)
			}
		}
		ch <- prometheus.MustNewConstMetric(descStoreWait, prometheus.GaugeValue, wait, d.Name)
		ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, stale, d.Name)
	}
}
