package pgtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childEnv makes the test binary, run again by TestKilledOwner, start a
// server in TestOwnerChild and wait.
const childEnv = "PGTEST_OWNER_CHILD"

// TestOwnerChild is the child process of TestKilledOwner: it starts a
// server, prints its directory and its watchdog's PID, and waits until
// its stdin ends (or it is killed, which is the point).
func TestOwnerChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("the child process of TestKilledOwner")
	}
	srv, err := StartServer(Options{Settings: TestSettings})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	fmt.Printf("%s %d\n", srv.Dir(), srv.watchdog.Process.Pid)
	bufio.NewReader(os.Stdin).ReadString('\n')
}

// A server whose owner is killed does not keep running: its watchdog
// stops it at once, and when the watchdog was killed too the next
// StartServer stops it. Real processes: the test binary runs again as
// the owner, in a process group of its own, and the group is sent a
// signal, as a job runner's kill or a terminal's Ctrl-C would.
func TestKilledOwner(t *testing.T) {
	if testing.Short() {
		t.Skip("starts clusters of its own")
	}
	cases := []struct {
		name string
		sig  syscall.Signal
		// killWatchdog kills the watchdog before the owner: the next
		// StartServer reaps the server.
		killWatchdog bool
	}{
		{"SIGKILL: the watchdog stops it", syscall.SIGKILL, false},
		{"Ctrl-C: the watchdog stops it", syscall.SIGINT, false},
		{"watchdog killed too: the next start reaps it", syscall.SIGKILL, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, watchdog, owner := startChild(t)
			pm := postmaster(t, dir)
			if !alive(pm) {
				t.Fatalf("postmaster %d of %s not running after the child started it", pm, dir)
			}
			if c.killWatchdog {
				if err := syscall.Kill(watchdog, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				waitGone(t, watchdog, "the watchdog")
			}
			if err := syscall.Kill(-owner.Process.Pid, c.sig); err != nil {
				t.Fatal(err)
			}
			owner.Wait()
			if c.killWatchdog {
				if !alive(pm) {
					t.Fatalf("postmaster %d gone with its owner and watchdog killed: nothing should have stopped it yet", pm)
				}
				srv, err := StartServer(Options{Settings: TestSettings})
				if err != nil {
					t.Fatal(err)
				}
				srv.Stop()
				// StartServer returns after reaping: no waiting.
				if alive(pm) {
					t.Errorf("postmaster %d still running after the next StartServer", pm)
				}
			} else {
				waitGone(t, pm, "the postmaster")
			}
			waitGone(t, watchdog, "the watchdog")
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("%s still there (%v), want it removed", dir, err)
			}
		})
	}
}

// startChild runs the test binary again as a server's owner and returns
// the server's directory, the watchdog's PID and the owner. The owner and
// the server are stopped when t ends, should the test fail before.
func startChild(t *testing.T) (dir string, watchdog int, owner *exec.Cmd) {
	t.Helper()
	owner = exec.Command(os.Args[0], "-test.run=^TestOwnerChild$", "-test.v=false")
	owner.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := owner.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := owner.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	owner.Stderr = os.Stderr
	owner.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		owner.Process.Kill()
		owner.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the child started no server: %v", err)
	}
	if _, err := fmt.Sscan(line, &dir, &watchdog); err != nil || !strings.HasPrefix(filepath.Base(dir), dirPrefix) {
		t.Fatalf("the child printed %q, want a server's directory and its watchdog's PID", line)
	}
	t.Cleanup(func() {
		// Only if the test failed to see it stopped.
		bin, _ := findBinDir("")
		s := &Server{dir: dir, binDir: bin}
		if os.Geteuid() == 0 {
			s.asUser = "postgres"
		}
		s.Stop()
	})
	return dir, watchdog, owner
}

// postmaster reads the PID of the server in dir.
func postmaster(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("postmaster.pid starts with %q", line)
	}
	return pid
}

// alive reports whether process pid runs (a zombie does not).
func alive(pid int) bool {
	_, ok := procID(pid)
	return ok
}

// waitGone waits until process pid has ended, and fails t after 30 s.
func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (%d) still running 30 s after its owner was killed", what, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
