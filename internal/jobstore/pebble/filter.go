package pebble

import (
	"hash/maphash"
	"math/bits"
	"sync"
)

// Sizing of the dedupe filters; see dedupeFilter.
const (
	// filterBitsPerKey and the 7 bits set per key in a 512-bit block give
	// about 1 false "maybe" in 200 lookups.
	filterBitsPerKey = 12
	// minFilterKeys is the capacity of a bucket's first filter when nothing
	// says how busy the bucket will be.
	minFilterKeys = 1 << 16
	// maxFilterBytes bounds the memory of all filters together, about 45
	// million messageIds: past it a bucket's lookups all go to Pebble, as
	// they did before the filters.
	maxFilterBytes = 64 << 20
)

// dedupeFilter remembers, in memory, a Bloom filter of the messageIds in
// each dedupe bucket, so that the lookup of a new messageId (nearly every
// lookup) is answered without Pebble. A Pebble point lookup runs the bloom
// filter of every level, seeks each memtable and steps over the range
// deletions that overlap the key, twice per event (today's bucket and
// yesterday's): a fifth of the CPU of a busy ingest. A "maybe" from the
// filter, for a duplicate or a false positive, still goes to Pebble, which
// decides; the filter can only spare lookups, never answer one.
//
// A bucket's filter is a chain: when one is full, a filter twice its size is
// added, so a bucket needs no size known in advance. A new bucket starts at
// the size of the newest filter made, the size its predecessor had reached.
//
// The committer adds the messageIds of a group before it applies the group,
// and Append reads appliedGen before its lookups, so a lookup that should
// see a group's records finds them in the filter too.
type dedupeFilter struct {
	seed maphash.Seed
	mu   sync.RWMutex
	// loaded is set once the stored records are all in the filters;
	// until then every lookup goes to Pebble.
	loaded bool
	// buckets holds a filter for every bucket at or above scannedFrom that
	// has records; a bucket there without one has none.
	buckets map[uint64]*filterChain
	// scannedFrom is the oldest bucket the loader reads into the filters.
	// Nothing is known of older ones (a clock set back could look them up).
	scannedFrom uint64
	// dropped: the buckets below it were range-deleted; the loader must not
	// bring one back.
	dropped  uint64
	bytes    int // memory of all filters
	maxBytes int // bound of bytes: maxFilterBytes but in tests
	lastCap  int // capacity of the newest filter made
}

type filterChain struct {
	filters []*bloomFilter
	// saturated: the memory bound stopped the chain from growing, so the
	// bucket's lookups go to Pebble.
	saturated bool
}

// bloomFilter is a blocked Bloom filter: each key sets bits in one 512-bit
// block, one cache line, so a lookup costs one memory access.
type bloomFilter struct {
	blocks [][8]uint64
	n, cap int
}

func newDedupeFilter(scannedFrom uint64) *dedupeFilter {
	return &dedupeFilter{
		seed:        maphash.MakeSeed(),
		buckets:     map[uint64]*filterChain{},
		scannedFrom: scannedFrom,
		maxBytes:    maxFilterBytes,
		lastCap:     minFilterKeys,
	}
}

// key is what a filter hashes: a dedupe key without its prefix and bucket,
// that is the source and the messageId as appendDedupeKey encodes them.
func filterKey(dedupeKey []byte) []byte { return dedupeKey[dedupeKeyHead:] }

// mayContain reports whether bucket may hold a record for key (from
// filterKey). False means it certainly does not.
func (f *dedupeFilter) mayContain(bucket uint64, key []byte) bool {
	if bucket < f.scannedFrom {
		return true
	}
	h := maphash.Bytes(f.seed, key)
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.loaded {
		return true
	}
	c := f.buckets[bucket]
	if c == nil {
		return false
	}
	if c.saturated {
		return true
	}
	for _, b := range c.filters {
		if b.has(h) {
			return true
		}
	}
	return false
}

// setLoaded lets the filter answer lookups.
func (f *dedupeFilter) setLoaded() {
	f.mu.Lock()
	f.loaded = true
	f.mu.Unlock()
}

// size is the memory of all filters, in bytes.
func (f *dedupeFilter) size() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.bytes
}

// add notes that bucket holds records for keys (from filterKey). The
// committer and the loader call it.
func (f *dedupeFilter) add(bucket uint64, keys [][]byte) {
	if len(keys) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if bucket < f.dropped {
		return
	}
	c := f.buckets[bucket]
	if c == nil {
		c = &filterChain{}
		f.buckets[bucket] = c
	}
	for _, k := range keys {
		if c.saturated {
			return
		}
		var last *bloomFilter
		if len(c.filters) > 0 {
			last = c.filters[len(c.filters)-1]
		}
		if last == nil || last.n >= last.cap {
			size := f.lastCap
			if last != nil {
				size = 2 * last.cap
			}
			last = newBloomFilter(size)
			if f.bytes+last.size() > f.maxBytes {
				f.release(c)
				c.saturated = true
				return
			}
			f.bytes += last.size()
			f.lastCap = size
			c.filters = append(c.filters, last)
		}
		last.add(maphash.Bytes(f.seed, k))
	}
}

// dropBelow forgets the filters of the buckets older than bucket, which the
// committer has range-deleted.
func (f *dedupeFilter) dropBelow(bucket uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropped = max(f.dropped, bucket)
	for b, c := range f.buckets {
		if b < bucket {
			f.release(c)
			delete(f.buckets, b)
		}
	}
}

// release gives back the memory of c's filters. f.mu must be held.
func (f *dedupeFilter) release(c *filterChain) {
	for _, bf := range c.filters {
		f.bytes -= bf.size()
	}
	c.filters = nil
}

func newBloomFilter(keys int) *bloomFilter {
	blocks := max(1, keys*filterBitsPerKey/512)
	return &bloomFilter{blocks: make([][8]uint64, blocks), cap: keys}
}

func (b *bloomFilter) size() int { return len(b.blocks) * 64 }

// probe returns h's block and the seven bit positions in it, taken 9 bits
// at a time from a second mix of h (the block comes from h's high half).
func (b *bloomFilter) probe(h uint64) (*[8]uint64, uint64) {
	hi, _ := bits.Mul64(h, uint64(len(b.blocks)))
	return &b.blocks[hi], h * 0x9e3779b97f4a7c15
}

func (b *bloomFilter) add(h uint64) {
	blk, g := b.probe(h)
	for range 7 {
		blk[(g&511)>>6] |= 1 << (g & 63)
		g >>= 9
	}
	b.n++
}

func (b *bloomFilter) has(h uint64) bool {
	blk, g := b.probe(h)
	for range 7 {
		if blk[(g&511)>>6]&(1<<(g&63)) == 0 {
			return false
		}
		g >>= 9
	}
	return true
}
