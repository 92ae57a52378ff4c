package stats

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/fanout/fanout/internal/jobstore/pebble"
)

// Backend is where Stats keeps what it writes: the minutes, the issue
// groups and the gauges. Stats holds the recent minutes in memory and
// hands a Backend whole values to store; the Backend never merges, except
// that a query sums the minutes of every node (see [NewPostgres]).
//
// There are two: a Pebble database of the node's own (Options.Dir, the
// default) and PostgreSQL (NewPostgres), for nodes whose disks must hold
// nothing another node needs. Its methods are unexported: the two are the
// only implementations, and Stats is their only caller.
type Backend interface {
	// load calls minute for this node's stored minutes at or after from,
	// gauge for its gauges and issue for its issue groups (as JSON).
	load(from int64, minute func(p Pair, minute int64, v []byte), gauge func(p Pair, pending, open int64), issue func(v []byte)) error
	// get returns this node's stored minute of p, nil when there is none.
	get(p Pair, minute int64) ([]byte, error)
	// scan calls fn for the stored minutes in [from, to) whose pair f
	// matches (f's range is not looked at), leaving out this node's minutes at or after ownTo (Stats
	// holds those in memory). node is "" for this node's minutes, and
	// names the node of another node's minute.
	scan(from, to, ownTo int64, f *Filter, fn func(p Pair, minute int64, node string, v []byte)) error
	// issueGroups returns, as JSON, the issue groups refs of another
	// node, those that it has.
	issueGroups(node string, refs []issueRef) ([][]byte, error)
	// otherGauges calls fn with the gauges of every other node sharing
	// the backend, summed over those nodes per pair; none for a backend
	// of the node's own.
	otherGauges(fn func(p Pair, pending, open int64)) error
	// save stores w, all of it or none of it.
	save(w *writes) error
	// prune drops the minutes before cut and the issue groups drop.
	prune(cut int64, drop []issueRef) error
	close() error
}

// writes is what one Flush stores: whole values, each replacing the one
// stored under its key.
type writes struct {
	minutes []minuteRow
	issues  []issueRow
	gauges  []gaugeRow
}

func (w *writes) empty() bool { return len(w.minutes)+len(w.issues)+len(w.gauges) == 0 }

type minuteRow struct {
	pair   Pair
	minute int64
	v      []byte // bucket.appendBinary
}

type issueRef struct {
	pair Pair
	id   uint32
}

type issueRow struct {
	issueRef
	lastSeen time.Time
	v        []byte // the Issue as JSON
}

type gaugeRow struct {
	pair          Pair
	pending, open int64
}

// pebbleBackend keeps the stats in a Pebble database of their own, with
// the keys of codec.go.
type pebbleBackend struct {
	db *pebbledb.DB
}

var _ Backend = (*pebbleBackend)(nil)

func openPebble(dir string, fs vfs.FS, log *slog.Logger, now time.Time) (*pebbleBackend, error) {
	db, err := openDB(dir, &pebbledb.Options{
		// Pebble's routine lines about this secondary database go to debug.
		Logger: pebble.Logger{Log: log, InfoLevel: slog.LevelDebug},
		FS:     fs,
		// Small: the hot minutes live in memory.
		MemTableSize: 4 << 20,
		Cache:        nil,
	}, log, now)
	if err != nil {
		return nil, fmt.Errorf("stats: open %s: %w", dir, err)
	}
	return &pebbleBackend{db: db}, nil
}

func (pb *pebbleBackend) close() error { return pb.db.Close() }

func (pb *pebbleBackend) load(from int64, minute func(Pair, int64, []byte), gauge func(Pair, int64, int64), issue func([]byte)) error {
	it, err := pb.db.NewIter(&pebbledb.IterOptions{
		LowerBound: bucketKey(Pair{}, from), UpperBound: []byte{'m' + 1},
	})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		p, m, ok := parseBucketKey(it.Key())
		if !ok {
			continue
		}
		minute(p, m, it.Value())
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = pb.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{'g'}, UpperBound: []byte{'g' + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		p, ok := parsePair(it.Key()[1:])
		n, k := binary.Varint(it.Value())
		if ok && k > 0 {
			// The open count follows; records written before it existed
			// have none.
			o, _ := binary.Varint(it.Value()[k:])
			gauge(p, n, o)
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = pb.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{'i'}, UpperBound: []byte{'i' + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		issue(it.Value())
	}
	return it.Error()
}

func (pb *pebbleBackend) get(p Pair, minute int64) ([]byte, error) {
	v, closer, err := pb.db.Get(bucketKey(p, minute))
	if errors.Is(err, pebbledb.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

func (pb *pebbleBackend) scan(from, to, ownTo int64, f *Filter, fn func(Pair, int64, string, []byte)) error {
	// Every minute here is this node's.
	to = min(to, ownTo)
	if from >= to {
		return nil
	}
	it, err := pb.db.NewIter(&pebbledb.IterOptions{
		LowerBound: bucketKey(Pair{}, from), UpperBound: bucketKey(Pair{}, to),
	})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		p, minute, ok := parseBucketKey(it.Key())
		if !ok || !f.match(p) {
			continue
		}
		fn(p, minute, "", it.Value())
	}
	return it.Error()
}

// issueGroups finds nothing: a node's own database holds no other node's
// minutes to ask for.
func (pb *pebbleBackend) issueGroups(string, []issueRef) ([][]byte, error) { return nil, nil }

func (pb *pebbleBackend) otherGauges(func(Pair, int64, int64)) error { return nil }

func (pb *pebbleBackend) save(w *writes) error {
	batch := pb.db.NewBatch()
	defer batch.Close()
	for _, m := range w.minutes {
		batch.Set(bucketKey(m.pair, m.minute), m.v, nil)
	}
	for _, is := range w.issues {
		batch.Set(issueKey(is.pair, is.id), is.v, nil)
	}
	for _, g := range w.gauges {
		batch.Set(gaugeKey(g.pair), binary.AppendVarint(binary.AppendVarint(nil, g.pending), g.open), nil)
	}
	return batch.Commit(pebbledb.Sync)
}

func (pb *pebbleBackend) prune(cut int64, drop []issueRef) error {
	b := pb.db.NewBatch()
	defer b.Close()
	// Minutes come first in the key space: one range deletion.
	if err := b.DeleteRange([]byte{'m'}, bucketKey(Pair{}, cut), nil); err != nil {
		return err
	}
	for _, r := range drop {
		if err := b.Delete(issueKey(r.pair, r.id), nil); err != nil {
			return err
		}
	}
	return b.Commit(pebbledb.NoSync)
}
