package stats

import (
	"context"
	"encoding/json"
	"time"
)

// Run writes changes every FlushInterval and prunes what is older than
// Retention, until ctx ends; then it writes once more and returns.
func (s *Stats) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.FlushInterval)
	defer t.Stop()
	lastPrune := time.Time{}
	// While writes fail (a database that is down), every Flush retries,
	// but the log hears of it once a minute, and once more on recovery.
	var failingSince, lastLogged time.Time
	for {
		select {
		case <-ctx.Done():
			if err := s.Flush(); err != nil {
				s.log.Error("write stats at shutdown", "err", err)
			}
			return
		case <-t.C:
		}
		now := s.opts.Now()
		if err := s.Flush(); err != nil {
			if failingSince.IsZero() {
				failingSince = now
			}
			if now.Sub(lastLogged) >= time.Minute {
				lastLogged = now
				s.log.Error("write stats; retrying at every flush", "err", err, "failing_since", failingSince)
			}
		} else if !failingSince.IsZero() {
			s.log.Info("stats written again", "failing_since", failingSince)
			failingSince, lastLogged = time.Time{}, time.Time{}
		}
		if now := s.opts.Now(); now.Sub(lastPrune) >= time.Hour {
			lastPrune = now
			if err := s.Prune(); err != nil {
				s.log.Error("prune stats", "err", err)
			}
		}
	}
}

// Flush writes every change since the last Flush in one batch (synced, or
// one transaction), then forgets the clean minutes older than Hot. It is
// safe to call at any time, concurrently with Run. When the
// write fails, everything in it is marked changed again, so the next Flush
// retries it. When nothing changed it writes nothing and returns at once.
func (s *Stats) Flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	var w writes
	var written []*bucket
	var writtenIssues []*Issue
	s.mu.Lock()
	if !s.changed {
		s.mu.Unlock()
		return nil
	}
	s.changed = false
	for k, b := range s.hot {
		if b.dirty {
			w.minutes = append(w.minutes, minuteRow{pair: k.pair, minute: k.minute, v: b.appendBinary(nil)})
			b.dirty = false
			written = append(written, b)
		}
	}
	for p, pi := range s.issues {
		for _, is := range pi.byID {
			if is.dirty {
				v, err := json.Marshal(is)
				if err == nil {
					w.issues = append(w.issues, issueRow{issueRef: issueRef{p, is.ID}, lastSeen: is.LastSeen, v: v})
				}
				is.dirty = false
				writtenIssues = append(writtenIssues, is)
			}
		}
	}
	writtenGauges := s.dirty
	for _, p := range s.dirty {
		g := s.gauges[p.Destination][p.Source]
		w.gauges = append(w.gauges, gaugeRow{pair: p, pending: g.pending, open: g.open})
		g.dirty = false
	}
	s.dirty = nil
	s.mu.Unlock()
	if w.empty() {
		return nil
	}
	if err := s.backend.save(&w); err != nil {
		// Mark them again so the next Flush retries.
		s.mu.Lock()
		s.changed = true
		for _, b := range written {
			b.dirty = true
		}
		for _, is := range writtenIssues {
			is.dirty = true
		}
		for _, p := range writtenGauges {
			if g := s.gauges[p.Destination][p.Source]; g != nil && !g.dirty {
				g.dirty = true
				s.dirty = append(s.dirty, p)
			}
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
	var drop []issueRef
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
				drop = append(drop, issueRef{p, id})
			}
		}
	}
	s.mu.Unlock()
	return s.backend.prune(cutMin, drop)
}

// load reads the hot minutes, the issue groups and the gauges. Minutes of
// a corrupt record are logged and skipped: counting them from zero is
// better than refusing to start.
func (s *Stats) load() error {
	err := s.backend.load(s.completeFrom,
		func(p Pair, minute int64, v []byte) {
			b := &bucket{}
			if err := b.decode(v); err != nil {
				s.log.Warn("skipping an unreadable stats minute", "source", p.Source, "destination", p.Destination,
					"minute", time.Unix(minute*60, 0).UTC(), "err", err)
				return
			}
			s.hot[bkey{p, minute}] = b
		},
		func(p Pair, pending, open int64) {
			g := s.gauge(p)
			g.pending, g.open, g.dirty = pending, open, false
		},
		func(v []byte) {
			var is Issue
			if err := json.Unmarshal(v, &is); err != nil {
				s.log.Warn("skipping an unreadable issue group", "err", err)
				return
			}
			s.pairIssues(Pair{is.Source, is.Destination}).put(&is)
		})
	s.dirty = s.dirty[:0]
	return err
}
