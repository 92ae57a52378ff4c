package bench

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/jobstore"
)

// crashConfig is one source delivered to two webhooks: "sink", which
// accepts everything, and "flaky", which fails most requests and has a
// retry window of a few seconds, so that jobs are archived all the time
// and kills land in archive writes too.
const crashConfig = `sources:
  - name: web
    write_key: wk_bench
destinations:
  - name: sink
    type: webhook
    sources: [web]
    settings: {url: "http://%s/hook"}
  - name: flaky
    type: webhook
    sources: [web]
    settings: {url: "http://%s/flaky"}
    delivery: {retry_window: 3s, timeout: 2s}
`

// The moments a kill is aimed at. SIGKILL at a random time under load
// lands in whatever the server is doing then: group commits (the load
// keeps them going), memtable flushes and compactions (they follow the
// writes), archive writes (the flaky destination's window runs out every
// few seconds). The other modes aim at what a random time rarely hits:
// recovery right after start, and shutdown after SIGTERM.
const (
	killUnderLoad = "under load"        // 0-3 s after the server is ready
	killStartup   = "during start-up"   // 0-300 ms after the process starts, ready or not
	killShutdown  = "during shutdown"   // 0-500 ms after a SIGTERM sent under load
	killQuick     = "right after ready" // 0-50 ms after it answers /healthz: recovery's first writes
)

// CrashResult holds the crash scenario's figures.
type CrashResult struct {
	Scenario string `json:"scenario"`
	Kills    int    `json:"kills"`
	// KillModes counts the kills by the moment they were aimed at.
	KillModes  map[string]int `json:"kill_modes"`
	Acked      int            `json:"acked_events"`
	Delivered  uint64         `json:"delivered_unique"`
	Lost       int            `json:"lost"`
	Duplicates uint64         `json:"duplicates"`
	// Flaky is the archiving destination: every acknowledged event must
	// have reached it, been archived, or still wait in the store.
	Flaky FlakyResult `json:"flaky"`
}

// FlakyResult is what became of the acknowledged events at the flaky
// destination.
type FlakyResult struct {
	Delivered int `json:"delivered"`
	// Archived counts the events archive.Read returns, as replay would.
	Archived int `json:"archived"`
	// ArchivedUnreadable counts the events in archive files past a point
	// where the gzip stream breaks (a member torn by a kill): on disk, but
	// not returned by archive.Read. They count as lost too.
	ArchivedUnreadable int `json:"archived_unreadable"`
	Queued             int `json:"queued"`
	Lost               int `json:"lost"`
	// UnreadableArchives are the archive files whose gzip stream breaks,
	// with where and why.
	UnreadableArchives []string `json:"unreadable_archives,omitempty"`
}

func runCrash(ctx context.Context, e *env) (any, error) {
	record := filepath.Join(e.opts.Dir, "received.jsonl")
	sinkAddr, sinkProc, err := e.startSink("sink", "--record", record)
	if err != nil {
		return nil, err
	}
	flakyRecord := filepath.Join(e.opts.Dir, "flaky-received.jsonl")
	flakyAddr, flakyProc, err := e.startSink("flaky", "--record", flakyRecord, "--fail-rate", "0.8")
	if err != nil {
		return nil, err
	}
	srv, err := e.startServer("fanout", fmt.Sprintf(crashConfig, sinkAddr, flakyAddr), "")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(e.opts.Dir, "fanout.yaml")
	res := CrashResult{Scenario: "crash", Kills: e.opts.Kills, KillModes: map[string]int{}}

	e.logf("load: 5,000 events/s in 100-event batches; SIGKILL the server %d times", res.Kills)
	stopLoad := load{t: newTracker(srv.track, "wk_bench"), source: "web", rate: 5000, batch: 100, workers: 8, prefix: "c", keep: true}.background(ctx)
	fail := func(err error) (any, error) {
		stopLoad()
		return nil, err
	}
	cur := srv.proc
	ready := true // cur answered /healthz
	for k := range res.Kills {
		mode := killUnderLoad
		switch r := rand.Float64(); {
		case r < 0.15:
			mode = killStartup
		case r < 0.40:
			mode = killShutdown
		case r < 0.55:
			mode = killQuick
		}
		if !ready && mode != killStartup {
			if err := waitHTTP(srv.admin+"/healthz", cur); err != nil {
				return fail(err)
			}
			ready = true
		}
		switch mode {
		case killUnderLoad:
			sleepRandom(0, 3*time.Second)
		case killQuick:
			sleepRandom(0, 50*time.Millisecond)
		case killShutdown:
			sleepRandom(500*time.Millisecond, 2*time.Second)
			cur.cmd.Process.Signal(syscall.SIGTERM)
			sleepRandom(0, 500*time.Millisecond)
		case killStartup:
			// The process started moments ago (or, for the first kill,
			// runs under load): the kill lands in opening the store,
			// recovery or the first requests.
			sleepRandom(0, 300*time.Millisecond)
		}
		res.KillModes[mode]++
		e.logf("kill %d/%d: %s", k+1, res.Kills, mode)
		cur.kill()
		p, err := e.start(fmt.Sprintf("fanout-restart-%d", k+1), "serve", "--config", cfgPath, "--log-level", "warn")
		if err != nil {
			return fail(err)
		}
		cur, ready = p, false
	}
	if err := waitHTTP(srv.admin+"/healthz", cur); err != nil {
		return fail(err)
	}
	time.Sleep(time.Second)
	lr := stopLoad()
	res.Acked = len(lr.ids)
	e.logf("waiting for the %d acknowledged events", res.Acked)
	_, s, err := waitAccepted(sinkAddr, uint64(res.Acked), 5*time.Minute)
	if err != nil {
		e.logf("%v", err)
	}
	res.Delivered, res.Duplicates = s.Unique, s.Duplicates
	// The flaky destination settles within its retry window and backoff:
	// wait until it has no jobs left (delivered or archived). The depth
	// gauge is approximate after a crash, so wait too until its sink has
	// had no request for 5 s.
	if err := waitSettled(srv.admin, flakyAddr, "flaky", 5*time.Second, 2*time.Minute); err != nil {
		e.logf("%v", err)
	}
	cur.stop()
	sinkProc.stop() // flushes its record file
	flakyProc.stop()
	res.Lost, _, err = e.unaccounted(srv.dataDir, "sink", lr.ids, record)
	if err != nil {
		return nil, err
	}
	if res.Flaky, err = e.flakyOutcome(srv.dataDir, lr.ids, flakyRecord); err != nil {
		return nil, err
	}
	if res.Lost > 0 || res.Flaky.Lost > 0 {
		fmt.Fprintf(os.Stderr, "LOST %d acknowledged events at sink, %d at flaky\n", res.Lost, res.Flaky.Lost)
	}
	for _, u := range res.Flaky.UnreadableArchives {
		fmt.Fprintf(os.Stderr, "UNREADABLE ARCHIVE %s\n", u)
	}
	modes := make([]string, 0, len(res.KillModes))
	for m, n := range res.KillModes {
		modes = append(modes, fmt.Sprintf("%d %s", n, m))
	}
	sort.Strings(modes)
	e.table([][2]string{
		{"SIGKILLs under load", fmt.Sprintf("%d (%s)", res.Kills, strings.Join(modes, ", "))},
		{"acknowledged events", fmt.Sprint(res.Acked)},
		{"sink: delivered (unique)", fmt.Sprint(res.Delivered)},
		{"sink: lost", fmt.Sprint(res.Lost)},
		{"sink: duplicates", fmt.Sprint(res.Duplicates)},
		{"flaky: delivered / archived / queued", fmt.Sprintf("%d / %d / %d", res.Flaky.Delivered, res.Flaky.Archived, res.Flaky.Queued)},
		{"flaky: lost (in an unreadable archive)", fmt.Sprintf("%d (%d)", res.Flaky.Lost, res.Flaky.ArchivedUnreadable)},
		{"flaky: archive files with a torn member", fmt.Sprint(len(res.Flaky.UnreadableArchives))},
	})
	return res, nil
}

// sleepRandom sleeps for a uniformly random time in [lo, hi).
func sleepRandom(lo, hi time.Duration) {
	time.Sleep(lo + rand.N(hi-lo+1))
}

// waitSettled waits until the server's fanout_queue_depth for dest is 0
// and the destination's sink at addr has received no request for quiet.
func waitSettled(admin, addr, dest string, quiet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last uint64
	lastChange := time.Now()
	for {
		m, err := scrape(admin + "/metrics")
		if err != nil {
			return err
		}
		st, err := sinkStats(addr)
		if err != nil {
			return err
		}
		if st.Requests != last {
			last, lastChange = st.Requests, time.Now()
		}
		d := m["fanout_queue_depth"][`destination="`+dest+`"`]
		if d == 0 && time.Since(lastChange) >= quiet {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %.0f jobs, last request %v ago, after %v", dest, d, time.Since(lastChange).Round(time.Second), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// flakyOutcome sorts the acknowledged events by what became of them at the
// flaky destination: delivered (in its sink's record), archived (in the
// stopped server's archive) or still queued; the rest are lost.
func (e *env) flakyOutcome(dataDir string, acked []string, record string) (FlakyResult, error) {
	var r FlakyResult
	got, err := recordedIDs(record)
	if err != nil {
		return r, err
	}
	archived, torn := map[string]bool{}, map[string]bool{}
	files, err := filepath.Glob(filepath.Join(dataDir, "archive", "web", "flaky", "*.jsonl.gz"))
	if err != nil {
		return r, err
	}
	for _, f := range files {
		recs, err := archive.Read(f)
		if err != nil {
			r.UnreadableArchives = append(r.UnreadableArchives, fmt.Sprintf("%s: archive.Read: %v", f, err))
		}
		for _, rec := range recs {
			archived[rec.MessageID] = true
		}
		ids, breaks, err := salvageArchive(f)
		if err != nil {
			return r, err
		}
		if len(breaks) > 0 {
			r.UnreadableArchives = append(r.UnreadableArchives, fmt.Sprintf("%s: gzip stream breaks at %s", f, strings.Join(breaks, "; ")))
		}
		for _, id := range ids {
			if !archived[id] {
				torn[id] = true
			}
		}
	}
	// With storage.postgres the archive is the database's archive table.
	if e.storage == StorePostgres {
		ids, err := e.archivedInDB(dataDir, jobstore.Queue{Source: "web", Destination: "flaky"})
		if err != nil {
			return r, err
		}
		for _, id := range ids {
			archived[id] = true
		}
	}
	queued, err := e.queuedIDs(dataDir, "flaky")
	if err != nil {
		return r, err
	}
	for _, id := range acked {
		switch {
		case got[id]:
			r.Delivered++
		case archived[id]:
			r.Archived++
		case queued[id]:
			r.Queued++
		case torn[id]:
			r.ArchivedUnreadable++
			r.Lost++
		default:
			r.Lost++
		}
	}
	return r, nil
}

// salvageArchive reads an archive file member by member, as archive.Read
// should, and where the gzip stream breaks it skips to the next gzip
// header and goes on: it returns the messageIds of every record it could
// read and the byte offsets where the stream broke, with the error.
func salvageArchive(path string) (ids, breaks []string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	magic := []byte{0x1f, 0x8b, 0x08}
	for pos := 0; pos < len(b); {
		br := bytes.NewReader(b[pos:])
		zr, err := gzip.NewReader(br)
		if err == nil {
			zr.Multistream(false)
			var out []byte
			if out, err = io.ReadAll(zr); err == nil {
				for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
					var rec archive.Record
					if json.Unmarshal(line, &rec) == nil {
						ids = append(ids, rec.MessageID)
					}
				}
				pos = len(b) - br.Len()
				continue
			}
		}
		breaks = append(breaks, fmt.Sprintf("byte %d (%v)", pos, err))
		next := bytes.Index(b[pos+1:], magic)
		if next < 0 {
			break
		}
		pos += 1 + next
	}
	return ids, breaks, nil
}

// recordedTimes returns, for each messageId in a sink's --record file
// written with --record-times, the times the sink answered it, in order.
func recordedTimes(record string) (map[string][]time.Time, error) {
	got := map[string][]time.Time{}
	err := scanRecord(record, func(line []byte) {
		var r struct {
			At    int64 `json:"at"`
			Event struct {
				MessageID string `json:"messageId"`
			} `json:"event"`
		}
		if json.Unmarshal(line, &r) == nil {
			got[r.Event.MessageID] = append(got[r.Event.MessageID], time.Unix(0, r.At))
		}
	})
	return got, err
}

// scanRecord calls line with each line of a sink's --record file.
func scanRecord(record string, line func([]byte)) error {
	f, err := os.Open(record)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line(sc.Bytes())
	}
	return sc.Err()
}

// recordedIDs returns the messageIds in a sink's --record file.
func recordedIDs(record string) (map[string]bool, error) {
	got := map[string]bool{}
	err := scanRecord(record, func(line []byte) {
		var ev struct {
			MessageID string `json:"messageId"`
		}
		if json.Unmarshal(line, &ev) == nil {
			got[ev.MessageID] = true
		}
	})
	return got, err
}
