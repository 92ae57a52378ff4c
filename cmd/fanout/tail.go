package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/fanout/fanout/internal/debugger"
)

// runTail follows a source's live events from the admin API's event
// stream and prints one line per event and per outcome change, or the raw
// JSON with --raw.
func runTail(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	source := fs.String("source", "", "name of the source to follow (required)")
	raw := fs.Bool("raw", false, "print each update as JSON instead of one line")
	admin := adminFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *source == "" {
		return errors.New("--source is required")
	}
	req, err := admin.request(ctx, http.MethodGet, "/api/v1/sources/"+url.PathEscape(*source)+"/events/stream")
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s answered %s: %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(os.Stderr, "following source %s at %s (Ctrl-C to stop)\n", *source, admin.url)
	err = follow(resp.Body, os.Stdout, *raw)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// follow reads server-sent events from r and prints them to w.
func follow(r io.Reader, w io.Writer, raw bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	kind := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			if raw {
				fmt.Fprintf(w, "{\"kind\":%q,\"event\":%s}\n", kind, data)
				continue
			}
			if kind == "nodes" {
				// In a cluster: the nodes whose events the stream shows.
				fmt.Fprintln(w, nodesLine(data))
				continue
			}
			var ev debugger.Event
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				fmt.Fprintln(w, data)
				continue
			}
			fmt.Fprintln(w, pretty(kind, &ev))
		}
	}
	return sc.Err()
}

// nodesLine formats a cluster stream's "nodes" event, such as
// `nodes: a, b; unreachable: c (unreachable: connection refused)`.
func nodesLine(data string) string {
	var ns []struct {
		Name      string `json:"name"`
		Reachable bool   `json:"reachable"`
		Error     string `json:"error"`
	}
	if err := json.Unmarshal([]byte(data), &ns); err != nil {
		return "nodes: " + data
	}
	var up, down []string
	for _, n := range ns {
		if n.Reachable {
			up = append(up, n.Name)
		} else {
			down = append(down, fmt.Sprintf("%s (%s)", n.Name, n.Error))
		}
	}
	line := "nodes: " + strings.Join(up, ", ")
	if len(down) > 0 {
		line += "; unreachable: " + strings.Join(down, ", ")
	}
	return line
}

// pretty formats an update on one line, such as
// `12:00:01 track "Order Completed" user=u1 -> local-sink delivered`.
func pretty(kind string, ev *debugger.Event) string {
	var p struct {
		Event       string `json:"event"`
		Name        string `json:"name"`
		UserID      string `json:"userId"`
		AnonymousID string `json:"anonymousId"`
	}
	json.Unmarshal(ev.Payload, &p)
	var b strings.Builder
	b.WriteString(ev.ReceivedAt.Local().Format("15:04:05"))
	b.WriteString(" " + ev.Type)
	if name := p.Event + p.Name; name != "" {
		fmt.Fprintf(&b, " %q", name)
	}
	switch {
	case p.UserID != "":
		b.WriteString(" user=" + p.UserID)
	case p.AnonymousID != "":
		b.WriteString(" anon=" + p.AnonymousID)
	}
	if kind == "outcome" {
		b.WriteString(" (update)")
	}
	for i, o := range ev.Destinations {
		if i == 0 {
			b.WriteString(" ->")
		} else {
			b.WriteString(",")
		}
		b.WriteString(" " + o.Destination + " " + o.Status)
		if o.Attempts > 1 {
			fmt.Fprintf(&b, " (%d attempts)", o.Attempts)
		}
		if o.Reason != "" {
			fmt.Fprintf(&b, " [%s]", o.Reason)
		}
	}
	return b.String()
}
