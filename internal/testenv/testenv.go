// Package testenv holds what tests share about their environment: skips
// that become failures under BOARDLINK_E2E=1 (set by .ci/run, where every
// tool a test needs is installed), long stress tests that run only then,
// waits on events (Eventually, Parked), a leak check for goroutines
// and file descriptors, and a thread to start a process with a
// parent-death signal from (OnPooledThread).
package testenv

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// E2E reports whether skips must fail (BOARDLINK_E2E=1).
func E2E() bool { return os.Getenv("BOARDLINK_E2E") == "1" }

// Long skips a long stress test unless BOARDLINK_E2E=1: `go test ./...`
// stays quick, and .ci/run, which sets it, runs every test.
func Long(t testing.TB) {
	t.Helper()
	if !E2E() {
		t.Skip("a long stress test: runs with BOARDLINK_E2E=1, as in .ci/run and `just e2e`")
	}
}

// SkipOrFail skips the test loudly, or fails it under BOARDLINK_E2E=1.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if E2E() {
		t.Fatalf("BOARDLINK_E2E=1 and this test cannot run: "+format, args...)
	}
	t.Skipf("SKIPPED (set BOARDLINK_E2E=1 to make this a failure): "+format, args...)
}

// settle is how long CheckLeaks lets goroutines and descriptors wind
// down before it reports them.
var settle = 10 * time.Second

// CheckLeaks records the goroutines and open file descriptors now and, when
// the test ends, fails it if a goroutine started since is still running,
// or more descriptors are open, once things have had time to wind down.
// Goroutines are told apart by goleak, so one that ended and another that
// started cannot cancel out. Call it first, so its cleanup runs after the
// test's others; the test must not be parallel.
func CheckLeaks(t testing.TB) {
	t.Helper()
	before, fds := goleak.IgnoreCurrent(), openFDs()
	t.Cleanup(func() {
		var leaked error
		clean := poll(settle, func() bool {
			leaked = goleak.Find(before)
			return leaked == nil && len(openFDs()) <= len(fds)
		})
		if clean {
			return
		}
		if leaked != nil {
			t.Errorf("leak: %v", leaked)
		}
		if now := openFDs(); len(now) > len(fds) {
			t.Errorf("leak: %d file descriptors open, %d before; new: %s", len(now), len(fds), newFDs(fds, now))
		}
	})
}

// openFDs maps each open descriptor of the process to what it refers to.
func openFDs() map[string]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	fds := make(map[string]string, len(ents))
	for _, e := range ents {
		fds[e.Name()], _ = os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
	}
	return fds
}

// newFDs names the descriptors of now that were not open in before.
func newFDs(before, now map[string]string) string {
	var out []string
	for fd, target := range now {
		if before[fd] != target {
			out = append(out, fd+" -> "+target)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// guard bounds every wait of Eventually: far beyond what any awaited event
// takes on a loaded machine, it only turns a bug into a failure rather
// than a hang.
var guard = time.Minute

// tick is how often a condition is looked at again.
const tick = 5 * time.Millisecond

// Eventually waits until cond holds, looking again every few milliseconds,
// and fails the test, naming what it waited for, if it does not within a
// generous guard. cond runs on the test's goroutine, so it may fail the
// test itself.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !poll(guard, cond) {
		t.Fatalf("gave up after %v waiting for %s", guard, what)
	}
}

// poll reports whether cond came to hold within d.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(tick)
	}
	return true
}

// Buffer is a bytes.Buffer that a test may read while another goroutine
// (a command's output, an agent's logger) writes it, and wait on.
type Buffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	grew chan struct{} // closed by the next write; nil: nobody waits
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.grew != nil {
		close(b.grew)
		b.grew = nil
	}
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor returns true once the buffer holds s, false if ctx ends first.
// It wakes on writes, not on a timer.
func (b *Buffer) WaitFor(ctx context.Context, s string) bool {
	for {
		b.mu.Lock()
		if bytes.Contains(b.buf.Bytes(), []byte(s)) {
			b.mu.Unlock()
			return true
		}
		if b.grew == nil {
			b.grew = make(chan struct{})
		}
		grew := b.grew
		b.mu.Unlock()
		select {
		case <-grew:
		case <-ctx.Done():
			return false
		}
	}
}
