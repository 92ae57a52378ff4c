package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/fanout/fanout/internal/sink"
)

// runSink serves a stand-in destination until ctx is cancelled.
func runSink(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `usage: fanout sink [flags]

A stand-in destination: accepts any POST, counts the events in it (a JSON
array, or {"batch": [...]}, is one event per element) and answers with the
faults asked for. GET /_sink/stats shows the counts; POST /_sink/reset zeroes
them; POST /_sink/down and /_sink/up toggle answering 503 to everything.

flags:`)
		fs.PrintDefaults()
	}
	listen := fs.String("listen", "127.0.0.1:9090", "address to listen on")
	quiet := fs.Bool("quiet", false, "do not print each event")
	record := fs.String("record", "", "append each accepted event to `FILE` as one JSON line")
	var o sink.Options
	fs.BoolVar(&o.RecordTimes, "record-times", false, `write each --record line as {"at": UNIX_NS, "event": EVENT}, the time the sink answered`)
	fs.Float64Var(&o.FailRate, "fail-rate", 0, "share of requests answered 500")
	fs.Float64Var(&o.TooManyRate, "429-rate", 0, "share of requests answered 429 with Retry-After")
	fs.DurationVar(&o.RetryAfter, "retry-after", time.Second, "Retry-After of injected 429s (whole seconds, rounded up)")
	fs.Float64Var(&o.TimeoutRate, "timeout-rate", 0, "share of requests never answered, until the client gives up")
	fs.Float64Var(&o.ErrorBodyRate, "error-body-rate", 0, `share of requests answered 200 with {"success":false,"error":"..."}`)
	fs.DurationVar(&o.Latency, "latency", 0, "latency added to every answer")
	fs.DurationVar(&o.LatencyJitter, "latency-jitter", 0, "up to this much more latency, uniformly random")
	fs.Float64Var(&o.RateLimit, "rate-limit", 0, "requests per second allowed per key, then 429 with Retry-After; 0 means none")
	fs.IntVar(&o.RateBurst, "rate-burst", 0, "rate limiter burst (default one second's worth of --rate-limit)")
	fs.StringVar(&o.Key, "rate-limit-key", "global", "what requests are rate limited and counted by: global, or header:NAME (e.g. header:Fanout-Source)")
	fs.BoolVar(&o.Down, "down", false, "start answering 503 to everything (POST /_sink/up to recover)")
	seed := fs.Uint64("seed", 0, "seed of the random faults; 0 picks one, which is logged so the run can be repeated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o.Logger = logger
	o.Seed = *seed
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if !*quiet {
		o.Print = os.Stdout
	}
	if *record != "" {
		f, err := os.OpenFile(*record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		o.Record = f
	}
	s, err := sink.New(o)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("sink listening", "addr", ln.Addr().String(), "seed", o.Seed,
		"fail_rate", o.FailRate, "429_rate", o.TooManyRate, "timeout_rate", o.TimeoutRate,
		"error_body_rate", o.ErrorBodyRate, "latency", o.Latency, "rate_limit", o.RateLimit,
		"rate_limit_key", o.Key, "down", o.Down)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		s.Close()
		return err
	case <-ctx.Done():
	}
	// Close first: it releases requests held by --timeout-rate, which would
	// otherwise keep Shutdown waiting.
	closeErr := s.Close()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	st := s.Stats()
	logger.Info("sink stopped", "requests", st.Requests, "events", st.Events,
		"accepted", st.Accepted, "unique", st.Unique, "duplicates", st.Duplicates)
	if closeErr != nil {
		return fmt.Errorf("writing %s: %w", *record, closeErr)
	}
	return nil
}
