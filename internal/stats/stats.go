// Package stats keeps fanout's delivery statistics: per (source,
// destination) and per minute, what became of the events (received,
// filtered, unsupported, delivered on the first attempt or after retries,
// pending retry, failed, archived), their end-to-end latency, and the
// delivery issues, failures grouped by reason with samples of the exchange.
// Per source it counts what the tracking API accepted, deduplicated and
// rejected. It answers the question users ask first: did my event reach
// the tool, and if not, why?
//
// # Time
//
// An event's fate is counted in the minute it was received, not the minute
// the fate was decided: the overview of a range then reads as a funnel,
// received = filtered + unsupported + delivered + failed + archived +
// pending retry + not yet attempted. Issue counts are the exception: they
// count attempts in the minute they failed, which is what a user looking
// for when something broke wants.
//
// # Storage and what a crash loses
//
// Minutes are kept 14 days in a small Pebble database under the data
// directory, one key per (minute, source, destination). The last few hours
// are also held in memory, where the hooks update them; older minutes are
// read from disk when a retry of an old event or a query needs them. Every
// FlushInterval (2 s) the changed minutes, issue groups and gauges are
// written in one synced batch, and once more on shutdown: a crash loses at
// most the counts of the last two seconds, never more, and a restart
// continues from what was written. A flush that fails (a database that is
// down) keeps what it could not write and the next one retries it.
//
// Where they are written is a [Backend]: the Pebble database in Options.Dir
// by default, or PostgreSQL ([NewPostgres]) when storage.postgres is set, so
// that a node's disk holds nothing another node needs. There each node
// writes rows of its own and queries sum every node's rows; see [Postgres].
package stats

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/latency"
	"github.com/fanout/fanout/internal/redact"
)

// Defaults, each documented on its Options field.
const (
	DefaultRetention     = 14 * 24 * time.Hour
	DefaultHot           = 6 * time.Hour
	DefaultFlushInterval = 2 * time.Second
)

// Bounds on what one (source, destination) can hold, so that a destination
// answering every request with a new message cannot grow memory.
const (
	// MaxIssues is how many issue groups a (source, destination) keeps;
	// failures of further kinds are counted in one overflow group.
	MaxIssues = 50
	// MaxSamples is how many samples an issue group keeps: the first ones.
	MaxSamples = 10
	// MaxSampleBody bounds each body a sample keeps (event, request,
	// response), in bytes.
	MaxSampleBody = 16 << 10
	// maxReasons bounds the distinct ingest rejection reasons of a source
	// in one minute.
	maxReasons = 20
)

// overflowReason is the reason of the group that counts failures beyond
// MaxIssues kinds.
const overflowReason = "other reasons (too many kinds of failure to group)"

// Options configures Stats.
type Options struct {
	// Dir is the directory of the stats database, a Pebble database of
	// the node's own. Required unless Backend is set.
	Dir string
	// Backend, when set, keeps the stats instead of a database in Dir:
	// NewPostgres for nodes sharing a PostgreSQL database. Stats closes
	// it on Close.
	Backend Backend
	// Redactors holds, by destination name, the redactor applied to that
	// destination's samples and reasons. A destination without one gets
	// Fallback.
	Redactors map[string]*redact.Redactor
	// Fallback redacts samples of destinations missing from Redactors.
	// Default: by header name only.
	Fallback *redact.Redactor
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Retention is how long minutes and issues are kept. Default 14 days.
	Retention time.Duration
	// Hot is how much of the recent past is held in memory. Default 6 h.
	Hot time.Duration
	// FlushInterval is how often changes are written. Default 2 s; it is
	// what a crash can lose.
	FlushInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// FS is the filesystem the database is written through. Default: the
	// operating system's.
	FS vfs.FS
}

// Pair names the stats of one source for one destination. Per-source
// ingest counts use an empty Destination.
type Pair struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

// Counts are what became of the events received in a range, for one
// destination.
type Counts struct {
	// Received counts events routed to the destination by its connection
	// to the source, whatever became of them after.
	Received int64 `json:"received"`
	// Filtered: turned off by the event's integrations object.
	Filtered int64 `json:"filtered"`
	// Unsupported: the integration does not take the event.
	Unsupported int64 `json:"unsupported"`
	// DeliveredFirst: delivered on the first attempt.
	DeliveredFirst int64 `json:"delivered_first_attempt"`
	// DeliveredRetry: delivered after one or more failed attempts.
	DeliveredRetry int64 `json:"delivered_after_retries"`
	// PendingRetry: failed at least once and not ended yet.
	PendingRetry int64 `json:"pending_retry"`
	// Failed: rejected by the destination; never retried.
	Failed int64 `json:"failed"`
	// Archived: retried until the retry window ended, then archived.
	Archived int64 `json:"archived"`
	// RetriedDuplicateRisk counts retries after an ambiguous failure (a
	// timeout or 5xx on a batch) of an integration whose API does not
	// deduplicate: the destination may count those events twice. It
	// counts attempts, not events, and is not part of the outcomes above.
	RetriedDuplicateRisk int64 `json:"retried_duplicate_risk"`
}

func (c *Counts) add(o *Counts) {
	c.Received += o.Received
	c.Filtered += o.Filtered
	c.Unsupported += o.Unsupported
	c.DeliveredFirst += o.DeliveredFirst
	c.DeliveredRetry += o.DeliveredRetry
	c.PendingRetry += o.PendingRetry
	c.Failed += o.Failed
	c.Archived += o.Archived
	c.RetriedDuplicateRisk += o.RetriedDuplicateRisk
}

// Ingest are a source's tracking API counts.
type Ingest struct {
	// Accepted counts events stored, duplicates excluded.
	Accepted int64 `json:"accepted"`
	// Deduplicated counts events whose messageId was seen within the
	// dedupe window.
	Deduplicated int64 `json:"deduplicated"`
	// Rejected counts refused events, or requests refused whole, by
	// normalized reason.
	Rejected map[string]int64 `json:"rejected"`
}

func (g *Ingest) reject(reason string, n int64) {
	if g.Rejected == nil {
		g.Rejected = map[string]int64{}
	}
	if _, ok := g.Rejected[reason]; !ok && len(g.Rejected) >= maxReasons {
		reason = "other reasons"
	}
	g.Rejected[reason] += n
}

func (g *Ingest) add(o *Ingest) {
	g.Accepted += o.Accepted
	g.Deduplicated += o.Deduplicated
	for r, n := range o.Rejected {
		g.reject(r, n)
	}
}

// bucket is one minute of one Pair.
type bucket struct {
	c       Counts
	latency latency.Histogram
	issues  map[uint32]int64 // issue id -> failed attempts in the minute
	ingest  Ingest           // only for per-source pairs
	dirty   bool
}

type bkey struct {
	pair   Pair
	minute int64 // minutes since the Unix epoch
}

// Stats collects and answers delivery statistics. Its hooks, Observe and
// ObserveIngest, are safe for concurrent use and cheap: a mutex and a few
// increments, plus a copy of the exchange for the first samples of an
// issue.
type Stats struct {
	opts    Options
	log     *slog.Logger
	backend Backend

	// flushMu makes Flushes take turns: Run's and those the admin API
	// asks for (a cluster-wide view). Each writes whole values, so one
	// that took its copy earlier must not land after a later one.
	flushMu sync.Mutex

	mu sync.Mutex
	// hot holds every minute at or after completeFrom, and the older
	// minutes loaded because a retry of an old event touched them.
	hot          map[bkey]*bucket
	completeFrom int64
	issues       map[Pair]*pairIssues
	// gauges are the running counts of each pair, by destination then
	// source, so that a destination's queues are read without walking
	// every pair; dirty lists those changed since the last Flush.
	gauges map[string]map[string]*gauge
	dirty  []Pair
	// changed says something may have been marked dirty since the last
	// Flush took its copy. Whatever marks a minute, an issue group or a
	// gauge dirty sets it (Observe, ObserveIngest, gauge, a failed
	// Flush), so that a Flush with nothing to write, as the cluster's
	// views ask every node for (internal/admin), returns at once instead
	// of walking the hot minutes with the hooks' lock held.
	changed bool
}

// gauge is one pair's running counts, kept apart from the minutes so that
// metrics and the queue state need not read 14 days.
type gauge struct {
	// pending counts the jobs that failed at least once and have not
	// ended: the sum of PendingRetry over all minutes.
	pending int64
	// open counts the jobs made minus the jobs ended: the queue's depth,
	// the backlog on disk included. Both sides are counted in whatever
	// order they are observed (a delivery can end before the tracking
	// API's fsync returns and reports its event), so it may dip below
	// zero for a moment and is reported as at least zero. A crash can
	// lose the last writes of either side or deliver a job twice; KeepDepth
	// sets the count of every queue the store holds nothing for back to
	// zero at start-up.
	open  int64
	dirty bool
}

// Open opens or creates the stats database in opts.Dir and loads the hot
// minutes and the issue groups.
func Open(opts Options) (*Stats, error) {
	if opts.Dir == "" && opts.Backend == nil {
		return nil, errors.New("stats: Dir or Backend is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Hot <= 0 {
		opts.Hot = DefaultHot
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Fallback == nil {
		opts.Fallback = &redact.Redactor{}
	}
	log := opts.Logger.With("component", "stats")
	backend := opts.Backend
	where := "the stats backend"
	if backend == nil {
		pb, err := openPebble(opts.Dir, opts.FS, log, opts.Now())
		if err != nil {
			return nil, err
		}
		backend, where = pb, opts.Dir
	}
	s := &Stats{
		opts: opts, log: log, backend: backend,
		hot:          map[bkey]*bucket{},
		issues:       map[Pair]*pairIssues{},
		gauges:       map[string]map[string]*gauge{},
		completeFrom: minuteOf(opts.Now().Add(-opts.Hot)),
	}
	if err := s.load(); err != nil {
		backend.close()
		return nil, fmt.Errorf("stats: load %s: %w", where, err)
	}
	return s, nil
}

func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// Close closes the backend. Call it after Run returned.
func (s *Stats) Close() error {
	return s.backend.close()
}
