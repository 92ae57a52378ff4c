package diskspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/jobstore"
)

const mb = 1 << 20

// bundle is what a test needs: a Watcher whose free space and clock the
// test sets.
type bundle struct {
	w       *Watcher
	free    *atomic.Int64 // what every directory reports
	calls   chan struct{} // one value per Free call, when not full
	clock   *clock.Fake
	ballast string
}

// setup starts a Watcher with a 100 MB reserve and a 10 MB ballast on
// directories reporting free bytes.
func setup(t *testing.T, free int64) *bundle {
	t.Helper()
	dir := t.TempDir()
	b := &bundle{free: new(atomic.Int64), calls: make(chan struct{}, 100),
		clock: clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), ballast: filepath.Join(dir, BallastName)}
	b.free.Store(free)
	w, err := New(Options{
		Dirs:        []Dir{{Name: "jobs", Path: filepath.Join(dir, "jobs")}, {Name: "stats", Path: filepath.Join(dir, "stats")}},
		MinFree:     100 * mb,
		Ballast:     b.ballast,
		BallastSize: 10 * mb,
		Interval:    time.Second,
		Clock:       b.clock,
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		Free: func(string) (int64, error) {
			select {
			case b.calls <- struct{}{}:
			default:
			}
			return b.free.Load(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	b.w = w
	return b
}

func (b *bundle) ballastSize(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(b.ballast)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestReserve(t *testing.T) {
	for _, tc := range []struct {
		name string
		free int64
		want error
	}{
		{"plenty", 500 * mb, nil},
		{"at the reserve", 100 * mb, nil},
		{"below the reserve", 100*mb - 1, ErrLowSpace},
		{"full", 0, ErrLowSpace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, 500*mb)
			b.free.Store(tc.free)
			b.w.Check()
			if err := b.w.Err(); err != tc.want {
				t.Fatalf("Err() = %v, want %v", err, tc.want)
			}
			if tc.want != nil && !errors.Is(b.w.Err(), jobstore.ErrUnavailable) {
				t.Errorf("Err() = %v, does not wrap jobstore.ErrUnavailable", b.w.Err())
			}
			if got := b.w.State().Accepting; got != (tc.want == nil) {
				t.Errorf("State().Accepting = %v", got)
			}
			// Space comes back: events are taken again, no restart.
			b.free.Store(500 * mb)
			b.w.Check()
			if err := b.w.Err(); err != nil {
				t.Errorf("after space came back, Err() = %v", err)
			}
		})
	}
}

func TestBallastReleasedOnDiskFullAndRestored(t *testing.T) {
	b := setup(t, 500*mb)
	if got := b.ballastSize(t); got != 10*mb {
		t.Fatalf("ballast is %d bytes at start, want %d", got, 10*mb)
	}
	start := b.clock.Now()
	b.clock.Advance(time.Minute)

	// Another process filled the disk between two checks: a write fails.
	b.free.Store(0)
	b.w.WriteFailed(fmt.Errorf("write jobs/000007.log: %w", syscall.ENOSPC))
	if b.ballastSize(t) != 0 {
		t.Fatal("ballast still there after a write met a full disk")
	}
	if err := b.w.Err(); err != ErrDegraded {
		t.Fatalf("Err() = %v, want ErrDegraded", err)
	}
	s := b.w.State()
	if !s.Degraded || s.Accepting || s.BallastBytes != 0 || s.DiskFull != 1 || !s.Since.Equal(start.Add(time.Minute)) {
		t.Fatalf("State() = %+v", s)
	}

	// Above the reserve but without room for the ballast: still degraded.
	b.free.Store(105 * mb)
	b.w.Check()
	if err := b.w.Err(); err != ErrDegraded {
		t.Fatalf("with no room for the ballast, Err() = %v, want ErrDegraded", err)
	}

	// Room for both: the ballast is back and events are taken.
	b.free.Store(200 * mb)
	b.w.Check()
	if err := b.w.Err(); err != nil {
		t.Fatalf("Err() = %v after space came back", err)
	}
	if got := b.ballastSize(t); got != 10*mb {
		t.Fatalf("ballast is %d bytes after recovery, want %d", got, 10*mb)
	}
	if s := b.w.State(); s.Degraded || !s.Accepting || s.BallastBytes != 10*mb {
		t.Fatalf("State() = %+v", s)
	}
}

func TestNoBallastWithoutRoom(t *testing.T) {
	b := setup(t, 105*mb)
	if b.ballastSize(t) != 0 {
		t.Fatal("ballast created though it would eat into the reserve")
	}
	if err := b.w.Err(); err != nil {
		t.Fatalf("Err() = %v, want nil: above the reserve", err)
	}
}

func TestRunMeasuresEveryInterval(t *testing.T) {
	b := setup(t, 500*mb)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.w.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for len(b.calls) > 0 {
		<-b.calls
	}
	b.free.Store(mb)
	// Run's timer may not be set yet when the clock moves: keep moving it
	// until a measurement happens.
	waitFor(t, b, func() bool { return b.w.Err() == ErrLowSpace })
	b.free.Store(500 * mb)
	waitFor(t, b, func() bool { return b.w.Err() == nil })
}

// waitFor advances the fake clock an Interval at a time until cond holds.
func waitFor(t *testing.T, b *bundle, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		b.clock.Advance(time.Second)
		select {
		case <-b.calls:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestDiskFullWithoutBallastWaitsForSpace(t *testing.T) {
	b := setup(t, 500*mb)
	b.free.Store(0)
	b.w.onDiskFull() // releases the ballast and returns at once
	if b.ballastSize(t) != 0 {
		t.Fatal("ballast not released")
	}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		b.w.onDiskFull() // nothing left to release: waits for space
	}()
	b.clock.Advance(time.Second)
	select {
	case <-returned:
		t.Fatal("onDiskFull returned with the disk still full")
	case <-time.After(20 * time.Millisecond):
	}
	b.free.Store(50 * mb)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.clock.Advance(time.Second)
		select {
		case <-returned:
			if s := b.w.State(); s.DiskFull != 2 || !s.Degraded {
				t.Fatalf("State() = %+v", s)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("onDiskFull still waiting with space free")
		}
	}
}

func TestDiskFullWaitEndsOnClose(t *testing.T) {
	b := setup(t, 0)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		b.w.onDiskFull()
	}()
	b.w.Close()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("onDiskFull still waiting after Close")
	}
}

// store is a jobstore.Store that only appends.
type store struct {
	jobstore.Store
	appends int
	err     error
}

func (s *store) Append(ctx context.Context, entries []jobstore.Entry) ([]bool, error) {
	s.appends++
	return make([]bool, len(entries)), s.err
}

func TestGuard(t *testing.T) {
	b := setup(t, 500*mb)
	inner := &store{}
	g := b.w.Guard(inner)
	ctx := context.Background()
	if _, err := g.Append(ctx, make([]jobstore.Entry, 1)); err != nil || inner.appends != 1 {
		t.Fatalf("Append = %v with %d appends, want nil and 1", err, inner.appends)
	}
	b.free.Store(mb)
	b.w.Check()
	if _, err := g.Append(ctx, make([]jobstore.Entry, 1)); !errors.Is(err, jobstore.ErrUnavailable) || inner.appends != 1 {
		t.Fatalf("Append = %v with %d appends, want ErrUnavailable and the store untouched", err, inner.appends)
	}

	// A full disk that gets through degrades the watcher.
	b.free.Store(500 * mb)
	b.w.Check()
	// An error that says nothing about space leaves the watcher as it is.
	inner.err = fmt.Errorf("sync: %w: %w", jobstore.ErrUnavailable, syscall.EIO)
	if _, err := g.Append(ctx, make([]jobstore.Entry, 1)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append = %v, want the store's error", err)
	}
	if err := b.w.Err(); err != nil {
		t.Fatalf("Err() = %v after an I/O error, want nil", err)
	}

	inner.err = fmt.Errorf("sync: %w: %w", jobstore.ErrUnavailable, syscall.ENOSPC)
	if _, err := g.Append(ctx, make([]jobstore.Entry, 1)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append = %v, want the store's error", err)
	}
	if err := b.w.Err(); err != ErrDegraded {
		t.Fatalf("Err() = %v after a failed append, want ErrDegraded", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	dirs := []Dir{{Name: "jobs", Path: t.TempDir()}}
	for _, o := range []Options{
		{},
		{Dirs: dirs, MinFree: -1},
		{Dirs: dirs, BallastSize: -1},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) = nil error", o)
		}
	}
	w, err := New(Options{Dirs: dirs})
	if err != nil {
		t.Fatal(err)
	}
	if s := w.State(); s.MinFreeBytes != DefaultMinFree {
		t.Errorf("MinFreeBytes = %d, want DefaultMinFree", s.MinFreeBytes)
	}
}
