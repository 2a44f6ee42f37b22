package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHooksTag is the build tag of the hooks only tests may use (the OTA
// crash point, agent/ota/crash.go). A default build has none of them.
const TestHooksTag = "boardlink_testhooks"

// GoBuild builds the main package pkg (a path relative to the test's
// package directory, e.g. "../cmd/boardlinkd") into a temporary directory
// and returns the binary's path. Tests that run a real boardlinkd use it:
// its supervisor re-executes its own binary, which `go test` cannot.
// After BuildTestHooks, the test's binaries have the test hooks.
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

// BuildTestHooks makes every GoBuild of the test t (and of the helpers it
// calls) build with TestHooksTag, until t ends. It sets GOFLAGS for t, so
// t must not be parallel (t.Setenv refuses).
func BuildTestHooks(t testing.TB) {
	t.Helper()
	flags := strings.TrimSpace(os.Getenv("GOFLAGS") + " -tags=" + TestHooksTag)
	t.Setenv("GOFLAGS", flags)
}
