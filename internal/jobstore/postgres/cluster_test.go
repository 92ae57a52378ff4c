package postgres

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/pgtest"
)

// staleNode is a cluster node whose tokens the test can make stale, as if
// another node had taken its partitions over.
type staleNode struct {
	*cluster.Node
	stale atomic.Bool
	lost  atomic.Bool
}

func (n *staleNode) Owns(p int) (int64, bool) {
	tok, ok := n.Node.Owns(p)
	if n.lost.Load() {
		return 0, false
	}
	if n.stale.Load() {
		tok--
	}
	return tok, ok
}

// In a cluster, an append wakes the owner of its jobs' partition on
// commit: through a notification when another node appends, through the
// store's Applied when the owner itself does. And Apply writes only under
// the partition's current token: a stale token or a partition not owned
// writes nothing and fails with jobstore.ErrFenced.
func TestClusterNotifyAndFence(t *testing.T) {
	dsn := pgtest.Start(t)
	join := func(name string) *cluster.Node {
		t.Helper()
		pool, err := pgxpool.New(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		n, err := cluster.Join(t.Context(), cluster.Options{Pool: pool, NodeName: name, Partitions: 4,
			Heartbeat: 100 * time.Millisecond, Lease: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Leave(context.Background()) })
		go func() {
			for range n.Changes() {
			}
		}()
		return n
	}
	q := jobstore.Queue{Source: "web", Destination: "hook"}
	node, other := join("a"), join("b")
	p := node.PartitionOf(q)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal(what)
			}
		}
	}
	waitFor("the two nodes do not share the partitions", func() bool {
		return len(node.Owned()) == 2 && len(other.Owned()) == 2
	})
	if _, ok := node.Owns(p); !ok {
		node, other = other, node
	}
	sn := &staleNode{Node: node}
	var announced atomic.Int64
	s, err := Open(t.Context(), dsn, Options{Cluster: sn, CleanupInterval: -1, PartitionJobs: 100,
		Applied: func(a jobstore.Appended) { announced.Add(int64(len(a.Entries))) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	so, err := Open(t.Context(), dsn, Options{Cluster: other, CleanupInterval: -1, PartitionJobs: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { so.Close() })
	// Drain the wake-ups of the gains (each gain is woken again after two
	// heartbeats).
	for drained := false; !drained; {
		select {
		case <-node.Wakeups():
		case <-time.After(500 * time.Millisecond):
			drained = true
		}
	}
	if _, err := so.Append(t.Context(), entries("web", []string{"hook"}, "a", 2)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-node.Wakeups():
		if got != p {
			t.Errorf("woken for partition %d, want %d", got, p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up for the jobs appended by the other node")
	}
	if _, err := s.Append(t.Context(), entries("web", []string{"hook"}, "b", 1)); err != nil {
		t.Fatal(err)
	}
	if got := announced.Load(); got != 1 {
		t.Errorf("the owner's store announced %d entries of its append, want 1", got)
	}
	select {
	case got := <-node.Wakeups():
		t.Errorf("woken for partition %d by its own append: its store announced it", got)
	case <-time.After(100 * time.Millisecond):
	}

	jobs, err := s.Pending(t.Context(), q, 0, 10)
	if err != nil || len(jobs) != 3 {
		t.Fatalf("Pending: %d jobs, %v", len(jobs), err)
	}
	sn.stale.Store(true)
	if err := s.Apply(t.Context(), jobstore.Update{Finish: jobs[:1]}); !errors.Is(err, jobstore.ErrFenced) {
		t.Fatalf("Apply under a stale token: %v, want ErrFenced", err)
	}
	sn.stale.Store(false)
	sn.lost.Store(true)
	if err := s.Apply(t.Context(), jobstore.Update{Finish: jobs[1:2]}); !errors.Is(err, jobstore.ErrFenced) {
		t.Fatalf("Apply of a partition not owned: %v, want ErrFenced", err)
	}
	if left, _ := s.Pending(t.Context(), q, 0, 10); len(left) != 3 {
		t.Fatalf("a fenced Apply wrote: %d jobs left, want 3", len(left))
	}
	sn.lost.Store(false)
	if err := s.Apply(t.Context(), jobstore.Update{Finish: jobs[:2]}); err != nil {
		t.Fatalf("Apply under the current token: %v", err)
	}
	if left, _ := s.Pending(t.Context(), q, 0, 10); len(left) != 1 {
		t.Fatalf("%d jobs left, want 1", len(left))
	}
}
