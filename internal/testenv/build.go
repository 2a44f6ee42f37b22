package testenv

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// GoBuild builds the main package pkg (a path relative to the test's
// package directory, e.g. "../cmd/boardlinkd") into a temporary directory
// and returns the binary's path. Tests that run a real boardlinkd use it:
// its supervisor re-executes its own binary, which `go test` cannot.
func GoBuild(t testing.TB, pkg string) string {
	t.Helper()
	abs, err := filepath.Abs(pkg)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(abs))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}
