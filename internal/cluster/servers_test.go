package cluster

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/fanout/internal/pgtest"
)

// servers is a cluster over several databases, one per "server": to the
// cluster a DSN is a server, and pgtest.Outage takes one away as a down
// server would be.
type servers struct {
	t      *testing.T
	dsns   []string
	outage []func(down bool)
}

func setupServers(t *testing.T, n int) *servers {
	s := &servers{t: t}
	for range n {
		dsn := pgtest.Start(t)
		s.dsns = append(s.dsns, dsn)
		s.outage = append(s.outage, pgtest.Outage(t, dsn))
	}
	return s
}

// join makes a node join every server as a Group, each membership on a
// pool of its own, and keeps reading its Changes, recording them.
func (s *servers) join(name string) (*Group, *changeLog) {
	s.t.Helper()
	var nodes []*Node
	for i, dsn := range s.dsns {
		n, err := Join(s.t.Context(), Options{Pool: pgtest.Pool(s.t, dsn), NodeName: name,
			Partitions: testPartitions, Server: i, Servers: len(s.dsns),
			Heartbeat: testHeartbeat, Lease: testLease, Logger: testLogger})
		if err != nil {
			s.t.Fatalf("Join %s on server %d: %v", name, i, err)
		}
		nodes = append(nodes, n)
	}
	g, err := NewGroup(nodes)
	if err != nil {
		s.t.Fatal(err)
	}
	log := &changeLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range g.Changes() {
			log.add(c)
		}
	}()
	s.t.Cleanup(func() {
		g.Leave(context.Background())
		<-done
	})
	return g, log
}

type changeLog struct {
	mu      sync.Mutex
	changes []Change
}

func (l *changeLog) add(c Change) {
	l.mu.Lock()
	l.changes = append(l.changes, c)
	l.mu.Unlock()
}

func (l *changeLog) owned() map[int]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[int]bool{}
	for _, c := range l.changes {
		m[c.Partition] = c.Owned
	}
	return m
}

func TestServerOf(t *testing.T) {
	for _, d := range []string{"hook", "crm", "mixpanel", "a", "b"} {
		for _, n := range []int{1, 2, 3} {
			if got, want := ServerOf(d, 64, n), PartitionOf(d, 64)%n; got != want {
				t.Errorf("ServerOf(%q, 64, %d) = %d, want %d", d, n, got, want)
			}
		}
	}
	o := Options{Partitions: 12, Server: 1, Servers: 3}
	if got, want := o.partitionsHere(), []int{1, 4, 7, 10}; !slices.Equal(got, want) {
		t.Errorf("partitions of server 1 of 3 = %v, want %v", got, want)
	}
}

func TestServerOptionsValidation(t *testing.T) {
	tests := []struct {
		opts Options
		want string
	}{
		{Options{Partitions: 4, Server: 2, Servers: 2}, "Server must be in [0, Servers), found 2 of 2"},
		{Options{Partitions: 4, Server: -1, Servers: 2}, "Server must be in [0, Servers)"},
		{Options{Partitions: 2, Servers: 3}, "Servers (3) cannot be more than Partitions (2)"},
	}
	for _, tt := range tests {
		err := tt.opts.placeServer()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("placeServer(%+v) = %v, want %q", tt.opts, err, tt.want)
		}
	}
}

// Two nodes over two servers: each server's partitions are leased there,
// split evenly, and the Group answers for every partition on the right
// server. A server taken down stops only its own partitions; when it is
// back, they are taken again, with new tokens, and the other server's
// partitions never moved.
func TestTwoServers(t *testing.T) {
	s := setupServers(t, 2)
	a, alog := s.join("a")
	b, _ := s.join("b")
	waitFor(t, 5*time.Second, "two nodes do not split both servers' partitions", func() bool {
		return balanced(a.Node(0), b.Node(0)) && balanced(a.Node(1), b.Node(1))
	})
	for i := range 2 {
		for _, g := range []*Group{a, b} {
			for _, p := range g.Node(i).Owned() {
				if p%2 != i {
					t.Errorf("%s owns partition %d on server %d", g.Name(), p, i)
				}
			}
		}
	}
	if got := len(a.Owned()) + len(b.Owned()); got != testPartitions {
		t.Errorf("the nodes own %d partitions between them, want %d", got, testPartitions)
	}
	view, err := a.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(view) != 2 {
		t.Fatalf("cluster view: %d nodes, want 2: %+v", len(view), view)
	}
	for i, g := range []*Group{a, b} {
		if view[i].Name != g.Name() || view[i].ID != g.ID() || !slices.Equal(view[i].Partitions, g.Owned()) {
			t.Errorf("view[%d] = %+v, want %s (id %d) with %v", i, view[i], g.Name(), g.ID(), g.Owned())
		}
	}

	onServer0 := func(g *Group) map[int]int64 {
		m := map[int]int64{}
		for _, p := range g.Node(0).Owned() {
			m[p], _ = g.Owns(p)
		}
		return m
	}
	before := onServer0(a)
	tokens1 := map[int]int64{}
	for _, p := range a.Node(1).Owned() {
		tokens1[p], _ = a.Owns(p)
	}

	s.outage[1](true)
	waitFor(t, 5*time.Second, "server 1 down: a still owns its partitions", func() bool {
		return len(a.Node(1).Owned()) == 0 && len(b.Node(1).Owned()) == 0
	})
	// Owns turns false at the local deadline; the change follows.
	waitFor(t, 2*time.Second, "server 1 down: no lost change on Changes for its partitions", func() bool {
		owned := alog.owned()
		for p := range tokens1 {
			if owned[p] {
				return false
			}
		}
		return true
	})
	if got := onServer0(a); !mapsEqual(got, before) {
		t.Errorf("server 0's partitions moved while server 1 was down: %v, before %v", got, before)
	}
	view, err = a.Nodes(t.Context())
	if err != nil {
		t.Fatalf("cluster view with server 1 down: %v", err)
	}
	for _, ni := range view {
		for _, p := range ni.Partitions {
			if p%2 == 1 {
				t.Errorf("cluster view with server 1 down shows %s holding partition %d", ni.Name, p)
			}
		}
	}

	s.outage[1](false)
	waitFor(t, 10*time.Second, "server 1 back: its partitions are not taken again, or not announced", func() bool {
		if !balanced(a.Node(1), b.Node(1)) {
			return false
		}
		owned := alog.owned()
		for _, p := range a.Node(1).Owned() {
			if !owned[p] {
				return false
			}
		}
		return true
	})
	// A token never goes back. It stays the same when a's lease was still
	// valid in the database as server 1 came back (an outage shorter than
	// the lease in the database's time): a late renewal, with no other owner
	// in between (see Node.renewed); any takeover raises it.
	for _, p := range a.Node(1).Owned() {
		tok, _ := a.Owns(p)
		if old, ok := tokens1[p]; ok && tok < old {
			t.Errorf("partition %d owned again with token %d, below %d", p, tok, old)
		}
	}
	if got := onServer0(a); !mapsEqual(got, before) {
		t.Errorf("server 0's partitions moved: %v, before %v", got, before)
	}
}

func mapsEqual(a, b map[int]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Wake-ups of a server's partitions come from that server's Notify and
// reach the Group.
func TestGroupWakeups(t *testing.T) {
	s := setupServers(t, 2)
	a, _ := s.join("a")
	admin := pgtest.Pool(t, s.dsns[1])
	if err := pgx.BeginFunc(t.Context(), admin, func(tx pgx.Tx) error { return Notify(t.Context(), tx, 3) }); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case p := <-a.Wakeups():
			if p == 3 {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no wake-up of partition 3 from server 1")
		}
	}
}

// A database laid out for one place in the list of servers is refused in
// another: the jobs stored under the old layout would have no owner.
func TestServerLayoutMismatch(t *testing.T) {
	dsn := pgtest.Start(t)
	quiet := slog.New(slog.DiscardHandler)
	n, err := Join(t.Context(), Options{Pool: pgtest.Pool(t, dsn), Partitions: testPartitions, Server: 0, Servers: 2,
		Heartbeat: testHeartbeat, Lease: testLease, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Leave(context.Background()) })
	go func() {
		for range n.Changes() {
		}
	}()
	tests := []struct {
		name            string
		server, servers int
		want            string
	}{
		{"alone", 0, 1, "should hold [0 1 2 ... 11] (12): every node must list the same servers"},
		{"second of two", 1, 2, "as server 1 of 2"},
		{"first of three", 0, 3, "as server 0 of 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Join(t.Context(), Options{Pool: pgtest.Pool(t, dsn), Partitions: testPartitions,
				Server: tt.server, Servers: tt.servers, Heartbeat: testHeartbeat, Lease: testLease, Logger: quiet})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Join = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
