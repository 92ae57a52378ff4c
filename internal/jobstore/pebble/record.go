package pebble

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/fanout/fanout/internal/event"
)

// recordVersion is the first byte of every job record, so that the format
// can change without guessing what old bytes mean.
const recordVersion = 1

// jobRecord is what a pending or retry key's value holds. The queue, Seq and
// due time are in the key. An empty value (written by earlier versions for a
// rescheduled pending job) is skipped by readers.
type jobRecord struct {
	Attempts  int
	LastError string
	Event     event.Event
}

// appendRecord encodes r after b:
//
//	version      byte (1)
//	attempts     uvarint
//	lastError    uvarint length + bytes
//	messageId    uvarint length + bytes
//	type         uvarint length + bytes
//	receivedAt   byte 0 (zero time) or 1 followed by varint Unix nanoseconds
//	payload      uvarint length + bytes
//
// The event's source is the queue's source, read back from the key.
func appendRecord(b []byte, r *jobRecord) []byte {
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, uint64(max(r.Attempts, 0)))
	b = appendString(b, r.LastError)
	b = appendString(b, r.Event.MessageID)
	b = appendString(b, r.Event.Type)
	if r.Event.ReceivedAt.IsZero() {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendVarint(b, int64(timeKey(r.Event.ReceivedAt)^(1<<63)))
	}
	b = binary.AppendUvarint(b, uint64(len(r.Event.Payload)))
	return append(b, r.Event.Payload...)
}

// decodeRecord decodes what appendRecord wrote. Errors wrap errCorrupt.
func decodeRecord(b []byte) (jobRecord, error) {
	var r jobRecord
	if len(b) == 0 || b[0] != recordVersion {
		return r, fmt.Errorf("%w: job record version is not %d", errCorrupt, recordVersion)
	}
	b = b[1:]
	attempts, w := binary.Uvarint(b)
	if w <= 0 || attempts > 1<<31 {
		return r, fmt.Errorf("%w: bad attempts", errCorrupt)
	}
	r.Attempts = int(attempts)
	b = b[w:]
	var err error
	if r.LastError, b, err = readString(b); err != nil {
		return r, fmt.Errorf("last error: %w", err)
	}
	if r.Event.MessageID, b, err = readString(b); err != nil {
		return r, fmt.Errorf("message id: %w", err)
	}
	if r.Event.Type, b, err = readString(b); err != nil {
		return r, fmt.Errorf("type: %w", err)
	}
	if len(b) == 0 {
		return r, fmt.Errorf("%w: truncated before receivedAt", errCorrupt)
	}
	switch b[0] {
	case 0:
		b = b[1:]
	case 1:
		ns, w := binary.Varint(b[1:])
		if w <= 0 {
			return r, fmt.Errorf("%w: bad receivedAt", errCorrupt)
		}
		r.Event.ReceivedAt = time.Unix(0, ns).UTC()
		b = b[1+w:]
	default:
		return r, fmt.Errorf("%w: bad receivedAt flag %d", errCorrupt, b[0])
	}
	n, w := binary.Uvarint(b)
	if w <= 0 || n != uint64(len(b)-w) {
		return r, fmt.Errorf("%w: payload length does not match the record", errCorrupt)
	}
	if n > 0 {
		r.Event.Payload = append([]byte(nil), b[w:]...)
	}
	return r, nil
}
