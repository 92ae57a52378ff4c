package diskspace

import (
	"context"
	"errors"

	"github.com/fanout/fanout/internal/jobstore"
)

// Guard returns s with Append refused while w refuses writes. Everything
// else passes through: delivery reads, finishes and reschedules jobs
// whatever the free space, since that is what gives it back. An Append that
// fails on a full disk degrades w (see WriteFailed).
func (w *Watcher) Guard(s jobstore.Store) jobstore.Store {
	return &guarded{Store: s, w: w}
}

type guarded struct {
	jobstore.Store
	w *Watcher
}

var _ jobstore.Store = (*guarded)(nil)

func (g *guarded) Append(ctx context.Context, entries []jobstore.Entry) ([]bool, error) {
	if err := g.w.Err(); err != nil {
		return nil, err
	}
	dup, err := g.Store.Append(ctx, entries)
	if err != nil && ctx.Err() == nil && errors.Is(err, jobstore.ErrUnavailable) {
		g.w.WriteFailed(err)
	}
	return dup, err
}
