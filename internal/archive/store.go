package archive

import (
	"time"

	"github.com/fanout/fanout/internal/jobstore"
)

// Store keeps archived jobs: the files under data_dir/archive (Writer), or
// a table in PostgreSQL (Postgres) when storage.postgres is set, so that
// any node can replay what any node archived. The delivery engine writes
// to it, the Replayer reads from it.
type Store interface {
	// Write keeps the records of q archived at t. It returns after they
	// are durable, so that the caller may then remove the jobs from the
	// job store; on error the caller keeps the jobs.
	Write(q jobstore.Queue, t time.Time, recs []Record) error
	// Scan returns the records of q whose event was received in
	// [from, to), oldest first.
	Scan(q jobstore.Queue, from, to time.Time) ([]Record, error)
}

// Compile-time checks that both archives are Stores.
var (
	_ Store = (*Writer)(nil)
	_ Store = (*Postgres)(nil)
)
