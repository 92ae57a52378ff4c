package shard

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/jobstore"
)

// Compile-time check that Store implements the interface.
var _ jobstore.Store = (*Store)(nil)

// Options configures a Store. The zero value is ready to use.
type Options struct {
	// Partitions is the cluster's partition count, which decides with the
	// number of servers where a destination lives (cluster.ServerOf).
	// Default cluster.DefaultPartitions; every node must use the cluster's.
	Partitions int
	// Holds, when set, reports whether this node owns a partition of server
	// i. Queues then lists a server that does not answer as holding no
	// queue when the node owns none of its partitions: the delivery engine
	// lists queues only to scan the partitions it gains, and those of a
	// server the node owns nothing on are not among them. Without Holds, a
	// server that does not answer fails Queues.
	Holds func(server int) bool
	// Logger receives the store's log lines. Default slog.Default().
	Logger *slog.Logger
}

// Store is the job store spread over several servers: one store per
// server, every queue of a destination on the server cluster.ServerOf
// names. See the package documentation.
type Store struct {
	stores []jobstore.Store
	opts   Options
	log    *slog.Logger
}

// New spreads jobs over stores, stores[i] being the store on server i.
// The Store owns them: Close closes them all. Their Applied option must be
// one function made by OneAtATime, so that announcements from different
// servers come one at a time.
func New(stores []jobstore.Store, opts Options) (*Store, error) {
	if len(stores) == 0 {
		return nil, errors.New("jobstore/shard: no store")
	}
	if opts.Partitions < 0 {
		return nil, fmt.Errorf("jobstore/shard: Partitions cannot be negative, got %d", opts.Partitions)
	}
	if opts.Partitions == 0 {
		opts.Partitions = cluster.DefaultPartitions
	}
	if len(stores) > opts.Partitions {
		return nil, fmt.Errorf("jobstore/shard: %d servers for %d partitions: a server would hold nothing", len(stores), opts.Partitions)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Store{stores: stores, opts: opts, log: opts.Logger.With("component", "jobstore")}, nil
}

// OneAtATime returns fn behind a lock: each server's store calls its
// Applied from its own committer, and jobstore.AppliedFunc promises calls
// one at a time. Nil stays nil.
func OneAtATime(fn jobstore.AppliedFunc) jobstore.AppliedFunc {
	if fn == nil {
		return nil
	}
	var mu sync.Mutex
	return func(a jobstore.Appended) {
		mu.Lock()
		defer mu.Unlock()
		fn(a)
	}
}

// server returns the index of the server that holds destination's queues.
func (s *Store) server(destination string) int {
	return cluster.ServerOf(destination, s.opts.Partitions, len(s.stores))
}

// Append splits entries by server, each entry's destinations going to the
// servers that hold them (an entry for no destination goes to the first
// server, for its dedupe record), appends on every server concerned at
// once, and returns once all of them have committed. If one fails, Append
// fails: what the others committed stays stored, and the client's resend,
// with the same messageIds, is stored only where it was missing, since
// each server deduplicates what it holds. An entry is a duplicate when
// every server it went to found it one.
func (s *Store) Append(ctx context.Context, entries []jobstore.Entry) ([]bool, error) {
	if len(s.stores) == 1 {
		return s.stores[0].Append(ctx, entries)
	}
	parts := make([][]jobstore.Entry, len(s.stores))
	from := make([][]int, len(s.stores)) // from[i][k]: the index in entries of parts[i][k]
	for i, e := range entries {
		split := s.split(e.Destinations)
		if split == nil {
			srv := 0
			if len(e.Destinations) > 0 {
				srv = s.server(e.Destinations[0])
			}
			parts[srv] = append(parts[srv], e)
			from[srv] = append(from[srv], i)
			continue
		}
		for srv, dests := range split {
			if len(dests) == 0 {
				continue
			}
			sub := e
			sub.Destinations = dests
			parts[srv] = append(parts[srv], sub)
			from[srv] = append(from[srv], i)
		}
	}
	dups := make([][]bool, len(s.stores))
	errs := make([]error, len(s.stores))
	var busy []int
	for i, p := range parts {
		if len(p) > 0 {
			busy = append(busy, i)
		}
	}
	each(busy, func(i int) {
		dups[i], errs[i] = s.stores[i].Append(ctx, parts[i])
		if errs[i] != nil {
			errs[i] = fmt.Errorf("server %d: %w", i, errs[i])
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	dup := make([]bool, len(entries))
	for i := range dup {
		dup[i] = true
	}
	for srv, idx := range from {
		for k, i := range idx {
			dup[i] = dup[i] && dups[srv][k]
		}
	}
	return dup, nil
}

// split returns dests by server, or nil when they are all on one server
// (or there are none): the common case, which needs no copy.
func (s *Store) split(dests []string) [][]string {
	if len(dests) < 2 {
		return nil
	}
	first := s.server(dests[0])
	one := true
	for _, d := range dests[1:] {
		if s.server(d) != first {
			one = false
			break
		}
	}
	if one {
		return nil
	}
	out := make([][]string, len(s.stores))
	for _, d := range dests {
		srv := s.server(d)
		out[srv] = append(out[srv], d)
	}
	return out
}

// each runs fn(i) for every server i in servers, at once, and waits for
// them all. One server runs on the caller's goroutine.
func each(servers []int, fn func(i int)) {
	if len(servers) == 1 {
		fn(servers[0])
		return
	}
	var wg sync.WaitGroup
	for _, i := range servers {
		wg.Go(func() { fn(i) })
	}
	wg.Wait()
}

// Pending reads q's jobs from the server that holds them.
func (s *Store) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	return s.stores[s.server(q.Destination)].Pending(ctx, q, after, limit)
}

// Retries reads q's retry jobs from the server that holds them.
func (s *Store) Retries(ctx context.Context, q jobstore.Queue, until time.Time, limit int) ([]jobstore.Job, time.Time, error) {
	return s.stores[s.server(q.Destination)].Retries(ctx, q, until, limit)
}

// Apply splits u by server and applies the parts at once. The delivery
// engine applies one destination's outcomes at a time, so an update
// usually concerns one server. When several are concerned and one fails,
// the others' parts stay applied, which the contract allows: an update is
// not atomic across a crash either, and what was not written is delivered
// again.
func (s *Store) Apply(ctx context.Context, u jobstore.Update) error {
	if len(s.stores) == 1 {
		return s.stores[0].Apply(ctx, u)
	}
	parts := make([]jobstore.Update, len(s.stores))
	for _, d := range u.Drops {
		p := &parts[s.server(d.Queue.Destination)]
		p.Drops = append(p.Drops, d)
	}
	for _, r := range u.Reschedule {
		p := &parts[s.server(r.Job.Queue.Destination)]
		p.Reschedule = append(p.Reschedule, r)
	}
	for _, j := range u.Finish {
		p := &parts[s.server(j.Queue.Destination)]
		p.Finish = append(p.Finish, j)
	}
	var busy []int
	for i, p := range parts {
		if len(p.Drops)+len(p.Reschedule)+len(p.Finish) > 0 {
			busy = append(busy, i)
		}
	}
	errs := make([]error, len(s.stores))
	each(busy, func(i int) {
		if errs[i] = s.stores[i].Apply(ctx, parts[i]); errs[i] != nil {
			errs[i] = fmt.Errorf("server %d: %w", i, errs[i])
		}
	})
	return errors.Join(errs...)
}

// Queues lists the queues of every server. A server that does not answer
// fails the call, unless Options.Holds says this node owns none of its
// partitions: then its queues are of no use to the caller (see Holds).
func (s *Store) Queues(ctx context.Context) ([]jobstore.Queue, error) {
	return s.queues(ctx, s.all())
}

// PartitionServer returns the index of the server that holds partition p
// (as cluster.PartitionOf numbers them): p mod the number of servers, the
// rule cluster.ServerOf applies to a destination. The delivery engine lists
// the queues of partitions gained one server at a time, each server apart
// from the others.
func (s *Store) PartitionServer(p int) int { return p % len(s.stores) }

// QueuesIn is Queues asking only the servers that hold partitions (see
// PartitionServer); it returns every queue of those servers. The delivery
// engine calls it to scan the partitions it gains, so that a server that
// is slow or down does not hold up a gain on another.
func (s *Store) QueuesIn(ctx context.Context, partitions []int) ([]jobstore.Queue, error) {
	var servers []int
	for _, p := range partitions {
		servers = append(servers, s.PartitionServer(p))
	}
	slices.Sort(servers)
	return s.queues(ctx, slices.Compact(servers))
}

func (s *Store) queues(ctx context.Context, servers []int) ([]jobstore.Queue, error) {
	lists := make([][]jobstore.Queue, len(s.stores))
	errs := make([]error, len(s.stores))
	each(servers, func(i int) { lists[i], errs[i] = s.stores[i].Queues(ctx) })
	var out []jobstore.Queue
	var failed []error
	for _, i := range servers {
		switch err := errs[i]; {
		case err == nil:
			out = append(out, lists[i]...)
		case s.opts.Holds != nil && !s.opts.Holds(i) && ctx.Err() == nil:
			s.log.Warn("queues of a server that does not answer left out: this node owns none of its partitions", "server", i, "err", err)
		default:
			failed = append(failed, fmt.Errorf("server %d: %w", i, err))
		}
	}
	if len(failed) > 0 {
		return nil, errors.Join(failed...)
	}
	slices.SortFunc(out, func(a, b jobstore.Queue) int {
		return cmp.Or(cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.Source, b.Source))
	})
	return out, nil
}

// all returns the index of every server.
func (s *Store) all() []int {
	ids := make([]int, len(s.stores))
	for i := range ids {
		ids[i] = i
	}
	return ids
}

// Close closes every server's store.
func (s *Store) Close() error {
	errs := make([]error, len(s.stores))
	for i, st := range s.stores {
		if err := st.Close(); err != nil {
			errs[i] = fmt.Errorf("server %d: %w", i, err)
		}
	}
	return errors.Join(errs...)
}
