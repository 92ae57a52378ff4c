package stats

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/fanout/fanout/internal/jobstore/pebble"
)

// openDB opens the stats database in dir and reads every record of it
// once, so that damage is found now and not by a query next week.
//
// Stats are derived data: losing them loses history, never an event. So a
// damaged database does not stop fanout: it is moved aside to
// dir.bad-<time> (kept, for a look or a repair), an ERROR line says so,
// and fanout starts with empty stats. Other errors (permissions, a
// database locked by another fanout) are returned.
func openDB(dir string, o *pebbledb.Options, log *slog.Logger, now time.Time) (*pebbledb.DB, error) {
	// A corruption met by a later read is logged and returned to the
	// reader, instead of Pebble's default, a panic.
	o.EventListener = &pebbledb.EventListener{DataCorruption: func(info pebbledb.DataCorruptionInfo) {
		log.Error("on-disk corruption in the stats database: queries that read it fail", "file", info.Path, "err", info.Details.Error())
	}}
	// Pebble would take some damage for a torn tail and open without what
	// follows it; the job store's checks find it.
	err := pebble.CheckDir(dir, log)
	var db *pebbledb.DB
	if err == nil {
		db, err = pebbledb.Open(dir, o)
	}
	if err == nil {
		if err = readAll(db); err == nil {
			return db, nil
		}
		db.Close()
	}
	if !isDamage(err) {
		return nil, err
	}
	bad := dir + ".bad-" + now.UTC().Format("20060102T150405Z")
	if rerr := os.Rename(dir, bad); rerr != nil {
		return nil, fmt.Errorf("%w (and moving it aside failed: %w)", err, rerr)
	}
	log.Error("the stats database is damaged: moved aside, starting with empty stats; the events and jobs are not affected",
		"dir", dir, "moved_to", bad, "err", strings.ReplaceAll(err.Error(), "\n<corruption detail carrier>", ""))
	return pebbledb.Open(dir, o)
}

// isDamage tells whether err from opening or reading a database means a
// damaged file: Pebble marks what it finds in a file as a corruption, but
// not a file that is missing or has the wrong size.
func isDamage(err error) bool {
	msg := err.Error()
	return pebbledb.IsCorruptionError(err) || pebble.IsDamaged(err) || strings.Contains(msg, "size mismatch") ||
		strings.Contains(msg, "unknown to the objstorage provider")
}

// readAll reads every key and value of db.
func readAll(db *pebbledb.DB) error {
	it, err := db.NewIter(nil)
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		if _, err := it.ValueAndErr(); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}
