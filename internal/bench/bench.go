package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// scenarios maps each scenario name to its runner.
var scenarios = map[string]func(ctx context.Context, e *env) (any, error){
	"throughput":     runThroughput,
	"noisy-neighbor": runNoisyNeighbor,
	"backlog":        runBacklog,
	"many-queues":    runManyQueues,
	"crash":          runCrash,
	"soak":           runSoak,
	"cluster":        runCluster,
}

// DefaultKills is how many times the crash scenario kills the server, and
// the cluster scenario one node of three, unless told otherwise.
const DefaultKills = 20

// Names lists the scenarios.
func Names() []string {
	var out []string
	for n := range scenarios {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Run runs one scenario and writes its figures to opts.Out.
func Run(ctx context.Context, name string, opts Options) error {
	run, ok := scenarios[name]
	if !ok {
		return fmt.Errorf("unknown scenario %q; one of %v", name, Names())
	}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "fanout-bench-"+name+"-")
		if err != nil {
			return err
		}
		opts.Dir = dir
	}
	if opts.Out == "" {
		opts.Out = "bench-" + name + ".json"
	}
	if opts.Duration <= 0 {
		opts.Duration = 10 * time.Second
		if name == "soak" {
			opts.Duration = time.Hour
		}
	}
	// A crash run is its kills; the cluster's kills are one phase of
	// several, which 0 skips.
	if opts.Kills <= 0 && name != "cluster" {
		opts.Kills = DefaultKills
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Minute
	}
	if len(opts.Storage) == 0 {
		opts.Storage = []string{StorePebble}
	}
	if (len(opts.Storage) > 1 || opts.Storage[0] != StorePebble) && !slices.Contains(storeScenarios, name) {
		return fmt.Errorf("--storage: %s runs on the embedded store only; %v take postgres", name, storeScenarios)
	}
	e := &env{opts: opts, storage: opts.Storage[0]}
	defer e.close()
	on := strings.Join(opts.Storage, ", ")
	if name == "cluster" {
		on = StorePostgres // a cluster is nodes on PostgreSQL, whatever --storage says
	}
	fmt.Fprintf(opts.Log, "scenario %s on %s (work dir %s)\n", name, on, opts.Dir)
	start := time.Now()
	var res any
	var err error
	if len(opts.Storage) > 1 {
		res, err = runStores(ctx, run, opts)
	} else {
		res, err = run(ctx, e)
	}
	if err != nil {
		// A scenario that measured and then failed its check (soak) returns
		// its figures too: they show what failed.
		if res != nil {
			writeJSON(opts.Out, map[string]any{
				"machine": machine(), "started": start.UTC().Format(time.RFC3339), "figures": res, "error": err.Error(),
			})
		}
		return fmt.Errorf("%s: %w (logs in %s)", name, err, keepDir(e))
	}
	fmt.Fprintf(opts.Log, "took %v; figures written to %s\n", time.Since(start).Round(time.Second), opts.Out)
	return writeJSON(opts.Out, map[string]any{
		"machine": machine(), "started": start.UTC().Format(time.RFC3339), "figures": res,
	})
}

// keepDir keeps the work dir after a failure so its logs can be read.
func keepDir(e *env) string {
	e.opts.Keep = true
	return e.opts.Dir
}

func (e *env) table(rows [][2]string) {
	if e.collect {
		e.rows = append(e.rows, rows...)
	}
	w := tabwriter.NewWriter(e.opts.Log, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(w, "  %s\t%s\n", r[0], r[1])
	}
	w.Flush()
}

func machine() map[string]any {
	m := map[string]any{}
	if n, err := filepath.Glob("/sys/devices/system/cpu/cpu[0-9]*"); err == nil {
		m["cpus"] = len(n)
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m["memory_gib"] = float64(kb) / (1 << 20)
	}
	return m
}
