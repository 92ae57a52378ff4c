package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/fanout/fanout/internal/bench"
)

func runBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	duration := fs.Duration("duration", 0, "length of each load phase (default 10s; soak: the whole run, default 1h)")
	kills := fs.Int("kills", bench.DefaultKills, "crash: how many times the server is killed (0: the default); cluster: how many times one node of three is killed (0: no kill phase)")
	interval := fs.Duration("interval", time.Minute, "soak: how often the server's RSS, heap, goroutines, files, store and queues are sampled")
	events := fs.Int("events", 5_000_000, "backlog: events that pile up for each down destination (one event per request, then batched)")
	out := fs.String("out", "", "where to write the figures as JSON (default bench-SCENARIO.json)")
	keep := fs.Bool("keep", false, "keep the work dir (data, configs, logs)")
	visibility := fs.String("visibility", "on", "throughput: stats, debugger and metrics on, off, or both (measures their cost)")
	storage := fs.String("storage", "pebble", "throughput, backlog, crash: the job store, pebble (embedded) or postgres (a throwaway PostgreSQL the bench starts; runs pebble too and prints both side by side), or a list such as postgres,pebble")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: fanout bench [flags] SCENARIO\n\nscenarios: %s\n\nflags:\n", strings.Join(bench.Names(), ", "))
		fs.PrintDefaults()
	}
	// Flags may come before or after the scenario name.
	var scenario string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		scenario, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if scenario == "" && fs.NArg() > 0 {
		scenario = fs.Arg(0)
	}
	if scenario == "" {
		fs.Usage()
		return flag.ErrHelp
	}
	stores, err := bench.ParseStorage(*storage)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return bench.Run(ctx, scenario, bench.Options{
		Exe: exe, Duration: *duration, Events: *events, Kills: *kills, Interval: *interval, Out: *out, Keep: *keep, Visibility: *visibility, Log: os.Stdout,
		Storage: stores,
	})
}
