package pebble

import (
	"fmt"
	"testing"

	"github.com/fanout/fanout/internal/jobstore"
)

func filterKeys(prefix string, n int) [][]byte {
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = filterKey(dedupeKey(0, "web", fmt.Sprintf("%s-%d", prefix, i)))
	}
	return keys
}

// positives counts the keys that bucket may contain.
func positives(f *dedupeFilter, bucket uint64, keys [][]byte) int {
	n := 0
	for _, k := range keys {
		if f.mayContain(bucket, k) {
			n++
		}
	}
	return n
}

func TestDedupeFilter(t *testing.T) {
	const bucket = 20000
	stored := filterKeys("stored", 5*minFilterKeys) // three filters in the chain
	absent := filterKeys("absent", 100_000)
	tests := []struct {
		name string
		// setup fills a filter whose scan started at bucket.
		setup func(f *dedupeFilter)
		// lookups in bucket, and the most positives allowed among them.
		bucket    uint64
		keys      [][]byte
		want, max int
	}{
		{"every stored key, across a growing chain", func(f *dedupeFilter) { f.add(bucket, stored) },
			bucket, stored, len(stored), len(stored)},
		{"absent keys: under 1 in 100 false positives", func(f *dedupeFilter) { f.add(bucket, stored) },
			bucket, absent, 0, len(absent) / 100},
		{"a key in another bucket", func(f *dedupeFilter) { f.add(bucket+1, stored) },
			bucket, stored, 0, len(stored) / 100},
		{"a bucket with no records", func(f *dedupeFilter) {},
			bucket, stored, 0, 0},
		{"a bucket older than the scan may hold anything", func(f *dedupeFilter) {},
			bucket - 1, absent, len(absent), len(absent)},
		{"a dropped bucket holds nothing", func(f *dedupeFilter) { f.add(bucket, stored); f.dropBelow(bucket + 1) },
			bucket, stored, 0, 0},
		{"while loading, every lookup goes to Pebble", func(f *dedupeFilter) { f.loaded = false },
			bucket, absent, len(absent), len(absent)},
		{"a dropped bucket is not brought back by the loader", func(f *dedupeFilter) { f.dropBelow(bucket + 1); f.add(bucket, stored) },
			bucket, stored, 0, 0},
		{"past the memory bound, every lookup goes to Pebble", func(f *dedupeFilter) {
			f.maxBytes = newBloomFilter(minFilterKeys).size()
			f.add(bucket, stored)
		}, bucket, absent, len(absent), len(absent)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newDedupeFilter(bucket)
			f.setLoaded()
			tt.setup(f)
			if got := positives(f, tt.bucket, tt.keys); got < tt.want || got > tt.max {
				t.Errorf("%d of %d keys may be in bucket %d, want %d to %d", got, len(tt.keys), tt.bucket, tt.want, tt.max)
			}
			if f.bytes > f.maxBytes {
				t.Errorf("filters take %d bytes, bound %d", f.bytes, f.maxBytes)
			}
		})
	}
}

// TestDedupeFilterMemory checks that the filters' memory is accounted for
// and given back when buckets are dropped.
func TestDedupeFilterMemory(t *testing.T) {
	f := newDedupeFilter(0)
	f.setLoaded()
	f.add(1, filterKeys("a", 3*minFilterKeys))
	f.add(2, filterKeys("b", minFilterKeys))
	if f.bytes == 0 {
		t.Fatal("no memory accounted for")
	}
	per := filterBitsPerKey * 4 * minFilterKeys / 8 * 2 // generous: chains double
	if f.bytes > per {
		t.Errorf("%d bytes for %d keys, want at most %d", f.bytes, 4*minFilterKeys, per)
	}
	f.dropBelow(3)
	if f.bytes != 0 || len(f.buckets) != 0 {
		t.Errorf("after dropping every bucket: %d bytes, %d buckets", f.bytes, len(f.buckets))
	}
}

// TestFilterSparesLookups checks that Append asks Pebble about new
// messageIds only for the filter's rare false positives, and still finds
// every duplicate: before a reopen, right after it (the filter is still
// loading, so the lookups go to Pebble) and once the filter is loaded.
func TestFilterSparesLookups(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	<-s.filterDone
	const n = 2000
	batch := make([]jobstore.Entry, n)
	for i := range batch {
		batch[i] = entry(fmt.Sprintf("m%d", i))
	}
	appendAll := func(want bool) {
		t.Helper()
		dup, err := s.Append(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range dup {
			if d != want {
				t.Fatalf("event %d: duplicate = %v, want %v", i, d, want)
			}
		}
	}
	appendAll(false)
	// Two buckets per event (today's and yesterday's), and yesterday has
	// no filter at all.
	if got := s.dedupeSeeks.Load(); got > n/50 {
		t.Errorf("%d Pebble lookups for %d new messageIds, want about 1 in 200", got, n)
	}
	s.dedupeSeeks.Store(0)
	appendAll(true)
	if got := s.dedupeSeeks.Load(); got < n {
		t.Errorf("%d Pebble lookups for %d duplicates, want one each", got, n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendAll(true)
	<-s.filterDone
	s.dedupeSeeks.Store(0)
	batch = batch[:n/2]
	appendAll(true)
	if got := s.dedupeSeeks.Load(); got < n/2 {
		t.Errorf("after reloading the filter: %d Pebble lookups for %d duplicates, want one each", got, n/2)
	}
	for i := range batch {
		batch[i] = entry(fmt.Sprintf("new%d", i))
	}
	s.dedupeSeeks.Store(0)
	appendAll(false)
	if got := s.dedupeSeeks.Load(); got > n/50 {
		t.Errorf("after reloading the filter: %d Pebble lookups for %d new messageIds, want about 1 in 200", got, n/2)
	}
}
