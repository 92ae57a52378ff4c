package ingest

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/jsonscan"
	"github.com/fanout/fanout/internal/router"
)

// benchEvent is a track call the way analytics.js sends one, about 750 bytes.
const benchEvent = `{"type":"track","event":"Order Completed","userId":"user-%d","anonymousId":"3f1e7a3c-5c1b-4a8e-9a3e-2b6d1c0f9e42",` +
	`"messageId":"ajs-next-1714564800000-%d","timestamp":"2024-05-01T11:59:58.120Z","sentAt":"2024-05-01T11:59:58.250Z",` +
	`"properties":{"orderId":"50314b8e9bcf000000000000","total":27.5,"revenue":25.0,"shipping":3,"tax":2.5,"currency":"USD",` +
	`"products":[{"product_id":"507f1f77bcf86cd799439011","sku":"45790-32","name":"Monopoly: 3rd Edition","price":19,"quantity":1}]},` +
	`"context":{"ip":"203.0.113.7","locale":"en-US","page":{"path":"/checkout","referrer":"","title":"Checkout","url":"https://example.com/checkout"},` +
	`"userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",` +
	`"library":{"name":"analytics.js","version":"next-1.70.0"}},"integrations":{}}`

func benchBatch(n int) []byte {
	events := make([]string, n)
	for i := range events {
		events[i] = fmt.Sprintf(benchEvent, i, i)
	}
	return []byte(`{"batch":[` + strings.Join(events, ",") + `],"sentAt":"2024-05-01T11:59:58.300Z"}`)
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkParseBatch measures the CPU cost per event of everything between
// reading the body and calling Store.Append: validation, routing and
// building the payloads. Its "cpu-ns/event" is the figure to watch:
//
//	go test -run XXX -bench ParseBatch -cpu 1 ./internal/ingest
func BenchmarkParseBatch(b *testing.B) {
	cfg := &config.Config{Destinations: []config.Destination{
		{Name: "hooks", Type: "webhook", Sources: []string{"web"}},
	}}
	h := &Handler{router: router.New(cfg, destinations.Registry{"webhook": {Type: "webhook"}}), now: time.Now}
	for _, n := range []int{1, 100} {
		body := benchBatch(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				if jsonscan.Validate(body) != nil || !utf8.Valid(body) {
					b.Fatal("invalid")
				}
				p := parserPool.Get().(*parser)
				p.scan(body, true)
				entries, rejected, err := h.events(p, "", "web", body)
				if err != nil || len(rejected) > 0 || len(entries) != n {
					b.Fatal(err, rejected)
				}
				p.clear()
				parserPool.Put(p)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
			// CPU time, GC included, tells more than wall time on a shared
			// machine; run with -cpu 1 so that it is this benchmark's.
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N*n), "cpu-ns/event")
		})
	}
}
