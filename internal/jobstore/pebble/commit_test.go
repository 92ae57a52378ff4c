package pebble

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/jobstore"
)

// walFS is the operating system's filesystem with the write-ahead log under
// watch. It counts the syncs of WAL files and keeps a copy of each WAL's
// bytes with how many of them the last completed sync made durable, so a
// test can check what a sync covered. Every WAL sync takes at least
// minSync: a disk's fsync takes about a millisecond, but the test's
// temporary directory may be on a filesystem whose fsync costs nothing, and
// with free syncs there is nothing to share.
type walFS struct {
	vfs.FS
	minSync time.Duration
	syncs   atomic.Int64

	mu   sync.Mutex
	wals []*walFile
}

// walFile is one WAL file of a walFS. Its fields are guarded by the walFS's
// mu.
type walFile struct {
	vfs.File
	fs   *walFS
	data []byte // every byte written, in file order
	// synced is len(data) when the last completed sync started: the bytes
	// that sync made durable.
	synced int
}

func (fs *walFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return fs.watch(name, f), err
}

func (fs *walFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return fs.watch(newname, f), err
}

func (fs *walFS) watch(name string, f vfs.File) vfs.File {
	if f == nil || !strings.HasSuffix(name, ".log") {
		return f
	}
	w := &walFile{File: f, fs: fs}
	fs.mu.Lock()
	fs.wals = append(fs.wals, w)
	fs.mu.Unlock()
	return w
}

// Write and WriteAt copy p before passing it on: a file may scribble on it
// (Pebble's MemFS does under -race, to catch callers that reuse it).
func (f *walFile) Write(p []byte) (int, error) {
	c := bytes.Clone(p)
	n, err := f.File.Write(p)
	f.fs.mu.Lock()
	f.data = append(f.data, c[:n]...)
	f.fs.mu.Unlock()
	return n, err
}

func (f *walFile) WriteAt(p []byte, off int64) (int, error) {
	c := bytes.Clone(p)
	n, err := f.File.WriteAt(p, off)
	f.fs.mu.Lock()
	if end := int(off) + n; end > len(f.data) {
		f.data = append(f.data, make([]byte, end-len(f.data))...)
	}
	copy(f.data[off:], c[:n])
	f.fs.mu.Unlock()
	return n, err
}

func (f *walFile) Sync() error     { return f.sync(f.File.Sync) }
func (f *walFile) SyncData() error { return f.sync(f.File.SyncData) }

// sync runs one sync of the file and, once it has succeeded, marks what was
// written before it started as synced.
func (f *walFile) sync(do func() error) error {
	f.fs.mu.Lock()
	n := len(f.data)
	f.fs.mu.Unlock()
	start := time.Now()
	err := do()
	// Simulated disk latency, not a wait for a condition.
	time.Sleep(f.fs.minSync - time.Since(start))
	if err != nil {
		return err
	}
	f.fs.syncs.Add(1)
	f.fs.mu.Lock()
	f.synced = max(f.synced, n)
	f.fs.mu.Unlock()
	return nil
}

// walMark is how long each WAL file was at some moment.
type walMark []int

func (fs *walFS) mark() walMark {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	m := make(walMark, len(fs.wals))
	for i, w := range fs.wals {
		m[i] = len(w.data)
	}
	return m
}

// syncedSince reports whether s was written to a WAL after mark m and is
// covered by a sync that has completed.
func (fs *walFS) syncedSince(m walMark, s string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i, w := range fs.wals {
		from := 0
		if i < len(m) {
			from = m[i]
		}
		if from < w.synced && bytes.Contains(w.data[from:w.synced], []byte(s)) {
			return true
		}
	}
	return false
}

// TestGroupCommitSharesSyncs runs many concurrent Appends and checks the
// two halves of group commit: the Appends share fsyncs (far fewer WAL syncs
// than Appends), and each Append still returns only after a sync that
// covers its own batch.
//
// "Covers" is checked on the WAL's bytes: when an Append returns, its
// messageId must be in the WAL between where the log ended when the call
// began and where the last completed sync started. A batch is written in
// 32 KiB blocks whose chunk headers could split one occurrence of the
// messageId, but a batch of a few hundred bytes crosses at most one block
// boundary and holds the messageId three times (dedupe key, record, payload),
// so at least two occurrences are intact.
func TestGroupCommitSharesSyncs(t *testing.T) {
	const (
		appenders = 64
		each      = 10 // Appends per appender, one after the other
		appends   = appenders * each
	)
	fs := &walFS{FS: vfs.Default, minSync: time.Millisecond}
	s, err := Open(filepath.Join(t.TempDir(), "db"), Options{Logger: testLogger(t), fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	var (
		uncovered atomic.Int64
		failed    atomic.Int64
		wg        sync.WaitGroup
		startLine = make(chan struct{})
	)
	before := fs.syncs.Load()
	for g := range appenders {
		wg.Go(func() {
			<-startLine
			for i := range each {
				// Fixed width, so that no messageId is found inside
				// another one's bytes.
				id := fmt.Sprintf("gc-%02d-%03d", g, i)
				m := fs.mark()
				if _, err := s.Append(t.Context(), []jobstore.Entry{entry(id)}); err != nil {
					t.Errorf("Append %s: %v", id, err)
					failed.Add(1)
					return
				}
				if !fs.syncedSince(m, id) {
					if uncovered.Add(1) <= 5 {
						t.Errorf("Append %s returned before a sync covered its batch", id)
					}
				}
			}
		})
	}
	close(startLine)
	wg.Wait()
	syncs := fs.syncs.Load() - before
	if failed.Load() > 0 {
		t.Fatalf("%d Appends failed", failed.Load())
	}
	if n := uncovered.Load(); n > 0 {
		t.Errorf("%d of %d Appends returned before a sync covered them", n, appends)
	}
	t.Logf("%d Appends from %d goroutines, %d WAL syncs (%.1f Appends per sync)",
		appends, appenders, syncs, float64(appends)/float64(max(syncs, 1)))
	if syncs == 0 {
		t.Fatalf("no WAL sync seen: the filesystem wrapper does not see the store's syncs")
	}
	// 20 to 30 Appends share a sync here, even on two busy cores. Pebble's
	// WAL writer alone (the committer taking one request per group) gets
	// about 4, merging the few groups applied while a sync runs; one sync
	// per Append is no sharing at all. The bound sits between the two.
	if limit := int64(appends / 8); syncs > limit {
		t.Errorf("%d WAL syncs for %d concurrent Appends, want at most %d: Appends do not share fsyncs", syncs, appends, limit)
	}

	// Every acknowledged event is stored.
	found, _, err := storedIDs(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != appends {
		t.Errorf("%d events stored, want %d", len(found), appends)
	}
}
