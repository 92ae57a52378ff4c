// Package upgrade_test checks that this release reads the data directories
// that earlier releases wrote: the job store, the stats database and the
// archive. Each earlier release's directory is a tarball under testdata/,
// made by that release's binary; testdata/README.md says how.
package upgrade_test

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations/registry"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/stats"
)

// untar unpacks testdata/name into a fresh temporary directory and returns
// the data_dir inside it: the tests open a copy, never the committed files.
func untar(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dst+string(filepath.Separator)) {
			t.Fatalf("%s: entry %q leaves the directory", name, h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dst, "data")
}

// TestDataDirOfE0372de opens the data directory that the release at commit
// e0372de ("BENCHMARKS.md: the review's change to batch reads, and its
// check") wrote, with this release's code: the job store lists its queues
// and their jobs, the stats show its counts and the archive reads and
// replays. testdata/README.md gives the commands that made it.
func TestDataDirOfE0372de(t *testing.T) {
	dir := untar(t, "datadir-e0372de.tar.gz")
	// The release ran between 05:09 and 05:11 UTC that day.
	made := time.Date(2026, 12, 6, 5, 10, 0, 0, time.UTC)
	ctx := context.Background()

	store, err := pebble.Open(filepath.Join(dir, "jobs"), pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	// What the release left behind: 60 events accepted (web: 1 + 40 + 5 +
	// 3 to both destinations, app: 11 to hooks-long), none delivered, since
	// both webhooks point at a port that refuses connections. hooks-short's
	// 2 s retry window archived 46 of them.
	want := map[jobstore.Queue][2]int{ // pending, retry
		{Source: "app", Destination: "hooks-long"}:  {0, 11},
		{Source: "web", Destination: "hooks-long"}:  {3, 46},
		{Source: "web", Destination: "hooks-short"}: {2, 1},
	}
	qs, err := store.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != len(want) {
		t.Errorf("queues = %v, want the %d of %v", qs, len(want), want)
	}
	for _, q := range qs {
		p, err := store.Pending(ctx, q, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		r, _, err := store.Retries(ctx, q, time.Unix(math.MaxInt32, 0), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if got := [2]int{len(p), len(r)}; got != want[q] {
			t.Errorf("%s/%s: %d pending, %d retry jobs; want %d, %d", q.Source, q.Destination, got[0], got[1], want[q][0], want[q][1])
		}
		for _, j := range append(p, r...) {
			if j.Event.MessageID == "" || len(j.Event.Payload) == 0 || j.Event.ReceivedAt.IsZero() {
				t.Fatalf("%s/%s: job %d lost its event: %+v", q.Source, q.Destination, j.Seq, j.Event)
			}
		}
	}

	// The release's configuration still loads.
	if _, err := config.Load(filepath.Join("testdata", "datadir-e0372de.yaml"), registry.All()); err != nil {
		t.Fatal(err)
	}
	st, err := stats.Open(stats.Options{Dir: filepath.Join(dir, "stats"),
		Now: func() time.Time { return made }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ov, err := st.Overview(stats.Filter{From: made.Add(-time.Hour), To: made.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	wantCounts := map[stats.Pair]stats.Counts{
		{Source: "app", Destination: "hooks-long"}:  {Received: 11, PendingRetry: 11},
		{Source: "web", Destination: "hooks-long"}:  {Received: 49, PendingRetry: 46},
		{Source: "web", Destination: "hooks-short"}: {Received: 49, PendingRetry: 1, Archived: 46},
	}
	if len(ov.Pairs) != len(wantCounts) {
		t.Errorf("stats pairs = %+v, want %+v", ov.Pairs, wantCounts)
	}
	for _, p := range ov.Pairs {
		if p.Counts != wantCounts[p.Pair] {
			t.Errorf("stats of %s/%s = %+v, want %+v", p.Source, p.Destination, p.Counts, wantCounts[p.Pair])
		}
	}
	if ov.Ingest == nil || ov.Ingest.Accepted != 60 {
		t.Errorf("ingest = %+v, want 60 accepted", ov.Ingest)
	}

	short := jobstore.Queue{Source: "web", Destination: "hooks-short"}
	w := archive.NewWriter(filepath.Join(dir, "archive"))
	recs, err := w.Scan(short, made.Add(-time.Hour), made.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 46 {
		t.Fatalf("archive holds %d records of web/hooks-short, want 46", len(recs))
	}
	rp := &archive.Replayer{Archive: w, Store: store, Now: time.Now, Logger: slog.Default()}
	n, err := rp.Replay(ctx, "web", "hooks-short", made.Add(-time.Hour), made.Add(time.Hour))
	if err != nil || n != 46 {
		t.Fatalf("replay = %d, %v; want 46 jobs queued", n, err)
	}
	p, err := store.Pending(ctx, short, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 2+46 {
		t.Errorf("web/hooks-short has %d pending jobs after the replay, want 48", len(p))
	}
}
