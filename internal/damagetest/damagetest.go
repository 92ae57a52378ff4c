// Package damagetest damages files the way a failing disk or a crash does,
// for the tests of the stores that must recover from it or refuse it: the
// job store (internal/jobstore/pebble) and the stats database
// (internal/stats).
package damagetest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// LastFile returns the newest file of dir matching pattern (the greatest
// name: Pebble numbers its files in order), and fails the test if there is
// none.
func LastFile(t testing.TB, dir, pattern string) string {
	t.Helper()
	ms, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil || len(ms) == 0 {
		t.Fatalf("no %s in %s", pattern, dir)
	}
	return slices.Max(ms)
}

// FlipBytes inverts 8 bytes of the file at path, at the fraction at of its
// length.
func FlipBytes(t testing.TB, path string, at float64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := int(float64(len(b)) * at)
	for k := i; k < min(i+8, len(b)); k++ {
		b[k] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TruncateBy cuts the last n bytes off the file at path.
func TruncateBy(t testing.TB, path string, n int64) {
	t.Helper()
	if err := os.Truncate(path, Size(t, path)-n); err != nil {
		t.Fatal(err)
	}
}

// Size is the length of the file at path.
func Size(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
