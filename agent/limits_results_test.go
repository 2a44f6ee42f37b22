package agent

import (
	"context"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// gate is a stdin that reads as EOF once opened, so that commands reading
// it end together.
type gate chan struct{}

func (g gate) Read([]byte) (int, error) {
	<-g
	return 0, io.EOF
}

// A connection's commands keep their results until waited for, however
// many more than the log holds end first: 150 at once on a log of 100.
func TestHeldResultsOutliveTheLogSize(t *testing.T) {
	const n, logSize = 150, 100
	m := newExecs(t, ExecOptions{LogSize: logSize})
	h := m.NewHolder()
	open := make(gate)
	cmds := make([]*Command, n)
	outs := make([]*testenv.Buffer, n)
	for i := range n {
		outs[i] = new(testenv.Buffer)
		cmds[i] = holdStart(t, h, sh(`cat; echo "out $0"; exit $(($0 % 100))`, strconv.Itoa(i)), ExecIO{Stdin: open, Stdout: outs[i]})
	}
	if r := m.Running(); r != n {
		t.Fatalf("%d commands running, want %d at once", r, n)
	}
	close(open)
	for _, c := range cmds {
		<-c.Done()
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	lost := 0
	for i, c := range cmds {
		res, err := m.Wait(ctx, c.ID())
		if err != nil {
			lost++
			t.Errorf("command %d (%s): %v", i, c.ID(), err)
			continue
		}
		want := "out " + strconv.Itoa(i) + "\n"
		if res.ID != c.ID() || res.ExitCode != i%100 || res.StdoutBytes != int64(len(want)) || outs[i].String() != want {
			t.Errorf("command %d: %+v, output %q; want exit %d, output %q", i, res, outs[i].String(), i%100, want)
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d results lost", lost, n)
	}
}

func holdStart(t *testing.T, h *Holder, p proto.ExecStartParams, eio ExecIO) *Command {
	t.Helper()
	c, err := h.Start(p, eio)
	if err != nil {
		t.Fatalf("Start(%q): %v", p.Argv, err)
	}
	return c
}

// fakeClock is the clock grace periods run on in these tests: it moves
// only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// inLog reports whether the command id is in m's log.
func inLog(m *Execs, id string) bool { return slices.Contains(ids(m.Log(0)), id) }

// After its Holder's Release a result not collected stays for the grace
// period, counted from the Release or from the command's end if later,
// and then leaves the log like any other.
func TestHeldResultGraceAfterRelease(t *testing.T) {
	const grace = time.Minute
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newExecs(t, ExecOptions{LogSize: 1, ResultGrace: grace, Now: clock.Now})
	// trim makes the log drop what it may: a command starts and ends. It
	// is held and collected, or a log of one could drop it before the
	// Wait (the very loss holders prevent).
	trim := func() {
		th := m.NewHolder()
		defer th.Release()
		wait(t, m, holdStart(t, th, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{}))
	}

	h := m.NewHolder()
	done := holdStart(t, h, sh("exit 7"), ExecIO{})
	<-done.Done()
	open := make(gate)
	running := holdStart(t, h, proto.ExecStartParams{Argv: []string{"cat"}}, ExecIO{Stdin: open})
	clock.Add(time.Hour)
	trim()
	if !inLog(m, done.ID()) {
		t.Fatal("a held result left the log while its holder is live")
	}

	h.Release()
	clock.Add(grace / 2)
	close(open) // ends grace/2 after the Release: its grace runs from its end
	<-running.Done()
	clock.Add(grace/2 - time.Nanosecond)
	trim()
	if !inLog(m, done.ID()) || !inLog(m, running.ID()) {
		t.Fatalf("held results left before their grace ran out: log %v", ids(m.Log(0)))
	}
	clock.Add(time.Nanosecond)
	trim()
	if inLog(m, done.ID()) || !inLog(m, running.ID()) {
		t.Fatalf("log %v: want %s gone (grace over) and %s kept (ended later)", ids(m.Log(0)), done.ID(), running.ID())
	}
	if res := wait(t, m, running); res.ExitCode != 0 {
		t.Errorf("result kept for the grace period: %+v", res)
	}
	clock.Add(grace)
	trim()
	if inLog(m, running.ID()) {
		t.Errorf("%s still in the log after its grace", running.ID())
	}

	// A Start that races with the end of its connection is held for the
	// grace period only.
	late := holdStart(t, h, sh("exit 3"), ExecIO{})
	<-late.Done()
	trim()
	if !inLog(m, late.ID()) {
		t.Fatal("a result started after Release was not kept for the grace period")
	}
	clock.Add(grace)
	trim()
	if inLog(m, late.ID()) {
		t.Errorf("%s still in the log after its grace", late.ID())
	}
}

// A result collected by Wait is no longer held: the log may drop it.
func TestCollectedResultLeavesTheLog(t *testing.T) {
	m := newExecs(t, ExecOptions{LogSize: 1})
	h := m.NewHolder()
	c := holdStart(t, h, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	wait(t, m, c)
	run(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	if inLog(m, c.ID()) {
		t.Errorf("a collected result stayed beyond the log size: %v", ids(m.Log(0)))
	}
}

// MaxCommands counts running commands and results held but not collected:
// one more is refused busy until a result is collected.
func TestMaxCommandsCountsHeldResults(t *testing.T) {
	const limit = 2
	m := newExecs(t, ExecOptions{MaxCommands: limit})
	h := m.NewHolder()
	open := make(gate)
	first := holdStart(t, h, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	holdStart(t, h, proto.ExecStartParams{Argv: []string{"cat"}}, ExecIO{Stdin: open})
	busy := func(what string) {
		t.Helper()
		_, err := m.Start(proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
		if !proto.IsReason(err, proto.ReasonBusy) || !strings.Contains(err.Error(), strconv.Itoa(limit)) {
			t.Fatalf("%s: Start = %v, want busy naming the limit %d", what, err, limit)
		}
	}
	busy("one running, one ended but not collected")
	<-first.Done()
	busy("the ended one still held")
	wait(t, m, first)
	run(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	close(open)
}
