// Package cores sizes the Go runtime's processors (GOMAXPROCS) for a
// fanout node that shares its machine's cores with other nodes.
//
// The runtime gives every process as many processors as the machine (or
// its container's CPU limit) has cores. Nodes of one cluster that run on
// one machine, as in a docker-compose file on a laptop or pods on one host
// without CPU limits, then each run that many: a lightly loaded Go process
// wakes an idle thread for nearly every goroutine it readies, and three
// nodes on a 2-core machine spent 14 to 28% more CPU per event that way
// than with each given its share of the cores (BENCHMARKS.md, fourth and
// fifth sessions). The runtime cannot know about the other nodes; the cluster
// does (cluster.Options.Machine), and Share applies what it counts.
package cores

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strings"
)

// Machine identifies the cores this process runs on: the running kernel's
// boot id and the CPUs the process may run on. Nodes with the same
// Machine compete for the same cores. Containers on one host share the
// kernel, hence its boot id, and differ only if pinned to other CPUs;
// virtual machines have kernels of their own. "" when the kernel does not
// say (not Linux): such a node is counted alone.
func Machine() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	cpus := ""
	for s := bufio.NewScanner(bytes.NewReader(status)); s.Scan(); {
		if v, ok := strings.CutPrefix(s.Text(), "Cpus_allowed_list:"); ok {
			cpus = strings.TrimSpace(v)
		}
	}
	return strings.TrimSpace(string(boot)) + " cpus " + cpus
}

// Share sizes GOMAXPROCS for a process that shares its machine with
// nodes-1 other nodes (Machine): the runtime's own default, capped at the
// node's share of the machine's cores, rounded up. Rounded up so that the
// nodes together can still use every core when all are busy. With one node
// (or none counted) the runtime's default comes back, and with it the
// runtime's own updates for a container's CPU limit, which setting
// GOMAXPROCS ends.
//
// GOMAXPROCS set in the environment is the operator's choice: Share leaves
// it and returns set false. It returns the GOMAXPROCS in effect.
func Share(nodes int) (procs int, set bool) {
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok {
		return runtime.GOMAXPROCS(0), false
	}
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	if nodes <= 1 {
		return def, true
	}
	share := min(def, (runtime.NumCPU()+nodes-1)/nodes)
	if share != def {
		runtime.GOMAXPROCS(share)
	}
	return share, true
}
