package stats

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
)

// Run writes changes every FlushInterval and prunes what is older than
// Retention, until ctx ends; then it writes once more and returns.
func (s *Stats) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.FlushInterval)
	defer t.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-ctx.Done():
			if err := s.Flush(); err != nil {
				s.log.Error("write stats at shutdown", "err", err)
			}
			return
		case <-t.C:
		}
		if err := s.Flush(); err != nil {
			s.log.Error("write stats", "err", err)
		}
		if now := s.opts.Now(); now.Sub(lastPrune) >= time.Hour {
			lastPrune = now
			if err := s.Prune(); err != nil {
				s.log.Error("prune stats", "err", err)
			}
		}
	}
}

// Flush writes every change since the last Flush in one synced batch, then
// forgets the clean minutes older than Hot.
func (s *Stats) Flush() error {
	batch := s.db.NewBatch()
	defer batch.Close()
	var written []*bucket
	s.mu.Lock()
	for k, b := range s.hot {
		if b.dirty {
			batch.Set(bucketKey(k.pair, k.minute), b.appendBinary(nil), nil)
			b.dirty = false
			written = append(written, b)
		}
	}
	for p, pi := range s.issues {
		for _, is := range pi.byID {
			if is.dirty {
				v, err := json.Marshal(is)
				if err == nil {
					batch.Set(issueKey(p, is.ID), v, nil)
				}
				is.dirty = false
			}
		}
	}
	for _, p := range s.dirty {
		g := s.gauges[p.Destination][p.Source]
		batch.Set(gaugeKey(p), binary.AppendVarint(binary.AppendVarint(nil, g.pending), g.open), nil)
		g.dirty = false
	}
	s.dirty = s.dirty[:0]
	s.mu.Unlock()
	if batch.Empty() {
		return nil
	}
	if err := batch.Commit(pebbledb.Sync); err != nil {
		// Mark them again so the next Flush retries.
		s.mu.Lock()
		for _, b := range written {
			b.dirty = true
		}
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	cut := minuteOf(s.opts.Now().Add(-s.opts.Hot))
	for k, b := range s.hot {
		if k.minute < cut && !b.dirty {
			delete(s.hot, k)
		}
	}
	s.completeFrom = max(s.completeFrom, cut)
	s.mu.Unlock()
	return nil
}

// Prune deletes the minutes and issue groups older than Retention.
func (s *Stats) Prune() error {
	cut := s.opts.Now().Add(-s.opts.Retention)
	cutMin := minuteOf(cut)
	var drop [][]byte
	s.mu.Lock()
	for k := range s.hot {
		if k.minute < cutMin {
			delete(s.hot, k)
		}
	}
	for p, pi := range s.issues {
		for id, is := range pi.byID {
			if is.LastSeen.Before(cut) {
				delete(pi.byID, id)
				delete(pi.byKey, is.key())
				drop = append(drop, issueKey(p, id))
			}
		}
	}
	s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange([]byte{'m'}, bucketKey(Pair{}, cutMin), nil); err != nil {
		return err
	}
	for _, k := range drop {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebbledb.NoSync)
}

// load reads the hot minutes, the issue groups and the gauges. Minutes of
// a corrupt record are logged and skipped: counting them from zero is
// better than refusing to start.
func (s *Stats) load() error {
	it, err := s.db.NewIter(&pebbledb.IterOptions{
		LowerBound: bucketKey(Pair{}, s.completeFrom), UpperBound: []byte{'m' + 1},
	})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		p, minute, ok := parseBucketKey(it.Key())
		b := &bucket{}
		if !ok || b.decode(it.Value()) != nil {
			s.log.Warn("skipping an unreadable stats minute", "key", fmt.Sprintf("%q", it.Key()))
			continue
		}
		s.hot[bkey{p, minute}] = b
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = s.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{'g'}, UpperBound: []byte{'g' + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		p, ok := parsePair(it.Key()[1:])
		n, k := binary.Varint(it.Value())
		if ok && k > 0 {
			g := s.gauge(p)
			g.pending = n
			// The open count follows; records written before it existed
			// have none.
			if o, k2 := binary.Varint(it.Value()[k:]); k2 > 0 {
				g.open = o
			}
			g.dirty = false
		}
	}
	s.dirty = s.dirty[:0]
	if err := it.Close(); err != nil {
		return err
	}
	it, err = s.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{'i'}, UpperBound: []byte{'i' + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var is Issue
		if err := json.Unmarshal(it.Value(), &is); err != nil {
			s.log.Warn("skipping an unreadable issue group", "err", err)
			continue
		}
		s.pairIssues(Pair{is.Source, is.Destination}).put(&is)
	}
	return it.Error()
}
