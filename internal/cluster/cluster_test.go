package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Short leases for the tests: a dead node's partitions are taken over
// within about lease + heartbeat.
const (
	testPartitions = 12
	testHeartbeat  = 100 * time.Millisecond
	testLease      = time.Second
)

// bundle is what a cluster test needs: one database, and nodes on it, each
// with its own pool as if in its own process.
type bundle struct {
	t   *testing.T
	dsn string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	return &bundle{t: t, dsn: pgtest.Start(t)}
}

func (b *bundle) pool() *pgxpool.Pool {
	b.t.Helper()
	return pgtest.Pool(b.t, b.dsn)
}

// join starts a node with the test's settings; opts may override them.
func (b *bundle) join(name string, opts Options) *Node {
	b.t.Helper()
	if opts.Pool == nil {
		opts.Pool = b.pool()
	}
	opts.NodeName = name
	if opts.Partitions == 0 {
		opts.Partitions = testPartitions
	}
	if opts.Heartbeat == 0 {
		opts.Heartbeat = testHeartbeat
	}
	if opts.Lease == 0 {
		opts.Lease = testLease
	}
	if opts.Logger == nil {
		opts.Logger = testLogger
	}
	n, err := Join(b.t.Context(), opts)
	if err != nil {
		b.t.Fatalf("Join %s: %v", name, err)
	}
	b.t.Cleanup(func() { n.Leave(context.Background()) })
	go func() { // a consumer that keeps up
		for range n.Changes() {
		}
	}()
	return n
}

// kill stops n as SIGKILL would: no release, no more heartbeats, its
// connections closed.
func kill(n *Node) {
	n.stop()
	n.pool.Close()
}

// waitFor polls cond until it holds or timeout passes. The leases run on
// the database's clock, so these tests wait in real time, with short
// leases.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// balanced reports whether nodes own every partition of their server between them, each
// its share (differing by at most one), none twice.
func balanced(nodes ...*Node) bool {
	seen := map[int]bool{}
	lo, hi := testPartitions, 0
	for _, n := range nodes {
		owned := n.Owned()
		lo, hi = min(lo, len(owned)), max(hi, len(owned))
		for _, p := range owned {
			if seen[p] {
				return false
			}
			seen[p] = true
		}
	}
	return len(seen) == len(nodes[0].opts.partitionsHere()) && hi-lo <= 1
}

// watch samples the nodes' ownership until ended and fails the test if
// two nodes own one partition at once; end returns the longest time a
// partition had no owner.
type watch struct {
	nodes   func() []*Node
	stop    chan struct{}
	done    chan struct{}
	unowned map[int]time.Time // since when
	maxGap  time.Duration
	overlap string
}

func startWatch(nodes func() []*Node) *watch {
	w := &watch{nodes: nodes, stop: make(chan struct{}), done: make(chan struct{}), unowned: map[int]time.Time{}}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			w.sample()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return w
}

func (w *watch) sample() {
	now := time.Now()
	owner := map[int]string{}
	for _, n := range w.nodes() {
		for _, p := range n.Owned() {
			if o, ok := owner[p]; ok && w.overlap == "" {
				w.overlap = fmt.Sprintf("partition %d owned by %s and %s", p, o, n.Name())
			}
			owner[p] = n.Name()
		}
	}
	for p := range testPartitions {
		if _, ok := owner[p]; ok {
			if since, ok := w.unowned[p]; ok {
				w.maxGap = max(w.maxGap, now.Sub(since))
				delete(w.unowned, p)
			}
		} else if _, ok := w.unowned[p]; !ok {
			w.unowned[p] = now
		}
	}
}

func (w *watch) end(t *testing.T) time.Duration {
	t.Helper()
	close(w.stop)
	<-w.done
	w.sample() // the last change may have come after the last sample
	if w.overlap != "" {
		t.Error(w.overlap)
	}
	return w.maxGap
}

func TestPartitionOf(t *testing.T) {
	for _, n := range []int{1, 12, 64} {
		seen := map[int]bool{}
		for i := range 1000 {
			p := PartitionOf(fmt.Sprintf("dest-%d", i), n)
			if p < 0 || p >= n {
				t.Fatalf("PartitionOf(_, %d) = %d, out of range", n, p)
			}
			seen[p] = true
		}
		if len(seen) != n {
			t.Errorf("1000 destinations fill %d of %d partitions", len(seen), n)
		}
	}
	// Fixed forever: a change would move queues between owners while
	// nodes of two versions run together.
	if got := PartitionOf("hooks", 64); got != 27 {
		t.Errorf(`PartitionOf("hooks", 64) = %d, want 27`, got)
	}
	n := &Node{opts: Options{Partitions: 64}}
	a := n.PartitionOf(jobstore.Queue{Source: "web", Destination: "hooks"})
	b := n.PartitionOf(jobstore.Queue{Source: "ios", Destination: "hooks"})
	if a != b {
		t.Errorf("queues of one destination in partitions %d and %d", a, b)
	}
}

func TestShareOf(t *testing.T) {
	tests := []struct {
		live       []int64
		partitions int
		want       []int // each live node's share, in order
	}{
		{[]int64{1}, 12, []int{12}},
		{[]int64{1, 2}, 12, []int{6, 6}},
		{[]int64{1, 2, 3}, 64, []int{22, 21, 21}},
		{[]int64{4, 7, 9, 11, 20}, 12, []int{3, 3, 2, 2, 2}},
		{[]int64{1, 2, 3}, 2, []int{1, 1, 0}},
	}
	for _, tt := range tests {
		sum := 0
		for i, id := range tt.live {
			got := shareOf(id, tt.live, tt.partitions)
			sum += got
			if got != tt.want[i] {
				t.Errorf("shareOf(%d, %v, %d) = %d, want %d", id, tt.live, tt.partitions, got, tt.want[i])
			}
		}
		if sum != tt.partitions {
			t.Errorf("shares of %v sum to %d, want %d", tt.live, sum, tt.partitions)
		}
	}
	if got := shareOf(5, []int64{1, 2}, 12); got != 0 {
		t.Errorf("share of a node not seen live = %d, want 0", got)
	}
}

func TestOptionsValidation(t *testing.T) {
	pool := &pgxpool.Pool{}
	tests := []struct {
		opts Options
		want string
	}{
		{Options{}, "Options.Pool is required"},
		{Options{Pool: pool, Partitions: -1}, "Partitions cannot be negative"},
		{Options{Pool: pool, Heartbeat: time.Second, Lease: time.Second}, "Lease (1s) must be at least twice Heartbeat (1s)"},
		{Options{Pool: pool, Margin: 4 * time.Second}, "Margin (4s) must be less than Lease minus Heartbeat (4s)"},
	}
	for _, tt := range tests {
		err := tt.opts.setDefaults()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("setDefaults(%+v) = %v, want %q", tt.opts, err, tt.want)
		}
	}
	o := Options{Pool: pool}
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if o.Partitions != 64 || o.Heartbeat != time.Second || o.Lease != 5*time.Second || o.Margin != time.Second || o.NodeName == "" {
		t.Errorf("defaults: %+v", o)
	}
}

func TestPartitionCountMismatch(t *testing.T) {
	b := setup(t)
	b.join("a", Options{})
	_, err := Join(t.Context(), Options{Pool: b.pool(), Partitions: 8, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "has 12 partitions, this node is configured with 8") {
		t.Fatalf("Join with another partition count: %v", err)
	}
}

func TestThreeNodesSplitEvenly(t *testing.T) {
	b := setup(t)
	a, bb, c := b.join("a", Options{}), b.join("b", Options{}), b.join("c", Options{AdminURL: "http://127.0.0.1:8081"})
	took := waitFor(t, 5*time.Second, "three nodes do not split the partitions evenly", func() bool {
		return balanced(a, bb, c)
	})
	t.Logf("balanced in %s", took)
	for _, n := range []*Node{a, bb, c} {
		if got := len(n.Owned()); got != testPartitions/3 {
			t.Errorf("%s owns %d partitions, want %d", n.Name(), got, testPartitions/3)
		}
	}
	infos, err := a.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 3 {
		t.Fatalf("Nodes: %d nodes, want 3: %+v", len(infos), infos)
	}
	for i, ni := range infos {
		want := []*Node{a, bb, c}[i]
		if ni.Name != want.Name() || ni.ID != want.ID() || !ni.Live || !slices.Equal(ni.Partitions, want.Owned()) {
			t.Errorf("Nodes[%d] = %+v, want %s live with %v", i, ni, want.Name(), want.Owned())
		}
	}
	if got := []string{infos[0].AdminURL, infos[2].AdminURL}; got[0] != "" || got[1] != "http://127.0.0.1:8081" {
		t.Errorf("admin URLs of a and c = %q, want none and the one c joined with", got)
	}
}

func TestFailover(t *testing.T) {
	tests := []struct {
		name             string
		heartbeat, lease time.Duration
		limit            time.Duration
	}{
		// The victim's leases run out within a lease of its last renewal;
		// the survivors see it at their next heartbeat.
		{"short", testHeartbeat, testLease, testLease + 3*testHeartbeat + 200*time.Millisecond},
		// DESIGN.md: within 10 s at the defaults.
		{"defaults", DefaultHeartbeat, DefaultLease, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "defaults" && testing.Short() {
				t.Skip("takes a default lease (5s)")
			}
			testFailover(t, Options{Heartbeat: tt.heartbeat, Lease: tt.lease}, tt.limit)
		})
	}
}

func testFailover(t *testing.T, opts Options, limit time.Duration) {
	b := setup(t)
	a, bb, c := b.join("a", opts), b.join("b", opts), b.join("c", opts)
	waitFor(t, 5*time.Second, "not balanced", func() bool { return balanced(a, bb, c) })
	victim := c.Owned()
	p := victim[0]
	staleToken, _ := c.Owns(p)

	// The killed node's Owned keeps answering from its local deadlines, as
	// a paused process would on waking: it must turn false before another
	// node takes over.
	w := startWatch(func() []*Node { return []*Node{a, bb, c} })
	kill(c)
	took := waitFor(t, limit+5*time.Second, "the killed node's partitions are not taken over", func() bool {
		return balanced(a, bb)
	})
	gap := w.end(t)
	t.Logf("takeover of %v in %s (lease %s, heartbeat %s); longest unowned %s",
		victim, took, a.opts.Lease, a.opts.Heartbeat, gap)
	if took > limit {
		t.Errorf("takeover took %s, want under %s", took, limit)
	}

	// The killed node, were it only slow, could not write under its token.
	pool := b.pool()
	err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		return Fence(t.Context(), tx, p, staleToken)
	})
	if !errors.Is(err, ErrFenced) {
		t.Errorf("Fence with the killed node's token %d: %v, want ErrFenced", staleToken, err)
	}
	var newOwner *Node
	for _, n := range []*Node{a, bb} {
		if _, ok := n.Owns(p); ok {
			newOwner = n
		}
	}
	tok, _ := newOwner.Owns(p)
	if tok <= staleToken {
		t.Errorf("token after takeover %d, want more than %d", tok, staleToken)
	}
	if err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		return Fence(t.Context(), tx, p, tok)
	}); err != nil {
		t.Errorf("Fence with the new owner's token: %v", err)
	}
}

func TestJoinAndLeave(t *testing.T) {
	b := setup(t)
	var mu sync.Mutex
	nodes := []*Node{b.join("a", Options{}), b.join("b", Options{})}
	current := func() []*Node {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(nodes)
	}
	waitFor(t, 5*time.Second, "two nodes not balanced", func() bool { return balanced(current()...) })

	w := startWatch(current)
	c := b.join("c", Options{})
	mu.Lock()
	nodes = append(nodes, c)
	mu.Unlock()
	took := waitFor(t, 5*time.Second, "joining node does not get its share", func() bool { return balanced(current()...) })
	gap := w.end(t)
	t.Logf("join: balanced in %s, longest unowned %s", took, gap)
	if gap > testLease {
		t.Errorf("join: a partition was unowned for %s, more than a lease (%s)", gap, testLease)
	}

	w = startWatch(current)
	leaving := nodes[0]
	if err := leaving.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	nodes = nodes[1:]
	mu.Unlock()
	took = waitFor(t, 5*time.Second, "partitions of the leaving node not taken", func() bool { return balanced(current()...) })
	gap = w.end(t)
	t.Logf("leave: balanced in %s, longest unowned %s", took, gap)
	if gap > testLease {
		t.Errorf("leave: a partition was unowned for %s, more than a lease (%s)", gap, testLease)
	}
	infos, err := c.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, ni := range infos {
		if ni.ID == leaving.ID() {
			t.Errorf("node that left is still listed: %+v", ni)
		}
	}
}

// TestFencedWrites runs a writer per owned partition on every node, each
// writing rows under its fencing token, while nodes join, die and leave.
// The fence must keep every partition's rows in token order: no write
// under an old token after a write under a newer one.
func TestFencedWrites(t *testing.T) {
	b := setup(t)
	admin := b.pool()
	if _, err := admin.Exec(t.Context(), `CREATE TABLE writes (
		id bigserial PRIMARY KEY, partition int, token bigint, node text)`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var mu sync.Mutex
	fenced := 0
	// writer writes as the node's engine would: while it thinks it owns
	// p under token, and through Fence.
	writer := func(n *Node, pool *pgxpool.Pool) {
		defer wg.Done()
		for ctx.Err() == nil {
			for _, p := range n.Owned() {
				token, ok := n.Owns(p)
				if !ok {
					continue
				}
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if err := Fence(ctx, tx, p, token); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `INSERT INTO writes (partition, token, node) VALUES ($1, $2, $3)`, p, token, n.Name())
					return err
				})
				if errors.Is(err, ErrFenced) {
					mu.Lock()
					fenced++
					mu.Unlock()
				}
			}
			time.Sleep(time.Millisecond)
		}
	}
	start := func(name string) *Node {
		n := b.join(name, Options{})
		wg.Add(1)
		go writer(n, n.pool)
		return n
	}
	a, bb := start("a"), start("b")
	waitFor(t, 5*time.Second, "not balanced", func() bool { return balanced(a, bb) })
	// Every node ever started stays watched: a killed one's local view
	// must end before its partitions are taken over.
	var watchedMu sync.Mutex
	watched := []*Node{a, bb}
	w := startWatch(func() []*Node {
		watchedMu.Lock()
		defer watchedMu.Unlock()
		return slices.Clone(watched)
	})
	c := start("c")
	watchedMu.Lock()
	watched = append(watched, c)
	watchedMu.Unlock()
	waitFor(t, 5*time.Second, "not balanced after join", func() bool { return balanced(a, bb, c) })
	kill(bb)
	waitFor(t, 5*time.Second, "not balanced after kill", func() bool { return balanced(a, c) })
	if err := a.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "not balanced after leave", func() bool { return balanced(c) })
	w.end(t)
	time.Sleep(50 * time.Millisecond)
	cancel()
	wg.Wait()

	rows, err := admin.Query(context.Background(), `SELECT partition, token, node FROM writes ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	type owner struct {
		token int64
		node  string
	}
	last := map[int]owner{}
	writes := 0
	var p int
	var o owner
	if _, err := pgx.ForEachRow(rows, []any{&p, &o.token, &o.node}, func() error {
		writes++
		prev, ok := last[p]
		switch {
		case ok && o.token < prev.token:
			t.Errorf("partition %d: write by %s under token %d after one by %s under %d", p, o.node, o.token, prev.node, prev.token)
		case ok && o.token == prev.token && o.node != prev.node:
			t.Errorf("partition %d: token %d used by %s and %s", p, o.token, prev.node, o.node)
		}
		last[p] = o
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(last) != testPartitions {
		t.Errorf("writes in %d partitions, want %d", len(last), testPartitions)
	}
	t.Logf("%d fenced writes, %d refused by the fence", writes, fenced)
}

func TestNotifyWakeupLatency(t *testing.T) {
	b := setup(t)
	n := b.join("a", Options{})
	waitFor(t, 5*time.Second, "one node does not own every partition", func() bool { return balanced(n) })
	settle(n)
	writer := b.pool()
	if _, err := writer.Exec(t.Context(), "SELECT 1"); err != nil { // connect before timing
		t.Fatal(err)
	}
	var lat []time.Duration
	for i := range 20 {
		p := i % testPartitions
		err := pgx.BeginFunc(t.Context(), writer, func(tx pgx.Tx) error {
			return Notify(t.Context(), tx, p, p, (p+1)%testPartitions)
		})
		committed := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]bool{}
		for len(got) < 2 {
			select {
			case q := <-n.Wakeups():
				got[q] = true
			case <-time.After(time.Second):
				t.Fatalf("no wake-up for partition %d after 1s", p)
			}
		}
		lat = append(lat, time.Since(committed))
		if !got[p] || !got[(p+1)%testPartitions] {
			t.Fatalf("woken %v, want %d and %d", got, p, (p+1)%testPartitions)
		}
	}
	slices.Sort(lat)
	t.Logf("wake-up latency after commit: median %s, worst %s", lat[len(lat)/2], lat[len(lat)-1])
	if worst := lat[len(lat)-1]; worst > 100*time.Millisecond {
		t.Errorf("wake-up took %s, want under 100ms", worst)
	}
	// A rolled back transaction wakes nobody.
	_ = pgx.BeginFunc(t.Context(), writer, func(tx pgx.Tx) error {
		Notify(t.Context(), tx, 3)
		return errors.New("roll back")
	})
	select {
	case q := <-n.Wakeups():
		t.Errorf("woken for partition %d by a rolled back transaction", q)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestLocalGiveUp: a node that cannot renew (here: its database is gone)
// stops owning its partitions at the lease minus the margin on its own
// clock, before the lease runs out in the database.
func TestLocalGiveUp(t *testing.T) {
	b := setup(t)
	fake := clock.NewFake(time.Unix(1_000_000, 0))
	n := b.join("a", Options{Clock: fake, Heartbeat: time.Second, Lease: 5 * time.Second, Margin: time.Second})
	if got := len(n.Owned()); got != testPartitions {
		t.Fatalf("after Join owns %d partitions, want %d", got, testPartitions)
	}
	// No renewal gets through from now on: the table is locked.
	lock, err := b.pool().Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background())
	if _, err := lock.Exec(t.Context(), `LOCK TABLE cluster_partitions IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	fake.Advance(3999 * time.Millisecond)
	if _, ok := n.Owns(0); !ok {
		t.Fatal("lost partition 0 before lease minus margin")
	}
	fake.Advance(time.Millisecond)
	if _, ok := n.Owns(0); ok {
		t.Fatal("still owns partition 0 at lease minus margin without a renewal")
	}
	if got := n.Owned(); len(got) != 0 {
		t.Fatalf("Owned() = %v at lease minus margin, want none", got)
	}
}

var testLogger = slog.New(slog.DiscardHandler)

// TestSlowOwner: the old owner is not dead, only paused in the middle of a
// transaction that passed Fence. The takeover waits for that transaction
// to end (PostgreSQL ends its idle session after FenceIdleTimeout), and
// the old owner's write never commits once another node owns the
// partition.
func TestSlowOwner(t *testing.T) {
	b := setup(t)
	admin := b.pool()
	if _, err := admin.Exec(t.Context(), `CREATE TABLE writes (partition int, token bigint)`); err != nil {
		t.Fatal(err)
	}
	a := b.join("a", Options{})
	token, ok := a.Owns(0)
	if !ok {
		t.Fatal("a does not own partition 0 after Join")
	}
	slow := b.pool()
	tx, err := slow.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if err := Fence(t.Context(), tx, 0, token); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `INSERT INTO writes VALUES (0, $1)`, token); err != nil {
		t.Fatal(err)
	}
	// a's process pauses here: no more heartbeats, its transaction idle.
	a.stop()
	c := b.join("c", Options{})
	took := waitFor(t, 5*time.Second, "partition 0 not taken over from the paused owner", func() bool {
		_, ok := c.Owns(0)
		return ok && len(c.Owned()) == testPartitions
	})
	t.Logf("taken over from the paused owner in %s", took)
	if limit := testLease + FenceIdleTimeout + 3*testHeartbeat + 200*time.Millisecond; took > limit {
		t.Errorf("takeover took %s, want under %s", took, limit)
	}
	// a wakes up and commits what it wrote under its old token.
	if err := tx.Commit(t.Context()); err == nil {
		t.Error("the paused owner's transaction committed after the takeover")
	}
	var n int
	if err := admin.QueryRow(t.Context(), `SELECT count(*) FROM writes`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d writes of the paused owner are visible after the takeover", n)
	}
}

// TestListenerReconnect: when the LISTEN session dies, the node reconnects
// and, since notifications may have been missed, wakes every partition it
// owns; later notifications arrive again.
func TestListenerReconnect(t *testing.T) {
	b := setup(t)
	n := b.join("a", Options{})
	settle(n)
	admin := b.pool()
	var killed int
	if err := admin.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminate the listener: %d sessions, %v", killed, err)
	}
	woken := map[int]bool{}
	for len(woken) < testPartitions {
		select {
		case p := <-n.Wakeups():
			woken[p] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("after reconnecting woke %d partitions, want all %d", len(woken), testPartitions)
		}
	}
	if err := pgx.BeginFunc(t.Context(), admin, func(tx pgx.Tx) error { return Notify(t.Context(), tx, 5) }); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-n.Wakeups():
		if p != 5 {
			t.Errorf("woken for %d, want 5", p)
		}
	case <-time.After(time.Second):
		t.Fatal("no wake-up after the listener reconnected")
	}
}

// TestChanges follows one node's Changes through a join of another node
// and its own Leave: gains and losses come with their tokens, in order,
// and the channel is closed after Leave.
func TestChanges(t *testing.T) {
	b := setup(t)
	a, err := Join(t.Context(), Options{Pool: b.pool(), NodeName: "a", Partitions: testPartitions,
		Heartbeat: testHeartbeat, Lease: testLease, Logger: testLogger})
	if err != nil {
		t.Fatal(err)
	}
	next := func() Change {
		t.Helper()
		select {
		case c, ok := <-a.Changes():
			if !ok {
				t.Fatal("Changes closed early")
			}
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no change after 5s")
		}
		return Change{}
	}
	for p := range testPartitions {
		if c := next(); c != (Change{Partition: p, Token: 1, Owned: true}) {
			t.Fatalf("change %d after Join: %+v, want partition %d gained with token 1", p, c, p)
		}
	}
	b.join("b", Options{})
	for p := testPartitions / 2; p < testPartitions; p++ {
		if c := next(); c != (Change{Partition: p, Token: 1, Draining: true}) {
			t.Fatalf("after b joined: %+v, want partition %d handed over with token 1", c, p)
		}
	}
	if err := a.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	lost := map[int]bool{}
	for c := range a.Changes() {
		if c.Owned || c.Token != 1 {
			t.Errorf("after Leave: %+v, want a loss with token 1", c)
		}
		lost[c.Partition] = true
	}
	if len(lost) != testPartitions/2 {
		t.Errorf("Leave reported %d partitions lost, want %d", len(lost), testPartitions/2)
	}
}
