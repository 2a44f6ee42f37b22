// Package testenv holds what tests share about their environment: skips
// that become failures under BOARDLINK_E2E=1 (set by .ci/run, where every
// tool a test needs is installed), and a leak check for goroutines and
// file descriptors.
package testenv

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// E2E reports whether skips must fail (BOARDLINK_E2E=1).
func E2E() bool { return os.Getenv("BOARDLINK_E2E") == "1" }

// SkipOrFail skips the test loudly, or fails it under BOARDLINK_E2E=1.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if E2E() {
		t.Fatalf("BOARDLINK_E2E=1 and this test cannot run: "+format, args...)
	}
	t.Skipf("SKIPPED (set BOARDLINK_E2E=1 to make this a failure): "+format, args...)
}

// settle is how long CheckLeaks lets goroutines wind down before it
// reports them.
var settle = 10 * time.Second

// CheckLeaks records the goroutines and open file descriptors now and, when
// the test ends, fails it if more remain once things have had time to wind
// down. Call it first, so its cleanup runs after the test's others.
func CheckLeaks(t testing.TB) {
	t.Helper()
	goroutines, fds := runtime.NumGoroutine(), openFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(settle)
		for {
			g, f := runtime.NumGoroutine(), openFDs()
			if g <= goroutines && f <= fds {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leak: %d goroutines (was %d), %d fds (was %d)\n%s", g, goroutines, f, fds, trimStacks(string(buf)))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

// trimStacks keeps the goroutine dump readable: the first frames of each.
func trimStacks(s string) string {
	var out []string
	for _, g := range strings.Split(s, "\n\n") {
		lines := strings.Split(g, "\n")
		out = append(out, strings.Join(lines[:min(len(lines), 9)], "\n"))
	}
	return strings.Join(out, "\n\n")
}

// Buffer is a bytes.Buffer that a test may read while another goroutine
// (a command's output, an agent's logger) writes it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
