package fanouttest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Browser runs the node scripts of a test that drives Debian's chromium
// through playwright-core (test/ui, test/browser).
type Browser struct {
	node, chromium string
}

// NewBrowser checks that the test in the current directory, test/dir, can
// drive chromium: node on PATH, each npm package of pkgs in its
// node_modules, and chromium at $CHROMIUM or /usr/bin/chromium. When one is
// missing it fails the test and says how to install it: a browser test
// that silently skips is a browser test that never runs.
func NewBrowser(t testing.TB, dir string, pkgs ...string) *Browser {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not on PATH: the test runs test/%s/run.mjs with it (apt-get install nodejs npm)", dir)
	}
	for _, pkg := range pkgs {
		if _, err := os.Stat(filepath.Join("node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("test/%s/node_modules/%s is missing: run `npm ci --prefix test/%s` (make test does)", dir, pkg, dir)
		}
	}
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("no chromium at %s: install Debian's (apt-get install chromium; .ci/run does) or set CHROMIUM to its path", chromium)
	}
	return &Browser{node: node, chromium: chromium}
}

// Run runs script with node, for 3 minutes at most, with CHROMIUM and env
// added to the environment. It logs what the script printed and returns
// it, with the error of a script that failed.
func (b *Browser) Run(t testing.TB, script string, env ...string) (*bytes.Buffer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.node, script)
	cmd.Env = append(append(os.Environ(), "CHROMIUM="+b.chromium), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("node %s:\n%s", script, out.String())
	return &out, err
}
