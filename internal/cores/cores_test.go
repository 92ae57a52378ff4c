package cores

import (
	"os"
	"runtime"
	"strings"
	"testing"
)

// Share caps GOMAXPROCS at the node's share of the cores, rounded up,
// never above the runtime's default, and gives the default back to a node
// alone; GOMAXPROCS in the environment is left as it is.
func TestShare(t *testing.T) {
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok {
		t.Skip("GOMAXPROCS is set in the environment: Share leaves it")
	}
	t.Cleanup(runtime.SetDefaultGOMAXPROCS)
	runtime.SetDefaultGOMAXPROCS()
	def, cpus := runtime.GOMAXPROCS(0), runtime.NumCPU()
	for _, tt := range []struct {
		nodes, want int
	}{
		{0, def},
		{1, def},
		{2, min(def, (cpus+1)/2)},
		{3, min(def, (cpus+2)/3)},
		{cpus * 4, 1},
		{1, def}, // back to the default after a share
	} {
		got, set := Share(tt.nodes)
		if !set || got != tt.want || runtime.GOMAXPROCS(0) != tt.want {
			t.Errorf("Share(%d) = %d, %v with GOMAXPROCS %d; want %d, true (default %d, %d CPUs)",
				tt.nodes, got, set, runtime.GOMAXPROCS(0), tt.want, def, cpus)
		}
	}

	t.Setenv("GOMAXPROCS", "7")
	runtime.GOMAXPROCS(5) // what the environment had set at start, say
	if got, set := Share(cpus * 4); set || got != 5 || runtime.GOMAXPROCS(0) != 5 {
		t.Errorf("with GOMAXPROCS in the environment: Share = %d, %v, GOMAXPROCS %d; want 5, false, unchanged",
			got, set, runtime.GOMAXPROCS(0))
	}
}

// Machine is the kernel's boot id and the process's CPUs, the same on
// every call.
func TestMachine(t *testing.T) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		if m := Machine(); m != "" {
			t.Errorf("no boot id, Machine = %q, want \"\"", m)
		}
		t.Skip("no /proc boot id on this system")
	}
	m := Machine()
	if !strings.HasPrefix(m, strings.TrimSpace(string(boot))+" cpus ") || strings.HasSuffix(m, "cpus ") {
		t.Errorf("Machine = %q, want the boot id %s and a CPU list", m, boot)
	}
	if again := Machine(); again != m {
		t.Errorf("Machine = %q, then %q", m, again)
	}
}
