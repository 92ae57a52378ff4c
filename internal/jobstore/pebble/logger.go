package pebble

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	pebbledb "github.com/cockroachdb/pebble/v2"
)

// Logger sends Pebble's log lines to slog. Every Pebble database fanout
// opens logs through it: the job store's and the stats store's.
type Logger struct {
	// Log receives the lines.
	Log *slog.Logger
	// InfoLevel is the level of Pebble's informational lines. Default
	// slog.LevelInfo; a database whose routine lines are noise lowers it.
	InfoLevel slog.Level
}

var _ pebbledb.Logger = Logger{}

// Infof logs an informational line at InfoLevel.
func (p Logger) Infof(format string, args ...any) {
	p.Log.Log(context.Background(), p.InfoLevel, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// Errorf logs an error line.
func (p Logger) Errorf(format string, args ...any) {
	p.Log.Error(strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// Fatalf is called by Pebble when it cannot go on safely (for instance a
// failed WAL sync); like Pebble's default logger it must not return.
func (p Logger) Fatalf(format string, args ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, args...))
	p.Log.Error(msg, "fatal", true)
	panic("pebble: " + msg)
}
