package logtest

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Loggers in many goroutines write whole lines to one Buffer, which reads
// them back while they write (go test -race checks the locking), Lines
// picks those that hold every string asked for, and Reset empties it.
func TestBuffer(t *testing.T) {
	const writers, each = 8, 100
	var b Buffer
	log := b.Logger(slog.LevelInfo)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				log.Debug("dropped", "w", w)
				log.Info("line", "w", w, "i", i)
				_ = b.String()
			}
		})
	}
	wg.Wait()

	tests := []struct {
		subs []string
		want int
	}{
		{nil, writers * each},
		{[]string{"level=INFO", "msg=line"}, writers * each},
		{[]string{"w=3 "}, each},
		{[]string{"w=3 ", "i=7\n"}, 1},
		{[]string{"dropped"}, 0},
	}
	for _, tt := range tests {
		got := b.Lines(tt.subs...)
		if len(got) != tt.want {
			t.Errorf("Lines(%q): %d lines, want %d", tt.subs, len(got), tt.want)
		}
	}
	for _, line := range b.Lines() {
		if !strings.HasPrefix(line, "time=") || !strings.HasSuffix(line, "\n") || strings.Count(line, "time=") != 1 {
			t.Fatalf("line %q is not one whole record", line)
		}
	}
	if got := b.Lines("w=3 ", "i=7\n"); len(got) != 1 || !strings.Contains(got[0], "msg=line w=3 i=7\n") {
		t.Errorf("Lines(w=3, i=7) = %q, want writer 3's 8th line", got)
	}
	b.Reset()
	if got := b.String(); got != "" {
		t.Errorf("after Reset: %q", got)
	}
}
