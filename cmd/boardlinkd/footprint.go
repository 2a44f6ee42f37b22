package main

import (
	"sync"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/internal/footprint"
)

// trimStartup gives back what starting needed and running does not: the
// heap garbage of the start, and the pages of this binary's code and
// read-only data that the start touched (package initialization, flag
// parsing, the wiring), most of which an idle agent never touches again.
// Those pages are clean copies of the executable: dropping them from this
// process costs nothing but a fault from the page cache (or the flash) if
// they are needed again, as the kernel does anyway under memory pressure.
// The data segment is left alone.
//
// It also arms the same trim for after the sessions: a session faults
// its code path back in (and grows the heap), so once the last one has
// ended and the agent has been idle for idleTrimAfter, it trims again.
func trimStartup() error {
	afterSessions.Do(func() {
		t := &idleTrimmer{after: idleTrimAfter, afterFunc: realAfterFunc, trim: trimMemory}
		agent.WatchSessions(t.sessions)
	})
	return trimMemory()
}

// idleTrimAfter is how long the agent waits after its last session
// before it trims: a client that runs commands one after the other
// (a test suite, a CI job) reconnects within it and pays no faults.
const idleTrimAfter = 10 * time.Second

var afterSessions sync.Once

// idleTrimmer runs trim once, after no session has been open for after.
// It costs a one-shot timer and nothing while idle: no polling.
type idleTrimmer struct {
	after     time.Duration
	afterFunc func(time.Duration, func()) stopper // time.AfterFunc; a fake clock in tests
	trim      func() error

	mu    sync.Mutex
	timer stopper // armed while no session is open and no trim has run
	gen   int     // the armed timer's; an older one that fires does nothing
	trims int     // trims run, for tests
}

// stopper is what idleTrimmer needs of a timer.
type stopper interface{ Stop() bool }

func realAfterFunc(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }

// sessions is an agent.WatchSessions watcher: open is the number of
// sessions open now.
func (t *idleTrimmer) sessions(open int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.gen++
	if open == 0 {
		gen := t.gen
		t.timer = t.afterFunc(t.after, func() { t.fire(gen) })
	}
}

func (t *idleTrimmer) fire(gen int) {
	t.mu.Lock()
	current := gen == t.gen // else a session began since, and its end arms another
	if current {
		t.timer = nil
		t.trims++
	}
	t.mu.Unlock()
	// Outside the lock: a session that begins meanwhile does not wait. A
	// failure here is the start's too, which wiring logs.
	if current {
		_ = t.trim()
	}
}

// trimMemory returns the heap's free pages to the system and drops the
// binary's pages from this process (see trimStartup).
func trimMemory() error { return footprint.Trim() }
