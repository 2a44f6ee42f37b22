package seriallink

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// waitQuiet waits until e has gone quiet n times in all.
func waitQuiet(t *testing.T, e *Endpoint, n uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.waitFor(ctx, func() bool { return e.stats.quiet.Load() >= n }); err != nil {
		t.Fatalf("waiting for the host to go quiet: %v", err)
	}
}

// powerCut cuts the line, drops the agent without its RST reaching the
// host, and mends the line: the board's side is then whatever opens it.
func powerCut(line *linetest.Line, ae *Endpoint) {
	line.SetCut(true)
	ae.Close()
	line.SetCut(false)
}

// After a power cut the board's UART belongs to a boot loader. The host
// writes a bounded number of frames into it, then nothing until its
// session dies; the agent that boots then is heard and a new session
// opens.
func TestQuietAfterPowerCut(t *testing.T) {
	line := linetest.New(linetest.Config{})
	hcfg := testConfig()
	hcfg.QuietAfter = 4
	hcfg.DeadAfter = 2 * time.Second
	he, ae, hl, _ := openPair(t, line.Host(), line.Board(), hcfg, testConfig())
	powerCut(line, ae)

	// The boot loader reads the UART.
	loader := line.Board()
	var got atomic.Int64
	loaderDone := make(chan struct{})
	go func() {
		defer close(loaderDone)
		buf := make([]byte, 4096)
		for {
			n, err := loader.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	before := he.Stats().WireOut
	if err := hl.WriteMessage(context.Background(), transport.Text, []byte(`{"method":"board.info"}`)); err != nil {
		t.Fatal(err)
	}
	waitQuiet(t, he, 1)
	atQuiet := he.Stats().WireOut
	if _, _, err := hl.ReadMessage(); !errors.Is(err, ErrDead) {
		t.Fatalf("the silent session ended with %v, want ErrDead", err)
	}
	hl.Close() // no RST either: nobody listens
	if after := he.Stats().WireOut; after != atQuiet {
		t.Fatalf("the host wrote %d bytes after it went quiet", after-atQuiet)
	}
	t.Logf("to the boot loader: %d bytes (the message's frame, then %d probes unanswered)", atQuiet-before, hcfg.QuietAfter)

	// The line holds what the host wrote until the loader reads it; a close
	// first would drop the last probe unread (CI, -race).
	testenv.Eventually(t, "the boot loader to read what the host wrote", func() bool { return got.Load() >= int64(atQuiet-before) })
	// The board boots its agent; the host, dialing again, first hears it.
	loader.Close()
	<-loaderDone
	if got.Load() != int64(atQuiet-before) {
		t.Fatalf("the boot loader read %d bytes, the host wrote %d", got.Load(), atQuiet-before)
	}
	ae2 := NewEndpoint(line.Board(), Config{BeaconInterval: 50 * time.Millisecond, Beacon: beaconOf("board-1")})
	t.Cleanup(func() { ae2.Close() })
	hl2, al2 := connect(t, he, ae2)
	go echo(al2)
	roundTrip(t, hl2, "after the reboot")
}

// A line cut for a while, with the agent still up: the host goes quiet,
// and the agent's next probe brings the session back with nothing lost.
func TestQuietResumes(t *testing.T) {
	line := linetest.New(linetest.Config{})
	hcfg := testConfig()
	hcfg.QuietAfter = 3
	hcfg.DeadAfter = time.Minute
	acfg := testConfig()
	acfg.DeadAfter = time.Minute
	he, _, hl, al := openPair(t, line.Host(), line.Board(), hcfg, acfg)
	go echo(al)
	line.SetCut(true)
	if err := hl.WriteMessage(context.Background(), transport.Text, []byte("during the cut")); err != nil {
		t.Fatal(err)
	}
	waitQuiet(t, he, 1)
	line.SetCut(false)
	typ, p, err := hl.ReadMessage()
	if err != nil || typ != transport.Text || string(p) != "during the cut" {
		t.Fatalf("after the cut: %v %q %v", typ, p, err)
	}
	roundTrip(t, hl, "after the cut")
	if n := he.Stats().Quiet; n != 1 {
		t.Fatalf("went quiet %d times, want 1", n)
	}
}

// roundTrip sends msg through an echoing peer and checks it comes back.
func roundTrip(t *testing.T, l transport.Link, msg string) {
	t.Helper()
	if err := l.WriteMessage(context.Background(), transport.Text, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_, p, err := l.ReadMessage()
	if err != nil || string(p) != msg {
		t.Fatalf("echo: %q, %v; want %q", p, err, msg)
	}
}
