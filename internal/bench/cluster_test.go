package bench

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestDupAges(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	kills := [][2]time.Time{{at(0), at(6000)}, {at(20000), at(26000)}}
	tests := []struct {
		name    string
		got     map[string][]time.Time
		maxMs   float64
		older1s int
	}{
		{"no duplicates", map[string][]time.Time{"a": {at(-10)}, "b": {at(5)}}, 0, 0},
		{"in flight at the first kill", map[string][]time.Time{"a": {at(-30), at(5200)}}, 30, 0},
		{"sent long before the second kill", map[string][]time.Time{"a": {at(18000), at(21000)}, "b": {at(19990), at(25000)}}, 2000, 1},
		{"outside every window: a handover's", map[string][]time.Time{"a": {at(7000), at(9000)}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var k ClusterKills
			k.dupAges(tt.got, kills)
			if k.DupFirstBeforeKillMaxMs != tt.maxMs || k.DupsOlderThan1s != tt.older1s {
				t.Errorf("got %v ms, %d over 1 s; want %v ms, %d", k.DupFirstBeforeKillMaxMs, k.DupsOlderThan1s, tt.maxMs, tt.older1s)
			}
		})
	}
}

func TestSizeRatio(t *testing.T) {
	tests := []struct {
		name          string
		after, before int64
		want          float64
	}{
		{"shrunk below before", 256 << 10, 672 << 10, 256.0 / 672},
		{"back to before", 500, 500, 1},
		{"10% over", 1100, 1000, 1.1},
		{"still holding the backlog", 505_360 << 10, 672 << 10, 505_360.0 / 672},
		{"no size before", 1000, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sizeRatio(tt.after, tt.before); got != tt.want {
				t.Errorf("sizeRatio(%d, %d) = %v, want %v", tt.after, tt.before, got, tt.want)
			}
		})
	}
}

// treeCPU counts a child's CPU while it runs and after it was waited for:
// PostgreSQL's backends come and go during a steady run.
func TestTreeCPU(t *testing.T) {
	self := os.Getpid()
	before, err := treeCPU(self)
	if err != nil {
		t.Fatal(err)
	}
	// A child that burns CPU until told to stop: counted while it runs.
	burn := exec.Command("sh", "-c", "while :; do :; done")
	if err := burn.Start(); err != nil {
		t.Fatal(err)
	}
	var running time.Duration
	for end := time.Now().Add(10 * time.Second); running-before < 200*time.Millisecond; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			burn.Process.Kill()
			t.Fatalf("a busy child's CPU is not counted: %s, then %s", before, running)
		}
		if running, err = treeCPU(self); err != nil {
			t.Fatal(err)
		}
	}
	burn.Process.Kill()
	burn.Wait()
	child := burn.ProcessState.UserTime() + burn.ProcessState.SystemTime()
	after, err := treeCPU(self)
	if err != nil {
		t.Fatal(err)
	}
	// Waited for: its whole CPU is in the parent's, counted once (ticks
	// are 10 ms).
	if got := after - before; got < child-20*time.Millisecond {
		t.Errorf("after the child ended the tree's CPU grew by %s, less than the child's %s", got, child)
	}
	if after < running {
		t.Errorf("the tree's CPU went down from %s to %s when the child ended", running, after)
	}
}
