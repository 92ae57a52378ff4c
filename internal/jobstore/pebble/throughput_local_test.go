package pebble

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

func TestThroughputLocal(t *testing.T) {
	dir := os.Getenv("TP_DIR")
	if dir == "" {
		t.Skip()
	}
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pad := strings.Repeat("x", 120)
	var n atomic.Int64
	var calls atomic.Int64
	deadline := time.Now().Add(10 * time.Second)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				entries := make([]jobstore.Entry, 100)
				for k := range entries {
					id := fmt.Sprintf("%08d-%04d-%06d-%03d-0000", g, 0, i, k)
					p := fmt.Sprintf(`{"type":"track","event":"Order Completed","userId":"user-%d","messageId":"%s","properties":{"revenue":42.5,"pad":"%s"},"timestamp":"2026-03-14T12:00:00Z"}`, g, id, pad)
					entries[k] = jobstore.Entry{Event: event.Event{Source: "web", MessageID: id, Type: event.Track, ReceivedAt: time.Now(), Payload: []byte(p)}, Destinations: []string{"hook"}}
				}
				if _, err := s.Append(context.Background(), entries); err != nil {
					t.Error(err)
					return
				}
				n.Add(100)
				calls.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("cache %+v", s.db.Metrics().BlockCache)
	t.Logf("durable append: %d events in %s = %.0f events/s (%d calls, payload ~%d bytes)", n.Load(), el, float64(n.Load())/el.Seconds(), calls.Load(), 300)
}
