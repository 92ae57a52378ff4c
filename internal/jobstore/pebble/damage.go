package pebble

// # A damaged directory
//
// The job store holds events that clients were told are stored, so a
// damaged file must never make it start with jobs silently missing. What
// Pebble does by itself, and what Open adds:
//
//   - A torn tail of the last WAL (a crash in the middle of a write) is
//     normal: Pebble replays up to the torn record and drops the rest. What
//     follows the tear was never synced, so no Append returned for it. Open
//     says so in a WARN line naming the file and the offset.
//   - Damage inside the last WAL looks the same to Pebble when no later
//     block proves it (it only looks from the next 32 KB block on): it
//     would replay up to the damage and drop every record after it, synced
//     ones included, without a word. Open reads the WAL first (checkWAL):
//     when a record after the damage says that bytes past it had been
//     synced, or the WAL ends in the trailer written when it was closed
//     (and synced), the damage is not a torn write, and Open refuses to
//     start. Damage in front of the last synced write of a WAL that was
//     not closed cleanly cannot be told from a torn write (Pebble cannot
//     either): it is replayed up to the damage, with the WARN line.
//   - Damage in an older WAL makes Pebble's Open fail with ErrCorruption;
//     so does most damage in the MANIFEST. But damage in its last 32 KB is
//     taken for a torn tail, like the WAL's, and Pebble opens without the
//     sstables that the records after it list. Open refuses a MANIFEST
//     with a valid record after the damage: each record was synced before
//     the next was written, so that damage is no torn write.
//   - A damaged sstable is not seen by Pebble's Open at all: a read fails
//     later, and Pebble's default is to call Fatalf (a panic) from whatever
//     goroutine read it. Open reads every key once (verifyTables), and the
//     store's event listener logs a corruption found later at ERROR instead
//     of panicking, while the read that met it returns the error.
//
// In each refusal the error names the file and says what to do (damaged).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// errDamaged marks a refusal to open a damaged store.
var errDamaged = errors.New("damaged")

// IsDamaged reports whether err is CheckDir's or Open's refusal of a
// damaged database.
func IsDamaged(err error) bool { return errors.Is(err, errDamaged) }

// damaged turns an error met while opening the store in dir into one that
// says what to do, when it is a corruption; other errors pass unchanged.
func damaged(dir string, err error) error {
	// Pebble marks what it finds in a file as a corruption, but not a file
	// that is missing or has the wrong size.
	msg := err.Error()
	if !pebbledb.IsCorruptionError(err) && !errors.Is(err, errDamaged) &&
		!strings.Contains(msg, "size mismatch") && !strings.Contains(msg, "unknown to the objstorage provider") {
		return err
	}
	file := ""
	if info := pebbledb.ExtractDataCorruptionInfo(err); info != nil {
		file = info.Path + ": "
	}
	return fmt.Errorf("%[1]s%[2]w\n"+
		"The job store in %[3]s is damaged and holds events not yet delivered, so fanout does not start "+
		"rather than run without them. Restore the directory from a backup or, to start anyway and lose "+
		"its jobs, move it aside (mv %[3]s %[3]s.bad): an empty store is made in its place",
		file, cleanError{err}, dir)
}

// corruptionListener logs a corruption that a read meets, at ERROR with the
// file, instead of Pebble's default Fatalf. The read itself returns the
// error, so the caller (delivery, or Open's verifyTables) decides.
func corruptionListener(log *slog.Logger) *pebbledb.EventListener {
	return &pebbledb.EventListener{
		DataCorruption: func(info pebbledb.DataCorruptionInfo) {
			log.Error("on-disk corruption in the job store: reads of these keys fail; restore the directory from a backup",
				"file", info.Path, "err", info.Details.Error()) // not %+v: no stack trace
		},
	}
}

// verifyTables reads every key of the store once, so that a damaged
// sstable is found when the store opens rather than by the first
// delivery that reads it. Job records live in blob files and are not read:
// the scan costs about as much as the keys, a few bytes per job.
func verifyTables(db *pebbledb.DB) error {
	it, err := db.NewIter(nil)
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
	}
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}

// WAL record format (Pebble's record package): 32 KB blocks of chunks,
// never straddling a block; a chunk is checksum(4) length(2) encoding(1),
// then for the recyclable encodings the WAL's number(4), and for the
// WAL-sync encodings the offset synced when the chunk was written(8).
const (
	walBlockSize      = 32 << 10
	legacyHeader      = 7
	recyclableHeader  = legacyHeader + 4
	walSyncHeader     = recyclableHeader + 8
	firstWALSyncChunk = 9
	lastWALSyncChunk  = 12
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// walChunk reports whether a valid chunk starts at b[p] (p inside b's
// block), and returns its end, the number of the WAL that wrote it (num
// for the legacy encodings, which carry none) and, for a WAL-sync chunk,
// its synced offset (else -1).
func walChunk(b []byte, p int, num uint32) (end int, logNum uint32, synced int64, ok bool) {
	blockEnd := min(len(b), (p/walBlockSize+1)*walBlockSize)
	if p+legacyHeader > blockEnd {
		return 0, 0, 0, false
	}
	sum := binary.LittleEndian.Uint32(b[p:])
	n := int(binary.LittleEndian.Uint16(b[p+4:]))
	enc := b[p+6]
	head := 0
	switch {
	case enc >= 1 && enc <= 4:
		head = legacyHeader
	case enc >= 5 && enc <= 8:
		head = recyclableHeader
	case enc >= firstWALSyncChunk && enc <= lastWALSyncChunk:
		head = walSyncHeader
	default:
		return 0, 0, 0, false
	}
	if p+head+n > blockEnd {
		return 0, 0, 0, false
	}
	c := crc32.Update(0, crcTable, b[p+6:p+head+n])
	if (c>>15|c<<17)+0xa282ead8 != sum { // Pebble's masked CRC-32C
		return 0, 0, 0, false
	}
	logNum, synced = num, -1
	if head > legacyHeader {
		logNum = binary.LittleEndian.Uint32(b[p+7:])
	}
	if head == walSyncHeader {
		synced = int64(binary.LittleEndian.Uint64(b[p+11:]))
	}
	return p + head + n, logNum, synced, true
}

// walTail reads the WAL b of number num chunk by chunk and returns where
// its chunks end (len(b) when the WAL ends cleanly: at its end, in zeros,
// or where a recycled file's chunks of an older WAL begin) and, when a
// valid chunk after that point says that bytes past it had been synced,
// the largest such synced offset (else -1).
func walTail(b []byte, num uint32) (stop int, syncedAfter int64) {
	p := 0
	for p < len(b) {
		blockEnd := min(len(b), (p/walBlockSize+1)*walBlockSize)
		if blockEnd-p < walSyncHeader && allZero(b[p:blockEnd]) {
			p = blockEnd // the writer pads a block's end that cannot hold a header
			continue
		}
		if p+legacyHeader > blockEnd {
			break // a few bytes, not zeros, where no header fits
		}
		// A header of another WAL ends this one, as in Pebble's reader:
		// the trailer written on close (which carries the next number), or
		// an older WAL's chunks in a recycled file.
		if e := b[p+6]; e >= 5 && e <= lastWALSyncChunk && p+recyclableHeader <= blockEnd &&
			binary.LittleEndian.Uint32(b[p+7:]) != num {
			return len(b), -1
		}
		end, _, _, ok := walChunk(b, p, num)
		if !ok {
			break
		}
		p = end
	}
	if p == len(b) || allZero(b[p:]) {
		return len(b), -1
	}
	stop, syncedAfter = p, -1
	// The trailer that Pebble writes when it closes a WAL (after which it
	// syncs the whole file) proves that everything before it was synced.
	trailer := binary.LittleEndian.AppendUint32([]byte{0, 0, 0, 0, 0, 0, 5}, num+1)
	if i := bytes.LastIndex(b[stop+1:], trailer); i >= 0 {
		syncedAfter = int64(stop + 1 + i)
	}
	for q := stop + 1; q+walSyncHeader <= len(b); q++ {
		if e := b[q+6]; e < firstWALSyncChunk || e > lastWALSyncChunk {
			continue
		}
		if _, logNum, synced, ok := walChunk(b, q, num); ok && logNum == num && synced > int64(stop) && synced > syncedAfter {
			syncedAfter = synced
		}
	}
	return stop, syncedAfter
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// newestFile returns the name and number of the newest file in names that
// is named prefix, a number, then suffix ("", 0 when there is none).
func newestFile(names []string, prefix, suffix string) (string, uint64) {
	name, num := "", uint64(0)
	for _, f := range names {
		if !strings.HasPrefix(f, prefix) || !strings.HasSuffix(f, suffix) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(f, prefix), suffix), 10, 32)
		if err == nil && (name == "" || n > num) {
			name, num = f, n
		}
	}
	return name, num
}

// CheckDir runs on the Pebble database in dir the checks that Open runs
// before Pebble opens it (see checkWAL), for fanout's other database:
// it returns an error for a damaged last WAL or MANIFEST that Pebble would
// open without a word, and logs a torn WAL tail.
func CheckDir(dir string, log *slog.Logger) error {
	return checkWAL(nil, dir, log)
}

// checkWAL reads the last WAL and the MANIFEST in dir before Pebble does:
// it logs a torn tail of the WAL, and refuses a WAL damaged before bytes
// that had been synced, or a MANIFEST damaged before a valid record
// (every MANIFEST record is synced before the next is written). Pebble
// would take either for a torn tail and silently drop what follows: the
// WAL's jobs, or the MANIFEST's later sstables (their jobs).
func checkWAL(fs vfs.FS, dir string, log *slog.Logger) error {
	if fs == nil {
		fs = vfs.Default
	}
	names, err := fs.List(dir)
	if err != nil {
		return nil // a new store; Pebble's Open reports any other problem
	}
	read := func(name string) ([]byte, error) {
		f, err := fs.Open(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("jobstore/pebble: open %s: %w", dir, err)
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil {
			return nil, fmt.Errorf("jobstore/pebble: open %s: read %s: %w", dir, name, err)
		}
		return b, nil
	}
	if name, _ := newestFile(names, "MANIFEST-", ""); name != "" {
		b, err := read(name)
		if err != nil {
			return err
		}
		stop, _ := walTail(b, 0)
		for q := stop + 1; stop < len(b) && q+legacyHeader <= len(b); q++ {
			if _, _, _, ok := walChunk(b, q, 0); ok {
				path := filepath.Join(dir, name)
				return fmt.Errorf("jobstore/pebble: open %s: %w: %s is unreadable at offset %d, but holds valid records after it (from offset %d): "+
					"Pebble would drop them, and the sstables they list, without a trace", dir, errDamaged, path, stop, q)
			}
		}
	}
	name, num := newestFile(names, "", ".log")
	if name == "" {
		return nil
	}
	path := filepath.Join(dir, name)
	b, err := read(name)
	if err != nil {
		return err
	}
	stop, syncedAfter := walTail(b, uint32(num))
	switch {
	case syncedAfter >= 0:
		return fmt.Errorf("jobstore/pebble: open %s: %w: WAL %s is unreadable at offset %d, but records after it were synced up to offset %d: "+
			"replaying it would drop them, and the events in them, without a trace. To keep what precedes the damage and lose the rest, "+
			"truncate it (truncate -s %d %s)",
			dir, errDamaged, path, stop, syncedAfter, stop, path)
	case stop < len(b):
		log.Warn("the last WAL ends in a torn write, as a crash leaves it: it is replayed up to the tear, and what follows is dropped "+
			"(after a crash, writes that were never synced: no Append returned for them)",
			"file", path, "offset", stop, "dropped_bytes", len(b)-stop)
	}
	return nil
}

// cleanError leaves out of err's text the line that Pebble's corruption
// errors add to carry their details ("<corruption detail carrier>").
type cleanError struct{ err error }

func (e cleanError) Error() string {
	return strings.ReplaceAll(e.err.Error(), "\n<corruption detail carrier>", "")
}

func (e cleanError) Unwrap() error { return e.err }
