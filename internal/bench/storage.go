package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/open"
	"github.com/fanout/fanout/internal/pgtest"
)

// The job stores a scenario can run on.
const (
	StorePebble   = "pebble"   // the embedded store in the data dir
	StorePostgres = "postgres" // a throwaway PostgreSQL the bench starts
)

// storeScenarios are the scenarios that take --storage postgres.
var storeScenarios = []string{"throughput", "backlog", "crash"}

// ParseStorage reads the --storage flag: "pebble" (the default), or
// "postgres", which runs the scenario on both stores, Pebble first, to print
// them side by side; an explicit list such as "postgres,pebble" sets the
// order.
func ParseStorage(s string) ([]string, error) {
	if s == "" || s == StorePebble {
		return []string{StorePebble}, nil
	}
	if s == StorePostgres {
		return []string{StorePebble, StorePostgres}, nil
	}
	var out []string
	for _, st := range strings.Split(s, ",") {
		st = strings.TrimSpace(st)
		if st != StorePebble && st != StorePostgres {
			return nil, fmt.Errorf("--storage: expected pebble, postgres or a list of them, found %q", st)
		}
		if !slices.Contains(out, st) {
			out = append(out, st)
		}
	}
	return out, nil
}

// postgres is the throwaway PostgreSQL of a run on StorePostgres, started on
// first use, and the database of each data dir.
type postgres struct {
	srv *pgtest.Server
	dbs map[string]string // data dir -> DSN
}

// storageYAML is the storage section of a server's configuration on
// dataDir: nothing for the embedded store; for PostgreSQL, a database of its
// own, the same one each time the data dir is started again (the crash
// scenario restarts on it).
func (e *env) storageYAML(dataDir string) (string, error) {
	if e.storage != StorePostgres {
		return "", nil
	}
	dsn, err := e.dsn(dataDir)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("storage:\n  postgres: %q\n", dsn), nil
}

func (e *env) dsn(dataDir string) (string, error) {
	if e.pg == nil {
		e.logf("starting a throwaway PostgreSQL (fsync on, as in production)")
		srv, err := pgtest.StartServer(pgtest.Options{})
		if err != nil {
			return "", err
		}
		e.pg = &postgres{srv: srv, dbs: map[string]string{}}
	}
	if dsn, ok := e.pg.dbs[dataDir]; ok {
		return dsn, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := e.pg.srv.CreateDatabase(ctx)
	if err != nil {
		return "", err
	}
	e.pg.dbs[dataDir] = dsn
	return dsn, nil
}

// openStore opens the job store of a stopped server on dataDir, to look at
// what it left.
func (e *env) openStore(dataDir string) (jobstore.Store, error) {
	opts := open.Options{DataDir: dataDir, Logger: quietLogger}
	if e.storage == StorePostgres {
		dsn, err := e.dsn(dataDir)
		if err != nil {
			return nil, err
		}
		opts.Postgres = []string{dsn}
	}
	return open.Store(context.Background(), opts)
}

// runStores runs a scenario once per store, each in a work dir of its own,
// and prints the tables side by side: one row per figure, one column per
// store. The figures are keyed by store.
func runStores(ctx context.Context, run func(context.Context, *env) (any, error), opts Options) (any, error) {
	figures := map[string]any{}
	tables := map[string][][2]string{}
	for _, st := range opts.Storage {
		sub := opts
		sub.Dir = filepath.Join(opts.Dir, st)
		sub.Keep = true // the parent env removes the whole work dir
		if err := os.MkdirAll(sub.Dir, 0o755); err != nil {
			return figures, err
		}
		e := &env{opts: sub, storage: st, collect: true}
		fmt.Fprintf(opts.Log, "store %s\n", st)
		res, err := run(ctx, e)
		e.close()
		if err != nil {
			return figures, fmt.Errorf("on %s: %w", st, err)
		}
		figures[st] = res
		tables[st] = e.rows
	}
	first := tables[opts.Storage[0]]
	w := tabwriter.NewWriter(opts.Log, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "  \t%s\n", strings.Join(opts.Storage, "\t"))
	for i, r := range first {
		line := "  " + r[0]
		for _, st := range opts.Storage {
			v := "-"
			if t := tables[st]; i < len(t) && t[i][0] == r[0] {
				v = t[i][1]
			}
			line += "\t" + v
		}
		fmt.Fprintln(w, line)
	}
	w.Flush()
	return figures, nil
}

// archivedInDB returns the messageIds of q's jobs in the archive table of
// the database the server on dataDir used.
func (e *env) archivedInDB(dataDir string, q jobstore.Queue) ([]string, error) {
	dsn, err := e.dsn(dataDir)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	a, err := archive.NewPostgres(ctx, pool)
	if err != nil {
		return nil, err
	}
	recs, err := a.Scan(q, time.Unix(0, 0), time.Now().Add(24*time.Hour))
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.MessageID
	}
	return ids, nil
}

// StoreSize is the size of a server's job store. On PostgreSQL it is
// pg_database_size, split into the job tables (every partition of jobs
// and finished, retries, queues, job_parts, meta), the dedupe records
// (every dedupe bucket), the stats tables and the rest (the archive, the
// cluster's tables, the system catalogs); on Pebble, the jobs directory,
// which holds all of it.
type StoreSize struct {
	Total     int64 `json:"total_bytes"`
	JobTables int64 `json:"job_tables_bytes,omitempty"`
	Dedupe    int64 `json:"dedupe_bytes,omitempty"`
	Stats     int64 `json:"stats_bytes,omitempty"`
}

// jobTables are the job store's tables, by the name of the table at the top
// of their partitioning.
var jobTables = []string{"jobs", "finished", "retries", "queues", "job_parts", "meta"}

// storeSize measures the job store of the server on dataDir.
func (e *env) storeSize(dataDir string) (StoreSize, error) {
	if e.storage != StorePostgres {
		n, err := diskUsage(filepath.Join(dataDir, "jobs"))
		return StoreSize{Total: n}, err
	}
	dsn, err := e.dsn(dataDir)
	if err != nil {
		return StoreSize{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return StoreSize{}, err
	}
	defer conn.Close(context.Background())
	// Each table of the schema with its partitions, by the table at the
	// top.
	rows, err := conn.Query(ctx, `WITH RECURSIVE fam AS (
			SELECT c.oid, c.relname::text AS top FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
			UNION ALL
			SELECT i.inhrelid, f.top FROM pg_inherits i JOIN fam f ON i.inhparent = f.oid)
		SELECT top, sum(pg_total_relation_size(oid))::bigint FROM fam GROUP BY top
		UNION ALL
		SELECT '', pg_database_size(current_database())`)
	if err != nil {
		return StoreSize{}, err
	}
	var s StoreSize
	var top string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&top, &n}, func() error {
		switch {
		case top == "":
			s.Total = n
		case slices.Contains(jobTables, top):
			s.JobTables += n
		case top == "dedupe":
			s.Dedupe += n
		case strings.HasPrefix(top, "stats_"):
			s.Stats += n
		}
		return nil
	})
	return s, err
}
