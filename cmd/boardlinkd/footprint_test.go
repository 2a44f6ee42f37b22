package main

import (
	"context"
	"crypto/ed25519"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
)

// rssFile is this process's resident file-backed memory, in KiB.
func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// trimStartup drops the binary's pages the process mapped, and the
// process goes on running from them.
func TestTrimStartupDropsCodePages(t *testing.T) {
	before := rssFile(t)
	if err := trimStartup(); err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("RssFile %d KiB before, %d KiB after", before, after)
	if after >= before {
		t.Fatalf("RssFile %d KiB after trimming, %d KiB before", after, before)
	}
}

// fakeTimers is a clock for idleTrimmer: timers fire only when the test
// says so.
type fakeTimers struct {
	armed []*fakeTimer
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped atomic.Bool
}

// fire runs the timer's function, as time.AfterFunc does once d passed,
// even if it was stopped too late.
func (t *fakeTimer) fire() {
	t.stopped.Store(true)
	t.f()
}

func (t *fakeTimer) Stop() bool { return !t.stopped.Swap(true) }

func (c *fakeTimers) afterFunc(d time.Duration, f func()) stopper {
	t := &fakeTimer{d: d, f: f}
	c.armed = append(c.armed, t)
	return t
}

// live is the timers armed and not stopped.
func (c *fakeTimers) live() []*fakeTimer {
	var out []*fakeTimer
	for _, t := range c.armed {
		if !t.stopped.Load() {
			out = append(out, t)
		}
	}
	return out
}

// The trim runs once the last session has ended and the idle delay has
// passed, never while a session is open, and once per idle spell.
func TestIdleTrimAfterLastSession(t *testing.T) {
	clock := &fakeTimers{}
	trims := 0
	tr := &idleTrimmer{after: idleTrimAfter, afterFunc: clock.afterFunc, trim: func() error { trims++; return nil }}

	tr.sessions(1)
	tr.sessions(2)
	tr.sessions(1)
	if n := len(clock.live()); n != 0 {
		t.Fatalf("%d timers armed with sessions open", n)
	}
	tr.sessions(0)
	live := clock.live()
	if len(live) != 1 || live[0].d != idleTrimAfter {
		t.Fatalf("after the last session: timers %+v, want one of %v", live, idleTrimAfter)
	}
	// A session that begins before the delay passes puts the trim off.
	tr.sessions(1)
	if !live[0].stopped.Load() {
		t.Fatal("the timer still runs with a session open")
	}
	live[0].fire() // fired as it was being stopped: does nothing
	if trims != 0 || tr.trims != 0 {
		t.Fatalf("trimmed %d times by a timer stopped by a new session", trims)
	}
	tr.sessions(0)
	live = clock.live()
	if len(live) != 1 {
		t.Fatalf("timers %+v, want one", live)
	}
	live[0].fire()
	if trims != 1 || tr.trims != 1 {
		t.Fatalf("trims = %d (counted %d), want 1", trims, tr.trims)
	}
	// Idle after the trim, nothing is armed: no wake-ups until the next
	// session.
	if n := len(clock.live()); n != 0 {
		t.Fatalf("%d timers armed after the trim", n)
	}
	tr.sessions(1)
	tr.sessions(0)
	clock.live()[0].fire()
	if trims != 2 {
		t.Fatalf("trims = %d after a second idle spell, want 2", trims)
	}
}

// The chain with a real agent: a session on its WebSocket server begins
// and ends, the trim is armed, and it runs (the real one) when its delay
// has passed.
func TestIdleTrimAfterRealSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := sim.Open(t.TempDir(), sim.Options{ID: "trim-board", Model: "sim"})
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	execs := agent.NewExecs(agent.ExecOptions{})
	a := agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "t", Value: "tok"}}}})
	ws := agent.NewInsecureWebSocketServer(a, "127.0.0.1:0")
	if err := ws.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ws.Stop(context.Background())
		execs.Shutdown(context.Background())
	})

	armed := make(chan *fakeTimer, 16)
	trimmed := make(chan error, 16)
	tr := &idleTrimmer{after: idleTrimAfter,
		afterFunc: func(d time.Duration, f func()) stopper {
			tm := &fakeTimer{d: d, f: f}
			armed <- tm
			return tm
		},
		trim: func() error {
			err := trimMemory()
			trimmed <- err
			return err
		}}
	defer agent.WatchSessions(tr.sessions)()

	c, err := dispatcher.Dial(ctx, ws.URL(), dispatcher.DialOptions{Token: "tok", Trust: dispatcher.NewKnownBoards("")})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %+v, %v", res, err)
	}
	if len(armed) != 0 {
		t.Fatal("the trim was armed during the session")
	}
	c.Close()
	var tm *fakeTimer
	select {
	case tm = <-armed:
	case <-ctx.Done():
		t.Fatal("the end of the session armed no trim")
	}
	if tm.d != idleTrimAfter {
		t.Fatalf("trim armed for %v, want %v", tm.d, idleTrimAfter)
	}
	tm.fire()
	if err := <-trimmed; err != nil {
		t.Fatalf("trim: %v", err)
	}
	if tr.trims != 1 {
		t.Fatalf("%d trims counted, want 1", tr.trims)
	}
}
