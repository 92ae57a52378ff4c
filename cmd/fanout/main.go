// Command fanout is the event delivery engine: one binary that runs the
// tracking API, delivery, and the admin API, plus tools to drive and observe it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// commands maps each subcommand to its entry point. Each lives in its own file.
var commands = map[string]struct {
	run     func(ctx context.Context, args []string) error
	summary string
}{
	"serve":  {runServe, "run the tracking API, delivery and the admin API"},
	"send":   {runSend, "send events to a running server"},
	"sink":   {runSink, "a stand-in destination with fault injection"},
	"tail":   {runTail, "follow a source's live events and their outcomes"},
	"bench":  {runBench, "run a benchmark scenario and print its figures"},
	"replay": {runReplay, "re-deliver archived events of a source to a destination"},
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "fanout: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "fanout %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: fanout <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", n, commands[n].summary)
	}
}
