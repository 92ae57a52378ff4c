package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// soakDestinations are the soak's destinations, in the order of its config
// and its table, each with the `fanout sink` flags that make it what it is.
// The flapping one is toggled by the scenario itself (soakFlap).
var soakDestinations = []struct {
	name  string
	flags []string
	// delivery is the destination's delivery block, if any.
	delivery string
}{
	{"healthy", nil, ""},
	{"slow", []string{"--latency", "100ms", "--latency-jitter", "400ms"}, ""},
	// failing answers half its requests 500, some 200 with an error body
	// (rejected) and some never; a short retry window archives what keeps
	// failing, so archive writes happen all along.
	{"failing", []string{"--fail-rate", "0.5", "--error-body-rate", "0.05", "--timeout-rate", "0.01"},
		"{retry_window: 30s, timeout: 2s}"},
	// limited allows twice the offered rate but a burst of only 20, so
	// the bursts that follow a pause or a slow moment meet 429s with
	// Retry-After. It answers in 50 ms, as a remote API would: with no
	// latency even one request at a time overruns any limit. It sends no
	// random 429s: each pauses the queue for its Retry-After, and a few a
	// second keep it paused. (At 150/s with a burst of 10, fanout delivered
	// 37 requests/s to it: a backlog that grows, see BENCHMARKS.md.)
	{"limited", []string{"--rate-limit", "200", "--rate-burst", "20", "--retry-after", "1s", "--latency", "50ms"}, ""},
	{"flapping", nil, ""},
}

const (
	// soakRate is the load: events/s into the one source, sent in batches
	// of soakBatch; every event goes to each destination.
	soakRate  = 100
	soakBatch = 10
	// soakFlapPeriod and soakFlapDown: the flapping destination answers
	// 503 to everything for soakFlapDown of every soakFlapPeriod.
	soakFlapPeriod = time.Minute
	soakFlapDown   = 15 * time.Second
)

// Growth rule. The first samples, up to soakWarmup of the run (at least
// one sample), are left out: caches, pools and the store's first
// memtables fill there. The rest are split in thirds by count, and a
// measure grows without bound when the largest value of the last third
// exceeds the largest of the first third by more than soakTolerance of it
// plus the measure's slack: an absolute allowance for noise that a
// short run cannot average away (a memtable flush, a GC cycle, a queue
// caught mid-flap). A measure that only leaks slowly passes a short run
// and fails a long one, since the allowance does not grow with time.
const soakTolerance = 0.25

// soakSlack is each measure's absolute allowance.
var soakSlack = map[string]float64{
	"rss_bytes":        32 << 20,
	"heap_inuse_bytes": 16 << 20,
	"goroutines":       32,
	"open_fds":         16,
	"store_bytes":      64 << 20,
	// A queue may hold about 30 s of load (3,000 jobs) more at the end
	// than at the start: the flapping destination's backlog after a down
	// phase, the failing one's retries within its window.
	"queue_depth": 30 * soakRate,
}

// SoakResult holds the soak scenario's figures.
type SoakResult struct {
	Scenario    string       `json:"scenario"`
	DurationSec float64      `json:"duration_s"`
	IntervalSec float64      `json:"interval_s"`
	WarmupSec   float64      `json:"warmup_s"`
	RatePerSec  float64      `json:"offered_events_per_sec"`
	Acked       int64        `json:"acked_events"`
	Failed      int64        `json:"failed_events"`
	Samples     []SoakSample `json:"samples"`
	// Checks holds the growth rule applied to each measure.
	Checks []SoakCheck `json:"checks"`
	// Sinks are what each destination's sink accepted, by name.
	Sinks map[string]uint64 `json:"sink_accepted_unique"`
	Grew  []string          `json:"grew"`
}

// SoakSample is the server's state at one moment.
type SoakSample struct {
	AtSec          float64 `json:"at_s"`
	RSSBytes       int64   `json:"rss_bytes"`
	HeapInuseBytes int64   `json:"heap_inuse_bytes"`
	Goroutines     int64   `json:"goroutines"`
	OpenFDs        int64   `json:"open_fds"`
	// StoreBytes is the space data_dir takes, the archive left out: it
	// grows by design, with every event that runs out of retry window, so
	// it is reported (ArchiveBytes) but not judged.
	StoreBytes   int64            `json:"store_bytes"`
	ArchiveBytes int64            `json:"archive_bytes"`
	Depth        map[string]int64 `json:"queue_depth"`
}

// SoakCheck is the growth rule applied to one measure.
type SoakCheck struct {
	Measure  string  `json:"measure"`
	FirstMax float64 `json:"first_third_max"`
	LastMax  float64 `json:"last_third_max"`
	Limit    float64 `json:"limit"`
	Grew     bool    `json:"grew"`
}

func runSoak(ctx context.Context, e *env) (any, error) {
	var pipeline strings.Builder
	pipeline.WriteString("sources:\n  - {name: web, write_key: wk_soak}\ndestinations:\n")
	addrs := map[string]string{}
	for _, d := range soakDestinations {
		addr, _, err := e.startSink(d.name, d.flags...)
		if err != nil {
			return nil, err
		}
		addrs[d.name] = addr
		fmt.Fprintf(&pipeline, "  - name: %s\n    type: webhook\n    sources: [web]\n    settings: {url: \"http://%s/%s\"}\n", d.name, addr, d.name)
		if d.delivery != "" {
			fmt.Fprintf(&pipeline, "    delivery: %s\n", d.delivery)
		}
	}
	srv, err := e.startServer("fanout", pipeline.String(), "")
	if err != nil {
		return nil, err
	}
	pid := srv.cmd.Process.Pid
	warmup := max(e.opts.Duration/10, e.opts.Interval)
	res := &SoakResult{Scenario: "soak", DurationSec: e.opts.Duration.Seconds(), IntervalSec: e.opts.Interval.Seconds(),
		WarmupSec: warmup.Seconds(), RatePerSec: soakRate, Sinks: map[string]uint64{}}
	e.logf("load: %d events/s in batches of %d into %d destinations (healthy, slow, failing, rate-limiting, flapping) for %v; a sample every %v",
		soakRate, soakBatch, len(soakDestinations), e.opts.Duration, e.opts.Interval)

	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	var lr loadResult
	wg.Add(2)
	go func() {
		defer wg.Done()
		lr = load{t: newTracker(srv.track, "wk_soak"), source: "web", rate: soakRate, batch: soakBatch, workers: 4, prefix: "s"}.run(lctx, 0)
	}()
	go func() {
		defer wg.Done()
		soakFlap(lctx, addrs["flapping"])
	}()

	start := time.Now()
	tick := time.NewTicker(e.opts.Interval)
	defer tick.Stop()
	w := tabwriter.NewWriter(e.opts.Log, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(w, "  t\tRSS MB\theap MB\tgoroutines\tfds\tstore MB\tarchive MB\t")
	for _, d := range soakDestinations {
		fmt.Fprintf(w, "%s\t", d.name)
	}
	fmt.Fprintln(w)
	w.Flush()
	var sampleErr error
loop:
	for time.Since(start) < e.opts.Duration {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		s, err := soakSample(pid, srv)
		if err != nil {
			sampleErr = err
			break
		}
		s.AtSec = time.Since(start).Seconds()
		res.Samples = append(res.Samples, s)
		fmt.Fprintf(w, "  %s\t%.0f\t%.0f\t%d\t%d\t%.0f\t%.1f\t", time.Duration(s.AtSec*float64(time.Second)).Round(time.Second),
			float64(s.RSSBytes)/(1<<20), float64(s.HeapInuseBytes)/(1<<20), s.Goroutines, s.OpenFDs,
			float64(s.StoreBytes)/(1<<20), float64(s.ArchiveBytes)/(1<<20))
		for _, d := range soakDestinations {
			fmt.Fprintf(w, "%d\t", s.Depth[d.name])
		}
		fmt.Fprintln(w)
		w.Flush()
	}
	stopLoad()
	wg.Wait()
	res.Acked, res.Failed = lr.acked, lr.failed
	for name, addr := range addrs {
		if st, err := sinkStats(addr); err == nil {
			res.Sinks[name] = st.Unique
		}
	}
	if sampleErr != nil {
		return nil, sampleErr
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	res.Checks = soakChecks(res.Samples, warmup)
	rows := [][2]string{
		{"events acknowledged (refused)", fmt.Sprintf("%d (%d)", res.Acked, res.Failed)},
		{"rule", fmt.Sprintf("after %v of warm-up, last third's max <= first third's max + %.0f%% + slack", warmup, soakTolerance*100)},
	}
	for _, c := range res.Checks {
		verdict := "flat"
		if c.Grew {
			verdict = "GREW"
			res.Grew = append(res.Grew, c.Measure)
		}
		rows = append(rows, [2]string{c.Measure, fmt.Sprintf("first %.0f, last %.0f, limit %.0f: %s", c.FirstMax, c.LastMax, c.Limit, verdict)})
	}
	if len(res.Checks) == 0 {
		rows = append(rows, [2]string{"verdict", fmt.Sprintf("not judged: %d samples after warm-up, 3 needed", max(0, len(res.Samples)-warmupSamples(res.Samples, warmup)))})
	}
	e.table(rows)
	if len(res.Grew) > 0 {
		return res, fmt.Errorf("grew without bound: %s", strings.Join(res.Grew, ", "))
	}
	return res, nil
}

// soakFlap takes the sink at addr down for soakFlapDown of every
// soakFlapPeriod until ctx ends, and leaves it up.
func soakFlap(ctx context.Context, addr string) {
	defer sinkPost(addr, "up")
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(soakFlapPeriod - soakFlapDown):
		}
		sinkPost(addr, "down")
		select {
		case <-ctx.Done():
			return
		case <-time.After(soakFlapDown):
		}
		sinkPost(addr, "up")
	}
}

// soakSample reads the server process's state: RSS from /proc/PID/status,
// open files from /proc/PID/fd, heap and goroutines and queue depths from
// its /metrics, and the size of its data_dir.
func soakSample(pid int, srv *server) (SoakSample, error) {
	var s SoakSample
	var err error
	if s.RSSBytes, err = rss(pid); err != nil {
		return s, err
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.OpenFDs = int64(len(fds))
	m, err := scrape(srv.admin + "/metrics")
	if err != nil {
		return s, err
	}
	s.HeapInuseBytes = int64(m["go_memstats_heap_inuse_bytes"][""])
	s.Goroutines = int64(m["go_goroutines"][""])
	s.Depth = map[string]int64{}
	for labels, v := range m["fanout_queue_depth"] {
		s.Depth[strings.TrimSuffix(strings.TrimPrefix(labels, `destination="`), `"`)] = int64(v)
	}
	archive := filepath.Join(srv.dataDir, "archive")
	total, err := diskUsage(srv.dataDir)
	if err != nil {
		return s, err
	}
	if s.ArchiveBytes, err = diskUsage(archive); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return s, err
	}
	s.StoreBytes = total - s.ArchiveBytes
	return s, nil
}

// scrape reads a Prometheus text exposition: metric name -> labels as
// written between the braces ("" for none) -> value.
func scrape(url string) (map[string]map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	out := map[string]map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name, labels := line[:sp], ""
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], strings.TrimSuffix(name[i+1:], "}")
		}
		if out[name] == nil {
			out[name] = map[string]float64{}
		}
		out[name][labels] = v
	}
	return out, sc.Err()
}

// diskUsage is the space the files under dir take on disk, as du counts it.
// Files that vanish during the walk (a compaction's inputs) are skipped.
func diskUsage(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// warmupSamples counts the samples taken before warmup ended: at least one.
func warmupSamples(samples []SoakSample, warmup time.Duration) int {
	n := 1
	for n < len(samples) && samples[n].AtSec < warmup.Seconds() {
		n++
	}
	return min(n, len(samples))
}

// soakChecks applies the growth rule (see soakTolerance) to each measure;
// nil when fewer than three samples follow the warm-up.
func soakChecks(samples []SoakSample, warmup time.Duration) []SoakCheck {
	judged := samples[warmupSamples(samples, warmup):]
	third := len(judged) / 3
	if third == 0 {
		return nil
	}
	first, last := judged[:third], judged[len(judged)-third:]
	check := func(measure, slack string, get func(SoakSample) float64) SoakCheck {
		c := SoakCheck{Measure: measure}
		for _, s := range first {
			c.FirstMax = max(c.FirstMax, get(s))
		}
		for _, s := range last {
			c.LastMax = max(c.LastMax, get(s))
		}
		c.Limit = c.FirstMax*(1+soakTolerance) + soakSlack[slack]
		c.Grew = c.LastMax > c.Limit
		return c
	}
	out := []SoakCheck{
		check("rss_bytes", "rss_bytes", func(s SoakSample) float64 { return float64(s.RSSBytes) }),
		check("heap_inuse_bytes", "heap_inuse_bytes", func(s SoakSample) float64 { return float64(s.HeapInuseBytes) }),
		check("goroutines", "goroutines", func(s SoakSample) float64 { return float64(s.Goroutines) }),
		check("open_fds", "open_fds", func(s SoakSample) float64 { return float64(s.OpenFDs) }),
		check("store_bytes", "store_bytes", func(s SoakSample) float64 { return float64(s.StoreBytes) }),
	}
	for _, d := range soakDestinations {
		out = append(out, check("queue_depth "+d.name, "queue_depth", func(s SoakSample) float64 { return float64(s.Depth[d.name]) }))
	}
	return out
}
