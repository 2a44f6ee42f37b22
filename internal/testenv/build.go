package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	if cache := goCache(); cache != "" {
		cmd.Env = append(os.Environ(), "GOCACHE="+cache)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// startEnv is the environment the test binary started with, before any
// test or TestMain changed it.
var startEnv = os.Environ()

// goCache is the build cache of startEnv. GoBuild keeps to it: a test
// that moves XDG_CACHE_HOME, to keep the CLI's cache apart, would
// otherwise give each build an empty cache and minutes of compiling.
var goCache = sync.OnceValue(func() string {
	cmd := exec.Command("go", "env", "GOCACHE")
	cmd.Env = startEnv
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
})

// BuildTestHooks makes every GoBuild of the test t (and of the helpers it
// calls) build with TestHooksTag, until t ends. It sets GOFLAGS for t, so
// t must not be parallel (t.Setenv refuses).
func BuildTestHooks(t testing.TB) {
	t.Helper()
	flags := strings.TrimSpace(os.Getenv("GOFLAGS") + " -tags=" + TestHooksTag)
	t.Setenv("GOFLAGS", flags)
}
