package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/fanout/fanout/internal/sendcmd"
)

// runSend sends events to a running server through the tracking API.
func runSend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `usage: fanout send [flags]

Sends one event to /v1/<type> and prints the answer, or with --count N sends
N events in batches to /v1/batch, paced by --rate, and prints a summary. Exits
non-zero when any event was not accepted.

  fanout send --write-key wk_web_example --event "Order Completed" --user-id u1 --properties '{"revenue":10}'
  fanout send --write-key wk_web_example --event "Page Viewed" --count 100000 --rate 5000

flags:`)
		fs.PrintDefaults()
	}
	var o sendcmd.Options
	var properties, traits string
	fs.StringVar(&o.URL, "url", "http://127.0.0.1:8080", "tracking API base URL")
	fs.StringVar(&o.WriteKey, "write-key", "", "the source's write key (required)")
	fs.StringVar(&o.Type, "type", "track", "call type: track, identify, page, screen, group or alias")
	fs.StringVar(&o.Event, "event", "", "event name (track), or page or screen name")
	fs.StringVar(&o.UserID, "user-id", "", "userId; without it and --anonymous-id, an anonymousId per run is used")
	fs.StringVar(&o.AnonymousID, "anonymous-id", "", "anonymousId")
	fs.StringVar(&o.GroupID, "group-id", "", "groupId (group)")
	fs.StringVar(&o.PreviousID, "previous-id", "", "previousId (alias)")
	fs.StringVar(&properties, "properties", "", "properties as a JSON object")
	fs.StringVar(&traits, "traits", "", "traits as a JSON object (identify, group)")
	fs.IntVar(&o.Count, "count", 1, "number of events; more than 1 sends batches to /v1/batch")
	fs.Float64Var(&o.Rate, "rate", 0, "events per second; 0 means as fast as the server takes them")
	fs.IntVar(&o.Batch, "batch", 100, "most events per /v1/batch request")
	fs.IntVar(&o.Concurrency, "concurrency", 8, "most requests in flight")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if properties != "" {
		o.Properties = json.RawMessage(properties)
	}
	if traits != "" {
		o.Traits = json.RawMessage(traits)
	}
	o.Out = os.Stdout
	o.Progress = os.Stderr
	o.ProgressTTY = isTerminal(os.Stderr)
	_, err := sendcmd.Run(ctx, o)
	return err
}

// isTerminal reports whether f is a character device, which is what a
// terminal is; a file or a pipe gets plain progress lines instead of a bar.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
