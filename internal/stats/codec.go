package stats

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// errCorrupt marks a stats record that cannot be read.
var errCorrupt = errors.New("corrupt record")

// Keys. Minutes come first so that pruning is one range deletion:
//
//	'm' minute(8, big endian) source 0x00 destination -> bucket
//	'i' source 0x00 destination 0x00 id(4)             -> issue group, JSON
//	'g' source 0x00 destination                        -> pending retry, then open jobs: varints
//
// Configured names never hold a NUL byte.
func bucketKey(p Pair, minute int64) []byte {
	k := make([]byte, 0, 10+len(p.Source)+len(p.Destination))
	k = append(k, 'm')
	k = binary.BigEndian.AppendUint64(k, uint64(minute))
	return appendPair(k, p)
}

func appendPair(k []byte, p Pair) []byte {
	k = append(k, p.Source...)
	k = append(k, 0)
	return append(k, p.Destination...)
}

func parsePair(b []byte) (Pair, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return Pair{}, false
	}
	return Pair{string(b[:i]), string(b[i+1:])}, true
}

func parseBucketKey(k []byte) (Pair, int64, bool) {
	if len(k) < 10 || k[0] != 'm' {
		return Pair{}, 0, false
	}
	p, ok := parsePair(k[9:])
	return p, int64(binary.BigEndian.Uint64(k[1:9])), ok
}

func issueKey(p Pair, id uint32) []byte {
	k := appendPair([]byte{'i'}, p)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, id)
}

func gaugeKey(p Pair) []byte { return appendPair([]byte{'g'}, p) }

// bucketVersion is the first byte of an encoded bucket.
const bucketVersion = 1

func (b *bucket) appendBinary(buf []byte) []byte {
	buf = append(buf, bucketVersion)
	c := &b.c
	for _, v := range [...]int64{c.Received, c.Filtered, c.Unsupported, c.DeliveredFirst,
		c.DeliveredRetry, c.PendingRetry, c.Failed, c.Archived} {
		buf = binary.AppendVarint(buf, v)
	}
	buf = b.latency.AppendBinary(buf)
	buf = binary.AppendUvarint(buf, uint64(len(b.issues)))
	for id, n := range b.issues {
		buf = binary.AppendUvarint(buf, uint64(id))
		buf = binary.AppendVarint(buf, n)
	}
	g := &b.ingest
	buf = binary.AppendVarint(buf, g.Accepted)
	buf = binary.AppendVarint(buf, g.Deduplicated)
	buf = binary.AppendUvarint(buf, uint64(len(g.Rejected)))
	for r, n := range g.Rejected {
		buf = binary.AppendUvarint(buf, uint64(len(r)))
		buf = append(buf, r...)
		buf = binary.AppendVarint(buf, n)
	}
	// Added after the first release: decode reads it only when present.
	buf = binary.AppendVarint(buf, c.RetriedDuplicateRisk)
	return buf
}

func (b *bucket) decode(buf []byte) error {
	if len(buf) == 0 || buf[0] != bucketVersion {
		return errCorrupt
	}
	buf = buf[1:]
	varint := func() int64 { return next(&buf, binary.Varint) }
	uvarint := func() uint64 { return next(&buf, binary.Uvarint) }
	c := &b.c
	for _, p := range [...]*int64{&c.Received, &c.Filtered, &c.Unsupported, &c.DeliveredFirst,
		&c.DeliveredRetry, &c.PendingRetry, &c.Failed, &c.Archived} {
		*p = varint()
	}
	if buf == nil {
		return errCorrupt
	}
	var err error
	if buf, err = b.latency.Decode(buf); err != nil {
		return err
	}
	n := uvarint()
	if n > MaxIssues+1 {
		return errCorrupt
	}
	for range n {
		id := uint32(uvarint())
		if b.issues == nil {
			b.issues = map[uint32]int64{}
		}
		b.issues[id] += varint()
	}
	b.ingest.Accepted = varint()
	b.ingest.Deduplicated = varint()
	n = uvarint()
	if n > maxReasons+1 {
		return errCorrupt
	}
	for range n {
		l := uvarint()
		if l > uint64(len(buf)) {
			return errCorrupt
		}
		r := string(buf[:l])
		buf = buf[l:]
		b.ingest.reject(r, varint())
	}
	if len(buf) > 0 {
		c.RetriedDuplicateRisk = varint()
	}
	if buf == nil {
		return errCorrupt
	}
	return nil
}

// next reads one number from the start of *buf with read and moves past it.
// On a malformed one it returns 0 and sets *buf to nil, which decode
// checks after a run of reads rather than after each.
func next[T int64 | uint64](buf *[]byte, read func([]byte) (T, int)) T {
	v, k := read(*buf)
	if k <= 0 {
		*buf = nil
		return 0
	}
	*buf = (*buf)[k:]
	return v
}
