package pebble

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// Keyspace prefixes. doc.go explains the layout.
const (
	prefixDedupe  = 'd'
	prefixMeta    = 'm'
	prefixPending = 'p'
	prefixRetry   = 'r'
)

// metaSeqKey holds the highest Seq ever assigned, as 8 big-endian bytes.
var metaSeqKey = []byte{prefixMeta, 's', 'e', 'q'}

// errCorrupt is wrapped by every error about a key or value that does not
// decode: the store never panics on bad bytes.
var errCorrupt = errors.New("corrupt record")

// appendString appends s with its length in front, so that a string followed
// by more bytes can always be told apart from a longer string.
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// readString reads a string written by appendString and returns the rest.
func readString(b []byte) (string, []byte, error) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, fmt.Errorf("%w: bad string length", errCorrupt)
	}
	b = b[w:]
	return string(b[:n]), b[n:], nil
}

// appendQueue appends the queue's encoding. Both names are length-prefixed,
// so no queue's encoding is a prefix of another's: every key that starts
// with prefix+appendQueue(q) belongs to q, and the keys of q form one
// contiguous range.
func appendQueue(b []byte, q jobstore.Queue) []byte {
	return appendString(appendString(b, q.Source), q.Destination)
}

// readQueue reads what appendQueue wrote and returns the rest.
func readQueue(b []byte) (jobstore.Queue, []byte, error) {
	src, b, err := readString(b)
	if err != nil {
		return jobstore.Queue{}, nil, err
	}
	dst, b, err := readString(b)
	if err != nil {
		return jobstore.Queue{}, nil, err
	}
	return jobstore.Queue{Source: src, Destination: dst}, b, nil
}

// queuePrefix is the first key of q in the keyspace of prefix.
func queuePrefix(prefix byte, q jobstore.Queue) []byte {
	return appendQueue([]byte{prefix}, q)
}

// prefixEnd returns the smallest key greater than every key that starts with
// p: the exclusive upper bound of p's range.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// pendingKey is 'p' queue seq.
func pendingKey(q jobstore.Queue, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(queuePrefix(prefixPending, q), seq)
}

// retryKey is 'r' queue dueAt seq: a queue's retry jobs sort by due time,
// ties by Seq.
func retryKey(q jobstore.Queue, dueAt time.Time, seq uint64) []byte {
	k := binary.BigEndian.AppendUint64(queuePrefix(prefixRetry, q), timeKey(dueAt))
	return binary.BigEndian.AppendUint64(k, seq)
}

// decodeJobKey splits a pending or retry key into its queue, due time (zero
// for a pending key) and Seq.
func decodeJobKey(k []byte) (q jobstore.Queue, dueAt time.Time, seq uint64, err error) {
	if len(k) == 0 || (k[0] != prefixPending && k[0] != prefixRetry) {
		return q, dueAt, 0, fmt.Errorf("%w: key %q is not a job key", errCorrupt, k)
	}
	q, rest, err := readQueue(k[1:])
	if err != nil {
		return q, dueAt, 0, fmt.Errorf("job key %q: %w", k, err)
	}
	want := 8
	if k[0] == prefixRetry {
		want = 16
	}
	if len(rest) != want {
		return q, dueAt, 0, fmt.Errorf("%w: job key %q has %d trailing bytes, want %d", errCorrupt, k, len(rest), want)
	}
	if k[0] == prefixRetry {
		dueAt = keyTime(binary.BigEndian.Uint64(rest))
		rest = rest[8:]
	}
	return q, dueAt, binary.BigEndian.Uint64(rest), nil
}

// Times are stored as nanoseconds since 1970, clamped to what an int64 holds
// (years 1678 to 2262), with the sign bit flipped so that big-endian byte
// order is time order.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

func timeKey(t time.Time) uint64 {
	switch {
	case t.Before(minTime):
		t = minTime
	case t.After(maxTime):
		t = maxTime
	}
	return uint64(t.UnixNano()) ^ (1 << 63)
}

func keyTime(k uint64) time.Time {
	return time.Unix(0, int64(k^(1<<63))).UTC()
}

// dedupeBucketWidth is how much time one dedupe bucket covers. Fixed, not
// derived from the window, so that changing the window between runs never
// misreads old buckets; with the default 24h window a lookup reads two
// buckets.
const dedupeBucketWidth = 24 * time.Hour

// dedupeBucket numbers the bucket that holds t (days since 1970, UTC).
func dedupeBucket(t time.Time) uint64 {
	s := t.Unix()
	if s < 0 {
		return 0
	}
	return uint64(s / int64(dedupeBucketWidth/time.Second))
}

// dedupeBucketStart is the first key of a bucket, and so the exclusive end of
// every older bucket.
func dedupeBucketStart(bucket uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixDedupe}, bucket)
}

// dedupeKeyHead is the length of a dedupe key's prefix byte and bucket;
// the source and messageId follow.
const dedupeKeyHead = 1 + 8

// dedupeKeyBucket returns the bucket of a dedupe key, which must be at
// least dedupeKeyHead long.
func dedupeKeyBucket(k []byte) uint64 { return binary.BigEndian.Uint64(k[1:dedupeKeyHead]) }

// dedupeKey is 'd' bucket source messageId.
func dedupeKey(bucket uint64, source, messageID string) []byte {
	return appendDedupeKey(nil, bucket, source, messageID)
}

// appendDedupeKey appends dedupeKey(bucket, source, messageID) to dst.
func appendDedupeKey(dst []byte, bucket uint64, source, messageID string) []byte {
	dst = binary.BigEndian.AppendUint64(append(dst, prefixDedupe), bucket)
	return append(appendString(dst, source), messageID...)
}
