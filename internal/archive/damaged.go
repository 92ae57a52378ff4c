package archive

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
)

// # A damaged archive file
//
// Write appends one complete, synced gzip member per call, so a file can be
// damaged in two ways: its last member torn by a crash in the middle of a
// Write (whose jobs are still in the store, since Write never returned), or
// bytes altered anywhere by the disk. Either way Scan does not stop at the
// damage and does not drop the file: readRecover keeps every member whose
// gzip checksum holds, skipping to the next member header after a damaged
// one; repair moves the file aside as <name>.bad (kept, for a look) and
// writes the good records back under the file's name, so that they stay
// replayable; an ERROR line names both and counts what was lost, and
// Damaged counts the files repaired.

// readRecover returns the records of every intact gzip member of the
// archive file b, and an error describing the damage, if any: the members
// whose data did not check out, and the bytes skipped.
func readRecover(b []byte) (recs []Record, damage error) {
	var (
		bad     []string
		skipped int
	)
	for off := 0; off < len(b); {
		n, mrecs, err := readMember(b[off:])
		if err == nil {
			recs = append(recs, mrecs...)
			off += n
			continue
		}
		bad = append(bad, fmt.Sprintf("member at offset %d: %v", off, err))
		// Resynchronize on the next gzip header.
		next := bytes.Index(b[off+1:], []byte{0x1f, 0x8b, 8})
		if next < 0 {
			skipped += len(b) - off
			break
		}
		skipped += next + 1
		off += next + 1
	}
	if bad == nil {
		return recs, nil
	}
	return recs, fmt.Errorf("%d damaged gzip member(s), %d bytes skipped: %s", len(bad), skipped, bad[0])
}

// readMember reads the gzip member at the start of b and returns its
// length and records, or an error if it does not check out (a torn or
// altered member, or a line that is not a record).
func readMember(b []byte) (n int, recs []Record, err error) {
	br := bytes.NewReader(b)
	// bufio would read past the member's end; bytes.Reader is a
	// ByteReader, so gzip reads exactly the member.
	zr, err := gzip.NewReader(br)
	if err != nil {
		return 0, nil, err
	}
	zr.Multistream(false)
	data, err := io.ReadAll(zr)
	if err != nil {
		return 0, nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return 0, nil, fmt.Errorf("line %d: %w", len(recs)+1, err)
		}
		recs = append(recs, r)
	}
	return len(b) - br.Len(), recs, nil
}

// read returns the records of one archive file for Scan, repairing it
// first if it is damaged.
func (w *Writer) read(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, damage := readRecover(b)
	if damage == nil {
		return recs, nil
	}
	return w.repair(path)
}

// repair moves the damaged file at path aside and writes its intact
// records back in its place. It holds the writer's lock, so that no Write
// appends to the file meanwhile, and reads the file again under it.
func (w *Writer) repair(path string) ([]Record, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, damage := readRecover(b)
	if damage == nil { // repaired by another Scan meanwhile
		return recs, nil
	}
	bad := path + ".bad"
	for i := 1; ; i++ {
		if _, err := os.Stat(bad); errors.Is(err, os.ErrNotExist) {
			break
		}
		bad = path + ".bad." + strconv.Itoa(i)
	}
	// The good records go to a temporary file first, so that a crash
	// leaves either the damaged file or the repaired one under path.
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := writeFile(tmp, recs); err != nil {
		return nil, fmt.Errorf("archive %s is damaged (%v), and writing its intact records failed: %w", path, damage, err)
	}
	if err := os.Link(path, bad); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("archive %s is damaged (%v), and moving it aside failed: %w", path, damage, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("archive %s is damaged (%v), and replacing it failed: %w", path, damage, err)
	}
	w.damaged.Add(1)
	w.logger().Error("damaged archive file: moved aside; its intact records were kept and stay replayable, the rest is lost",
		"file", path, "moved_to", bad, "kept_records", len(recs), "damage", damage.Error())
	return recs, nil
}

// writeFile writes recs to a new file at path as one gzip member, synced.
func writeFile(path string, recs []Record) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	enc := json.NewEncoder(zw)
	for i := range recs {
		if err := enc.Encode(&recs[i]); err != nil {
			f.Close()
			return err
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Damaged returns how many damaged archive files Scan has repaired since
// the writer was made.
func (w *Writer) Damaged() int64 { return w.damaged.Load() }

func (w *Writer) logger() *slog.Logger {
	if w.Logger != nil {
		return w.Logger
	}
	return slog.Default()
}
