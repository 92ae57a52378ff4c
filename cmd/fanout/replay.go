package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// runReplay asks a running server to re-deliver the archived events of one
// (source, destination) received in a time range: they get a job each again,
// past deduplication, with a fresh retry window.
func runReplay(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	source := fs.String("source", "", "source of the archived events (required)")
	destination := fs.String("destination", "", "destination to deliver them to again (required)")
	from := fs.String("from", "", "first receivedAt to replay, RFC 3339 (default: --range before --to)")
	to := fs.String("to", "", "end of the range, RFC 3339, exclusive (default: now)")
	span := fs.String("range", "24h", "length of the range when --from is not given: 1h, 24h, 7d")
	admin := adminFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *source == "" || *destination == "" {
		return errors.New("--source and --destination are required")
	}
	q := url.Values{"source": {*source}, "destination": {*destination}, "range": {*span}}
	if *from != "" {
		q.Set("from", *from)
	}
	if *to != "" {
		q.Set("to", *to)
	}
	req, err := admin.request(ctx, http.MethodPost, "/api/v1/replay?"+q.Encode())
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s: %s", admin.url, resp.Status, strings.TrimSpace(string(body)))
	}
	var res struct {
		Replayed int `json:"replayed"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return fmt.Errorf("%s answered %q: %w", admin.url, body, err)
	}
	fmt.Printf("replayed %d archived events of %s to %s\n", res.Replayed, *source, *destination)
	return nil
}
