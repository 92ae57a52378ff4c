package cluster

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"
)

// counts records what a node's Options.Colocated is called with.
type counts struct {
	mu  sync.Mutex
	got []int
}

func (c *counts) record(k int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, k)
}

func (c *counts) calls() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

// Colocated counts the live nodes on the node's machine, itself included,
// at Join and at each change only: a node on another machine, and one that
// gave none, are not counted; a node that leaves is no longer.
func TestColocated(t *testing.T) {
	b := setup(t)
	var a, c counts
	na := b.join("a", Options{Machine: "m1", Colocated: a.record})
	waitFor(t, 5*time.Second, "a counts itself", func() bool { return slices.Equal(a.calls(), []int{1}) })

	nb := b.join("b", Options{Machine: "m1"})
	b.join("c", Options{Machine: "m2", Colocated: c.record})
	b.join("unknown", Options{})
	waitFor(t, 5*time.Second, "a counts b too", func() bool { return slices.Equal(a.calls(), []int{1, 2}) })
	waitFor(t, 5*time.Second, "c counts itself alone", func() bool { return slices.Equal(c.calls(), []int{1}) })

	nodes, err := na.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	machines := map[string]string{}
	for _, n := range nodes {
		machines[n.Name] = n.Machine
	}
	if want := map[string]string{"a": "m1", "b": "m1", "c": "m2", "unknown": ""}; !maps.Equal(machines, want) {
		t.Errorf("machines listed %v, want %v", machines, want)
	}

	// Many heartbeats: no call without a change.
	time.Sleep(5 * testHeartbeat)
	if got := a.calls(); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("a's calls %v, want [1 2]", got)
	}
	if err := nb.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a alone on m1 again", func() bool { return slices.Equal(a.calls(), []int{1, 2, 1}) })
}
