package testenv

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// recordingTB catches the failure CheckLeaks reports.
type recordingTB struct {
	testing.TB
	cleanups []func()
	failed   bool
	msg      string // of the last Fatalf
}

func (r *recordingTB) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recordingTB) Errorf(string, ...any)     { r.failed = true }
func (r *recordingTB) Helper()                   {}
func (r *recordingTB) Fatalf(f string, a ...any) { r.failed, r.msg = true, fmt.Sprintf(f, a...) }

// checkLeaksOf runs CheckLeaks around leak and reports whether it failed.
func checkLeaksOf(t *testing.T, leak func()) bool {
	defer func(old time.Duration) { settle = old }(settle)
	settle = 100 * time.Millisecond
	r := &recordingTB{TB: t}
	CheckLeaks(r)
	leak()
	r.cleanups[0]()
	return r.failed
}

func TestCheckLeaksCatchesAnFD(t *testing.T) {
	var f *os.File
	caught := checkLeaksOf(t, func() {
		var err error
		if f, err = os.Open(os.DevNull); err != nil {
			t.Fatal(err)
		}
	})
	f.Close()
	if !caught {
		t.Fatal("an open file descriptor went unnoticed")
	}
}

func TestCheckLeaksCatchesAGoroutine(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	if !checkLeaksOf(t, func() { go func() { <-stop }() }) {
		t.Fatal("a goroutine left running went unnoticed")
	}
}

// A goroutine that ends and another that starts leave the count as it
// was; the leak is still found.
func TestCheckLeaksTellsGoroutinesApart(t *testing.T) {
	stop, ended := make(chan struct{}), make(chan struct{})
	defer close(stop)
	go func() { <-ended }()
	if !checkLeaksOf(t, func() {
		close(ended)
		go func() { <-stop }()
	}) {
		t.Fatal("a goroutine that replaced one that ended went unnoticed")
	}
}

func TestCheckLeaksQuietWhenClean(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	go func() { <-stop }() // started before: not the test's
	if checkLeaksOf(t, func() {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		done := make(chan struct{})
		go func() { close(done) }()
		<-done
	}) {
		t.Fatal("reported a leak where there is none")
	}
}

func TestEventually(t *testing.T) {
	done := make(chan struct{})
	go func() { close(done) }()
	r := &recordingTB{TB: t}
	Eventually(r, "the goroutine to end", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	if r.failed {
		t.Fatal("failed although the condition came to hold")
	}
	defer func(old time.Duration) { guard = old }(guard)
	guard = 20 * time.Millisecond
	Eventually(r, "what never happens", func() bool { return false })
	if !r.failed || r.msg != "gave up after 20ms waiting for what never happens" {
		t.Fatalf("a condition that never holds: failed %v, %q", r.failed, r.msg)
	}
}

func blockOn(ch chan struct{}) { <-ch }

func spin(stop *atomic.Bool) {
	for !stop.Load() {
	}
}

func TestParked(t *testing.T) {
	ch := make(chan struct{})
	defer close(ch)
	go blockOn(ch)
	Eventually(t, "blockOn to park", func() bool { return Parked("testenv.blockOn") })
	if Parked("testenv.blockOn", "testenv.noSuchFunction") {
		t.Error("a function no goroutine runs counts as parked")
	}
	var stop atomic.Bool
	defer stop.Store(true)
	go spin(&stop)
	Eventually(t, "spin to start", func() bool {
		for _, g := range goroutines() {
			if g.has("testenv.spin") {
				return true
			}
		}
		return false
	})
	if Parked("testenv.spin") || Parked("testenv.blockOn", "testenv.spin") {
		t.Error("a goroutine that spins counts as parked")
	}
}

// A test that moves XDG_CACHE_HOME leaves GoBuild with the build cache
// the test binary started with, not an empty one.
func TestGoBuildKeepsTheBuildCache(t *testing.T) {
	moved := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", moved)
	cache := goCache()
	if cache == "" || strings.HasPrefix(cache, moved) {
		t.Fatalf("GoBuild's cache is %q, want the one the test binary started with", cache)
	}
}
