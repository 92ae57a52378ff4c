// Package logtest gives tests a buffer to log to from many goroutines at
// once (a server's, an engine's, a cluster node's) and to read back while
// they still run.
package logtest

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"sync"
)

// Buffer collects what loggers write, from any number of goroutines. The
// zero value is empty and ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p, whole: a log line is never interleaved with another.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Reset empties b.
func (b *Buffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.Reset()
}

// Lines returns the lines written so far that hold every one of subs.
func (b *Buffer) Lines(subs ...string) []string {
	var out []string
	for line := range strings.Lines(b.String()) {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(line, s) }) {
			out = append(out, line)
		}
	}
	return out
}

// Logger returns a logger that writes the records of level and above to
// b, as text (slog.TextHandler).
func (b *Buffer) Logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: level}))
}
