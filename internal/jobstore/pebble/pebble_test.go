package pebble

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/storetest"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func openTest(t *testing.T, env storetest.Env) jobstore.Store {
	t.Helper()
	s, err := Open(env.Dir, Options{DedupeWindow: env.DedupeWindow, Now: env.Now, Applied: env.Applied, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, openTest)
}

func TestOptionsValidation(t *testing.T) {
	_, err := Open(t.TempDir(), Options{DedupeWindow: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "DedupeWindow cannot be negative") {
		t.Errorf("Open with a negative window = %v, want an error naming DedupeWindow", err)
	}
}

var q = jobstore.Queue{Source: "web", Destination: "hook"}

func entry(id string) jobstore.Entry {
	return jobstore.Entry{
		Event: event.Event{
			Source:     q.Source,
			MessageID:  id,
			Type:       event.Track,
			ReceivedAt: time.Now(),
			Payload:    []byte(`{"type":"track","event":"x","messageId":"` + id + `"}`),
		},
		Destinations: []string{q.Destination},
	}
}

// crashDirEnv, when set, turns TestCrashChild into the child process of
// TestCrash: it appends into the store in that directory until killed.
const crashDirEnv = "FANOUT_JOBSTORE_CRASH_DIR"

// TestCrashChild is not a test of its own: TestCrash runs it in a child
// process. It appends from several goroutines in a loop and prints each
// messageId on its own line once the Append that stored it returned nil.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestCrash")
	}
	s, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	round := os.Getenv("FANOUT_JOBSTORE_CRASH_ROUND")
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				var entries []jobstore.Entry
				for k := range 10 {
					entries = append(entries, entry(fmt.Sprintf("r%s-g%d-%d-%d", round, g, i, k)))
				}
				if _, err := s.Append(context.Background(), entries); err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(3)
				}
				var b strings.Builder
				for _, e := range entries {
					b.WriteString(e.Event.MessageID + "\n")
				}
				// One write per call, straight to the pipe: whatever
				// the parent reads was acknowledged.
				mu.Lock()
				os.Stdout.WriteString(b.String())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrash kills a process that appends in a loop with SIGKILL, reopens the
// store, and checks that every acknowledged event is there, in rounds.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	acked := make(map[string]bool)
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, fmt.Sprintf("FANOUT_JOBSTORE_CRASH_ROUND=%d", round))
		cmd.Stderr = t.Output()
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it at a different point each round, while it appends.
		want := 2000 + round*3000
		r := bufio.NewReader(out)
		n := 0
		for n < want {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("round %d: child stopped after %d acks: %v", round, n, err)
			}
			acked[strings.TrimSuffix(line, "\n")] = true
			n++
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Whatever reached the pipe before the kill was acknowledged too;
		// a last line without its newline was not complete.
		rest, _ := io.ReadAll(r)
		lines := strings.Split(string(rest), "\n")
		for _, l := range lines[:len(lines)-1] {
			acked[l] = true
		}
		cmd.Wait()

		s, err := Open(dir, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		found, last, err := storedIDs(s)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		missing := 0
		for id := range acked {
			if !found[id] {
				missing++
				if missing <= 5 {
					t.Errorf("round %d: acknowledged %s is missing after the crash", round, id)
				}
			}
		}
		if missing > 0 {
			t.Fatalf("round %d: %d of %d acknowledged events missing", round, missing, len(acked))
		}
		// No Seq handed out before the crash is handed out again.
		if _, err := s.Append(t.Context(), []jobstore.Entry{entry(fmt.Sprintf("after-%d", round))}); err != nil {
			t.Fatal(err)
		}
		jobs, err := s.Pending(t.Context(), q, last, 10)
		if err != nil || len(jobs) != 1 || jobs[0].Event.MessageID != fmt.Sprintf("after-%d", round) {
			t.Fatalf("round %d: Append after reopen: Pending(after %d) = %v, %v; want the new job above every old Seq", round, last, jobs, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d acknowledged, %d stored", round, len(acked), len(found))
	}
}

// TestDrainedNotIterated checks that after a queue is drained with Drops
// (one range deletion each), reading the store after a reopen does not step
// over the drained jobs one by one.
func TestDrainedNotIterated(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const jobs = 20000
	other := jobstore.Queue{Source: "web", Destination: "crm"}
	for i := 0; i < jobs; i += 500 {
		var entries []jobstore.Entry
		for k := range 500 {
			entries = append(entries, entry(fmt.Sprintf("m%d", i+k)))
		}
		if _, err := s.Append(ctx, entries); err != nil {
			t.Fatal(err)
		}
		// Drain as the engine does, a prefix at a time.
		pending, err := s.Pending(ctx, q, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(ctx, jobstore.Update{Drops: []jobstore.Drop{{Queue: q, Below: pending[len(pending)-1].Seq + 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	last := entry("last")
	last.Destinations = []string{q.Destination, other.Destination}
	if _, err := s.Append(ctx, []jobstore.Entry{last}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.stepped.Store(0)
	qs, err := s.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 {
		t.Errorf("Queues = %v, want web/hook and web/crm", qs)
	}
	p, err := s.Pending(ctx, q, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 1 || p[0].Event.MessageID != "last" {
		t.Errorf("Pending = %d jobs, want only the last one", len(p))
	}
	// Queues reads one key per queue and keyspace, Pending one job: a
	// handful of points, against 20,000 drained.
	if n := s.stepped.Load(); n > 50 {
		t.Errorf("Queues and Pending stepped over %d points after draining %d jobs; want a handful", n, jobs)
	}
	t.Logf("stepped over %d points", s.stepped.Load())
}

// TestCrashUnsynced runs the store on an in-memory filesystem that can show
// what a machine crash would leave: only the synced data. While appenders
// run, it repeatedly takes such a crash image and checks that every Append
// acknowledged before it is in the image. Unlike TestCrash, which kills a
// process but keeps the OS page cache, this fails if an Append returns
// before its fsync.
func TestCrashUnsynced(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := Open("db", Options{Logger: testLogger(t), fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var (
		mu    sync.Mutex
		acked []string
		stop  = make(chan struct{})
		wg    sync.WaitGroup
		// pause holds the appenders off while an image is checked, so
		// that the store does not grow without bound meanwhile (which
		// made the test slow under -race).
		pause sync.RWMutex
	)
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var entries []jobstore.Entry
				for k := range 10 {
					entries = append(entries, entry(fmt.Sprintf("g%d-%d-%d", g, i, k)))
				}
				pause.RLock()
				_, err := s.Append(context.Background(), entries)
				pause.RUnlock()
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				for _, e := range entries {
					acked = append(acked, e.Event.MessageID)
				}
				mu.Unlock()
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	for image := range 10 {
		// Wait for some progress, then note what is acknowledged before
		// taking the image: all of it must be in there.
		for {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n >= (image+1)*500 {
				break
			}
			runtime.Gosched()
		}
		mu.Lock()
		want := slices.Clone(acked)
		mu.Unlock()
		crashed := fs.CrashClone(vfs.CrashCloneCfg{})
		pause.Lock()
		found, err := imageIDs(t, crashed)
		pause.Unlock()
		if err != nil {
			t.Fatalf("image %d: %v", image, err)
		}
		missing := 0
		for _, id := range want {
			if !found[id] {
				missing++
			}
		}
		if missing > 0 {
			t.Fatalf("image %d: %d of %d acknowledged events missing after the crash", image, missing, len(want))
		}
		t.Logf("image %d: %d acknowledged, %d stored", image, len(want), len(found))
	}
}

// storedIDs returns the messageIds of q's pending jobs and the highest Seq.
func storedIDs(s *Store) (map[string]bool, uint64, error) {
	found := make(map[string]bool)
	var after uint64
	for {
		jobs, err := s.Pending(context.Background(), q, after, 1000)
		if err != nil {
			return nil, 0, err
		}
		if len(jobs) == 0 {
			return found, after, nil
		}
		for _, j := range jobs {
			found[j.Event.MessageID] = true
			after = j.Seq
		}
	}
}

// imageIDs opens the store in a crash image and returns storedIDs.
func imageIDs(t *testing.T, fs vfs.FS) (map[string]bool, error) {
	s, err := Open("db", Options{Logger: testLogger(t), fs: fs})
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer s.Close()
	found, _, err := storedIDs(s)
	return found, err
}

// openFillable opens a store on an in-memory filesystem whose every write
// fails with ENOSPC while full is set, as on a full disk. The store is
// closed in t.Cleanup.
func openFillable(t *testing.T) (s *Store, full *atomic.Bool) {
	t.Helper()
	full = new(atomic.Bool)
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if full.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return syscall.ENOSPC
		}
		return nil
	}))
	s, err := Open("db", Options{Logger: testLogger(t), fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, full
}

// TestDiskFull checks that an Append whose WAL write fails (here ENOSPC
// injected into the filesystem) returns an error that the tracking API maps
// to 503, and does not report the events as stored.
func TestDiskFull(t *testing.T) {
	s, full := openFillable(t)
	if _, err := s.Append(t.Context(), []jobstore.Entry{entry("before")}); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	_, err := s.Append(t.Context(), []jobstore.Entry{entry("while-full")})
	if !errors.Is(err, jobstore.ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append on a full disk = %v, want an error wrapping jobstore.ErrUnavailable and ENOSPC", err)
	}
	// Pebble's WAL errors are sticky: every later Append fails the same
	// way rather than acknowledging what it cannot store.
	full.Store(false)
	if _, err := s.Append(t.Context(), []jobstore.Entry{entry("after")}); !errors.Is(err, jobstore.ErrUnavailable) {
		t.Errorf("Append after a WAL error = %v, want jobstore.ErrUnavailable", err)
	}
}

// TestWriteErrorNeverPanics checks that after a WAL write failed, no later
// write reaches Pebble: its WAL error is sticky, and a commit that meets it
// panics inside Pebble (DB.commitWrite) instead of returning an error. The
// appends here are large enough to fill WAL blocks, which is what hands
// the error to the next commit.
func TestWriteErrorNeverPanics(t *testing.T) {
	s, full := openFillable(t)
	big := func(id string) jobstore.Entry {
		e := entry(id)
		e.Event.Payload = []byte(`{"type":"track","event":"` + strings.Repeat("x", 8<<10) + `"}`)
		return e
	}
	if _, err := s.Append(t.Context(), []jobstore.Entry{big("before")}); err != nil {
		t.Fatal(err)
	}
	jobs, err := s.Pending(t.Context(), q, 0, 10)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("Pending = %d jobs, %v", len(jobs), err)
	}
	full.Store(true)
	for i := range 50 {
		entries := make([]jobstore.Entry, 8)
		for k := range entries {
			entries[k] = big(fmt.Sprintf("full-%d-%d", i, k))
		}
		if _, err := s.Append(t.Context(), entries); !errors.Is(err, jobstore.ErrUnavailable) {
			t.Fatalf("Append %d on a full disk = %v, want jobstore.ErrUnavailable", i, err)
		}
		if err := s.Apply(t.Context(), jobstore.Update{Finish: jobs}); !errors.Is(err, jobstore.ErrUnavailable) {
			t.Fatalf("Apply %d after a WAL error = %v, want jobstore.ErrUnavailable", i, err)
		}
	}
}
