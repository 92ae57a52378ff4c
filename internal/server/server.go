// Package server wires fanout together: store, router, tracking API,
// delivery engine and admin listener, and owns their lifecycle.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/admin"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/debugger"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/diskspace"
	"github.com/fanout/fanout/internal/ingest"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/open"
	"github.com/fanout/fanout/internal/redact"
	"github.com/fanout/fanout/internal/router"
	"github.com/fanout/fanout/internal/stats"
)

// Options configures a Server.
type Options struct {
	Config   *config.Config
	Registry destinations.Registry
	Logger   *slog.Logger
	// Clock defaults to the wall clock.
	Clock clock.Clock
	// NoVisibility leaves the stats, the debugger and the metrics unfed, so
	// that `fanout bench throughput --visibility both` can measure their cost.
	NoVisibility bool

	// ReadHeaderTimeout bounds how long a client of the tracking and admin
	// APIs may take to send a request's headers, so that one sending them a
	// byte at a time (slowloris) cannot hold a connection. Default 5s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included. Default 30s.
	ReadTimeout time.Duration
	// WriteTimeout bounds handling a request and writing its response,
	// counted from the end of its headers. Default 30s.
	WriteTimeout time.Duration
	// ClusterTuning overrides the cluster's timings (with
	// storage.postgres); zero fields take the defaults.
	ClusterTuning ClusterTuning

	// IdleTimeout is how long a keep-alive connection may wait for its next
	// request. Default 2m.
	//
	// None of the four can be negative: zero means the default.
	IdleTimeout time.Duration
}

// Defaults of the Options timeouts, used where a field is zero.
const (
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
)

// storeOpenTimeout bounds opening the store at start-up: a database that
// does not answer fails start-up with its cause rather than hanging it.
const storeOpenTimeout = 30 * time.Second

// Server is one running fanout.
type Server struct {
	opts    Options
	store   jobstore.Store
	stats   *stats.Stats
	archive archive.Store
	pg      *pgVisibility // the stats and archive tables, with storage.postgres
	cluster *pgCluster    // the membership of the cluster, with storage.postgres
	space   *diskspace.Watcher
	engine  *delivery.Engine
	track   *http.Server
	admin   *http.Server

	trackLn, adminLn net.Listener
}

// New opens the store, builds every destination and binds the listeners.
// Nothing is served until Run.
func New(opts Options) (_ *Server, err error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	cfg := opts.Config
	s := &Server{opts: opts}
	// The one cleanup path: whatever the steps below opened before one of
	// them failed is closed again.
	defer func() {
		if err != nil {
			s.closeOpened()
		}
	}()

	// Free space is watched on every filesystem fanout writes to: below
	// storage.min_free ingest answers 503, and the databases write through
	// a filesystem that releases the ballast rather than fail a write.
	space, err := diskspace.New(diskspace.Options{
		Dirs: []diskspace.Dir{
			{Name: "jobs", Path: filepath.Join(cfg.DataDir, "jobs")},
			{Name: "stats", Path: filepath.Join(cfg.DataDir, "stats")},
			{Name: "archive", Path: filepath.Join(cfg.DataDir, "archive")},
		},
		MinFree: cfg.Storage.MinFree,
		Ballast: filepath.Join(cfg.DataDir, diskspace.BallastName),
		Clock:   opts.Clock,
		Logger:  opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("storage.min_free: %w", err)
	}
	s.space = space
	spaceFS := s.space.FS(vfs.Default)
	// The engine is told of new jobs as soon as the store has made them
	// readable (jobstore.AppliedFunc); it is built after the store, and no
	// event arrives before Run, so the hook starts unset.
	var notify atomic.Pointer[delivery.Engine]
	// With storage.postgres the node joins the cluster of the nodes that
	// share the database before it opens the store, which fences its
	// writes and wakes the other nodes through it.
	// The admin listener is bound first there, so that the node
	// advertises where its admin API answers when it joins.
	if len(cfg.Storage.Postgres) > 0 {
		if s.adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("admin_listen: %w", err)
		}
		if s.cluster, err = joinCluster(cfg, adminURL(s.adminLn), opts.ClusterTuning, opts.Logger); err != nil {
			return nil, err
		}
	}
	openCtx, cancelOpen := context.WithTimeout(context.Background(), storeOpenTimeout)
	defer cancelOpen()
	oo := open.Options{
		DataDir:  cfg.DataDir,
		Postgres: cfg.Storage.Postgres,
		Applied: func(a jobstore.Appended) {
			if e := notify.Load(); e != nil {
				e.Notify(a)
			}
		},
		DedupeWindow: cfg.DedupeWindow,
		Now:          opts.Clock.Now,
		Logger:       opts.Logger,
		FS:           spaceFS,
	}
	if s.cluster != nil {
		s.cluster.storeOptions(&oo)
	}
	store, err := open.Store(openCtx, oo)
	if err != nil {
		return nil, err
	}
	s.store = s.space.Guard(store) // appends (ingest, replay) wait for space

	// Delivery stats, the debugger and metrics hang off the hooks of the
	// tracking API and the engine; the stats persist in their own database.
	route := router.New(cfg, opts.Registry)
	var writeKeys []string
	for _, src := range cfg.Sources {
		writeKeys = append(writeKeys, src.WriteKey)
	}
	redactors := map[string]*redact.Redactor{}
	for _, d := range cfg.Destinations {
		var secrets []string
		if integ := opts.Registry[d.Type]; integ != nil {
			secrets = redact.SecretValues(integ.Settings, d.Settings)
		}
		redactors[d.Name] = redact.New(append(secrets, writeKeys...))
	}
	// With storage.postgres, the stats and the archive live in the
	// database too.
	var statsBackend stats.Backend
	files := archive.NewWriter(filepath.Join(cfg.DataDir, "archive"))
	files.SetGuard(s.space)
	files.Logger = opts.Logger.With("component", "archive")
	s.archive = files
	if len(cfg.Storage.Postgres) > 0 {
		if s.pg, err = openPGVisibility(cfg.Storage.Postgres, cfg.Listen); err != nil {
			return nil, err
		}
		statsBackend, s.archive = s.pg.stats, s.pg.archive
	}
	s.stats, err = stats.Open(stats.Options{
		Dir: filepath.Join(cfg.DataDir, "stats"), Backend: statsBackend, Redactors: redactors,
		Fallback: redact.New(writeKeys), Now: opts.Clock.Now, Logger: opts.Logger, FS: spaceFS,
	})
	if err != nil {
		return nil, err
	}
	// A crash can leave the depth of a queue off; those the store holds no
	// job for are empty, whatever the counts say.
	holding, err := store.Queues(context.Background())
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	s.stats.KeepDepth(holding)
	dbg := debugger.New(redactors)
	var destNames, srcNames []string
	for _, d := range cfg.Destinations {
		destNames = append(destNames, d.Name)
	}
	for _, src := range cfg.Sources {
		srcNames = append(srcNames, src.Name)
	}
	mo := admin.MetricsOptions{
		Destinations: destNames, Sources: srcNames,
		State: func(ctx context.Context) []delivery.DestinationState { return s.engine.State(ctx) },
		Now:   opts.Clock.Now,
	}
	if !opts.NoVisibility {
		// The stats count the depth only when they are fed.
		mo.Depth = s.stats.Depth
	}
	metrics := admin.NewMetrics(mo)
	metrics.Registry().MustRegister(s.space)
	if s.cluster != nil {
		metrics.Registry().MustRegister(s.cluster.Collectors()...)
	}

	targets, err := newTargets(cfg, opts.Registry)
	if err != nil {
		return nil, err
	}
	observe := func(r delivery.Report) {
		s.stats.Observe(r)
		dbg.Observe(r)
		metrics.Observe(r)
	}
	if opts.NoVisibility {
		observe = nil
	}
	eo := delivery.Options{
		Store:   store,
		Targets: targets,
		Archive: s.archive,
		Clock:   opts.Clock,
		Logger:  opts.Logger,
		Observe: observe,
	}
	if s.cluster != nil {
		// Deliver only the partitions this node owns.
		eo.Ownership = s.cluster.node
	}
	s.engine, err = delivery.New(eo)
	if err != nil {
		return nil, err
	}
	notify.Store(s.engine)

	observeIngest := func(r ingest.Report) {
		s.stats.ObserveIngest(r)
		dbg.ObserveIngest(r)
		metrics.ObserveIngest(r)
	}
	if opts.NoVisibility {
		observeIngest = nil
	}
	tracking := ingest.New(ingest.Options{
		Sources: cfg.Sources,
		Router:  route,
		Store:   s.store,
		Observe: observeIngest,
		Now:     opts.Clock.Now,
		Logger:  opts.Logger,

		PublicURL: cfg.PublicURL,
	})
	metrics.Registry().MustRegister(tracking.Collectors()...)
	s.track = newHTTPServer(tracking, opts)
	var clusterView func(context.Context) (any, error)
	var peers func(context.Context) ([]admin.Peer, error)
	var delivers func(string) bool
	var nodeID int64
	if s.cluster != nil {
		clusterView, peers, delivers, nodeID = s.cluster.View, s.cluster.Peers, s.cluster.Delivers, s.cluster.node.ID()
	}
	s.admin = newHTTPServer(admin.New(admin.Options{
		Config: cfg, Registry: opts.Registry, State: s.engine.State, Stats: s.stats,
		Debugger: dbg, Metrics: metrics, Token: cfg.AdminToken, Clock: opts.Clock, Logger: opts.Logger,
		Replay: (&archive.Replayer{
			Archive: s.archive, Store: s.store, Now: opts.Clock.Now, Replayed: s.stats.Replayed, Logger: opts.Logger,
		}).Replay,
		Storage:  func() any { return s.space.State() },
		Cluster:  clusterView,
		Peers:    peers,
		Delivers: delivers,
		NodeID:   nodeID,
	}), opts)

	if s.trackLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if s.adminLn == nil {
		if s.adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("admin_listen: %w", err)
		}
	}
	return s, nil
}

// newTargets builds the delivery target of every configured destination.
func newTargets(cfg *config.Config, reg destinations.Registry) ([]delivery.Target, error) {
	targets := make([]delivery.Target, 0, len(cfg.Destinations))
	for _, d := range cfg.Destinations {
		integ := reg[d.Type]
		client := destinations.NewClient(d.Delivery.Timeout, cfg.Network.AllowPrivate)
		// One limiter for the engine's requests and the integration's own
		// side requests, so that both count against rate_limit.
		limiter := destinations.NewLimiter(d.Delivery.RateLimit)
		impl, err := integ.New(destinations.Config{Name: d.Name, Settings: d.Settings, Client: client, Limiter: limiter})
		if err != nil {
			return nil, fmt.Errorf("%s: destination %q: %w", cfg.Path, d.Name, err)
		}
		batch := integ.Batch
		if b, ok := impl.(destinations.Batcher); ok {
			batch = b.BatchLimits()
		}
		targets = append(targets, delivery.Target{
			Name: d.Name, Type: d.Type, Destination: impl, Batch: batch, Client: client,
			Limits: d.Delivery, Limiter: limiter, Deduplicates: integ.Deduplicates, Sources: d.Sources,
		})
	}
	return targets, nil
}

// setDefaults fills in the zero fields of opts and checks the others.
func (opts *Options) setDefaults() error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	for _, d := range []struct {
		name  string
		field *time.Duration
		def   time.Duration
	}{
		{"ReadHeaderTimeout", &opts.ReadHeaderTimeout, DefaultReadHeaderTimeout},
		{"ReadTimeout", &opts.ReadTimeout, DefaultReadTimeout},
		{"WriteTimeout", &opts.WriteTimeout, DefaultWriteTimeout},
		{"IdleTimeout", &opts.IdleTimeout, DefaultIdleTimeout},
	} {
		// net/http takes a negative timeout for none at all.
		if *d.field < 0 {
			return fmt.Errorf("%s cannot be negative, got %s", d.name, *d.field)
		}
		if *d.field == 0 {
			*d.field = d.def
		}
	}
	return nil
}

// newHTTPServer sets every timeout, so that a client sending its headers a
// byte at a time cannot hold a connection forever.
func newHTTPServer(h http.Handler, opts Options) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
}

// closeOpened closes, when New fails, what it had opened: the listeners,
// the stats and the job store.
func (s *Server) closeOpened() {
	if s.trackLn != nil {
		s.trackLn.Close()
	}
	if s.adminLn != nil {
		s.adminLn.Close()
	}
	if s.stats != nil {
		s.stats.Close()
	}
	s.pg.Close()
	if s.store != nil {
		s.store.Close()
	}
	s.cluster.Leave(s.opts.Logger)
	if s.space != nil {
		s.space.Close()
	}
}

// TrackingAddr is the address the tracking API listens on.
func (s *Server) TrackingAddr() string { return s.trackLn.Addr().String() }

// AdminAddr is the address the admin API listens on.
func (s *Server) AdminAddr() string { return s.adminLn.Addr().String() }

// Run serves until ctx ends, then shuts down in order: stop taking events
// (requests in progress finish and are acknowledged), let delivery finish or
// release its in-flight requests, and close the store.
func (s *Server) Run(ctx context.Context) error {
	log := s.opts.Logger
	engineCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	statsCtx, stopStats := context.WithCancel(context.Background())
	defer stopStats()
	spaceCtx, stopSpace := context.WithCancel(context.Background())
	defer stopSpace()
	go s.space.Run(spaceCtx)
	statsDone := make(chan struct{})
	go func() {
		defer close(statsDone)
		s.stats.Run(statsCtx)
	}()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.engine.Run(engineCtx); err != nil {
			errc <- err
		}
	}()
	for _, p := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{s.track, s.trackLn}, {s.admin, s.adminLn}} {
		go func() {
			if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	log.Info("fanout is running", "tracking", "http://"+s.TrackingAddr(), "admin", "http://"+s.AdminAddr(),
		"sources", len(s.opts.Config.Sources), "destinations", len(s.opts.Config.Destinations))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error("fanout stops on an error", "err", runErr)
	}
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.track.Shutdown(shutCtx); err != nil {
		log.Warn("tracking API shutdown", "err", err)
	}
	stopEngine()
	wg.Wait()
	// The engine has reported its last outcomes: write the stats once more.
	stopStats()
	<-statsDone
	if err := s.stats.Close(); err != nil {
		log.Warn("close stats", "err", err)
	}
	if err := s.admin.Shutdown(shutCtx); err != nil {
		log.Warn("admin shutdown", "err", err)
	}
	// After the admin API: a replay reads the archive.
	s.pg.Close()
	if err := s.store.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("close store: %w", err)
	}
	// After the engine's last outcomes are written, under its leases: the
	// other nodes take its partitions at once.
	s.cluster.Leave(log)
	s.space.Close()
	log.Info("stopped")
	return runErr
}
