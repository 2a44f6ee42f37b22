package power_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/consolelog"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport/seriallink"
)

const simToken = "power-test-token-0123456789"

// boardScript powers a sim board: on starts its boardlinkd in a session
// of its own (it outlives the command, as a board keeps its power), off
// kills that session with SIGKILL (a power cut) and returns once nothing
// of it runs; reset kills the running boot only (the sim board's reset
// line: its boot loader, which holds the UART, boots it again).
const boardScript = `#!/bin/sh
pidf=%[1]q
alive() {
	for f in /proc/[0-9]*/stat; do
		{ read -r _ _ st _ pg _ <"$f"; } 2>/dev/null || continue
		[ "$pg" = "$1" ] && [ "$st" != Z ] && return 0
	done
	return 1
}
case "$1" in
on)
	[ -f "$pidf" ] && alive "$(cat "$pidf")" && exit 0
	setsid %[2]s >>%[3]q 2>&1 </dev/null &
	echo $! >"$pidf"
	;;
off)
	[ -f "$pidf" ] || exit 0
	pg=$(cat "$pidf")
	kill -KILL "-$pg" 2>/dev/null
	while alive "$pg"; do sleep 0.01; done
	rm -f "$pidf"
	;;
reset)
	sup=$(cat "$pidf") n=0
	for f in /proc/[0-9]*/stat; do
		{ read -r pid _ _ ppid _ <"$f"; } 2>/dev/null || continue
		[ "$ppid" = "$sup" ] && kill -KILL "$pid" && n=$((n + 1))
	done
	[ "$n" -gt 0 ]
	;;
esac
`

// simBoard is a real boardlinkd sim board that only its power script
// starts and stops, on a serial line (a pty) the test holds like a USB
// serial adapter that stays plugged in while the board's power goes.
type simBoard struct {
	addr   string // wss://
	script string
	log    string // boardlinkd's own output
	master *os.File
	opts   dispatcher.DialOptions
}

func newSimBoard(t *testing.T) *simBoard {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the real boardlinkd")
	}
	bin := testenv.GoBuild(t, "../../cmd/boardlinkd")
	master, slave := testenv.RawPTY(t) // the test's slave keeps the line up between boots
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(simToken), 0o600); err != nil {
		t.Fatal(err)
	}
	argv := []string{bin, "--board", "sim", "--state-dir", filepath.Join(dir, "state"), "--listen", addr,
		"--token-file", token, "--serial", slave.Name(), "--no-mdns", "--sim-boot-delay", "10ms"}
	var quoted []string
	for _, a := range argv {
		quoted = append(quoted, fmt.Sprintf("%q", a))
	}
	b := &simBoard{addr: "wss://" + addr, script: filepath.Join(dir, "power.sh"), log: filepath.Join(dir, "board.log"),
		master: master, opts: dispatcher.DialOptions{Token: simToken, Trust: dispatcher.NewKnownBoards("")}}
	script := fmt.Sprintf(boardScript, filepath.Join(dir, "pid"), strings.Join(quoted, " "), b.log)
	if err := os.WriteFile(b.script, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.driver(t).Do(context.Background(), power.Off); err != nil {
			t.Errorf("powering the board off: %v", err)
		}
		if t.Failed() {
			out, _ := os.ReadFile(b.log)
			t.Logf("boardlinkd's log:\n%s", out)
		}
	})
	return b
}

// driver is the command driver of the board's script, with cycle as its
// power cycle (off then on when none).
func (b *simBoard) driver(t *testing.T, cycle ...string) power.Driver {
	t.Helper()
	d, err := power.New(power.Config{Driver: power.DriverCommand, On: []string{b.script, "on"}, Off: []string{b.script, "off"},
		Cycle: cycle})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitBack dials the board until it answers and returns its boot id, as
// the service's waitBack does.
func (b *simBoard) waitBack(ctx context.Context) (string, error) {
	c, err := dispatcher.DialWait(ctx, b.addr, b.opts, dispatcher.WaitOptions{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	info, err := c.Info(ctx)
	return info.BootID, err
}

func (b *simBoard) bootID(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, err := b.waitBack(ctx)
	if err != nil || id == "" {
		t.Fatalf("the board does not answer: %q %v", id, err)
	}
	return id
}

func do(t *testing.T, d power.Driver, a power.Action) {
	t.Helper()
	if err := d.Do(context.Background(), a); err != nil {
		t.Fatalf("power %s: %v", a, err)
	}
}

// TestCommandDriverCyclesASimBoard: the command driver powers a real sim
// board on, cycles it (off, a power cut, then on: a new boot id from
// board.info) and powers it off (it no longer answers).
func TestCommandDriverCyclesASimBoard(t *testing.T) {
	b := newSimBoard(t)
	d := b.driver(t)
	do(t, d, power.On)
	first := b.bootID(t)
	do(t, d, power.Cycle)
	if second := b.bootID(t); second == first {
		t.Fatalf("after a power cycle the board still runs boot %s", first)
	}
	do(t, d, power.Off)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if c, err := dispatcher.Dial(ctx, b.addr, b.opts); err == nil {
		c.Close()
		t.Fatal("the board answers after power off")
	}
}

// TestRecover: a board whose agent was killed (its power cut behind the
// service's back) is power-cycled and comes back with a new boot id; every
// step is recorded.
func TestRecover(t *testing.T) {
	b := newSimBoard(t)
	d := b.driver(t)
	do(t, d, power.On)
	old := b.bootID(t)
	do(t, d, power.Off) // the agent dies; the service only sees silence
	var steps []power.Step
	out, err := power.Recover(context.Background(), d, b.waitBack, old,
		power.RecoverOptions{Attempts: 2, WaitTimeout: time.Minute, Step: func(s power.Step) { steps = append(steps, s) }})
	if err != nil || !out.Recovered || out.BootID == "" || out.BootID == old || out.Attempts != 1 {
		t.Fatalf("recover: %+v %v", out, err)
	}
	if got := stepKinds(steps); !slices.Equal(got, []string{power.StepCycle, power.StepWait, power.StepBack}) {
		t.Fatalf("steps %v", got)
	}
	if now := b.bootID(t); now != out.BootID {
		t.Fatalf("the board runs boot %s, Recover said %s", now, out.BootID)
	}
	t.Logf("recovered: from the end of the power cycle to the new boot answering: %v", steps[len(steps)-1].Time.Sub(steps[0].Time).Round(time.Millisecond))
}

// TestRecoverGivesUp: a board that never comes back (its power commands
// do nothing) is cycled Attempts times, then Recover gives up with
// ErrGaveUp, for the service to quarantine it.
func TestRecoverGivesUp(t *testing.T) {
	b := newSimBoard(t)
	do(t, b.driver(t), power.On)
	old := b.bootID(t)
	do(t, b.driver(t), power.Off)
	dead, err := power.New(power.Config{Driver: power.DriverCommand, On: []string{"true"}, Off: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	var steps []power.Step
	out, err := power.Recover(context.Background(), dead, b.waitBack, old,
		power.RecoverOptions{Attempts: 3, WaitTimeout: 300 * time.Millisecond, Step: func(s power.Step) { steps = append(steps, s) }})
	if !errors.Is(err, power.ErrGaveUp) || out.Recovered || out.Attempts != 3 {
		t.Fatalf("recover: %+v %v", out, err)
	}
	want := []string{power.StepCycle, power.StepWait, power.StepCycle, power.StepWait, power.StepCycle, power.StepWait, power.StepGaveUp}
	if got := stepKinds(steps); !slices.Equal(got, want) || steps[1].Err == "" || len(out.Steps) != len(want) {
		t.Fatalf("steps %v (%+v)", got, steps)
	}

	none, _ := power.New(power.Config{})
	out, err = power.Recover(context.Background(), none, b.waitBack, old, power.RecoverOptions{})
	if !errors.Is(err, power.ErrNoPower) || out.Attempts != 1 || len(out.Steps) != 1 {
		t.Fatalf("recover without power control: %+v %v", out, err)
	}
}

func stepKinds(steps []power.Step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.Kind)
	}
	return out
}

// TestConsoleRecordedAcrossPowerCycle: the console of a board reset by
// the power driver is in its console log from the first line its boot
// loader prints, because the recorder stays on the line (the board's
// serial adapter) while the board resets.
func TestConsoleRecordedAcrossPowerCycle(t *testing.T) {
	b := newSimBoard(t)
	d := b.driver(t, b.script, "reset")
	log, err := consolelog.Open(t.TempDir(), consolelog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	// The recorder: the line's console text (outside the agent's frames)
	// into the log, as the service keeps it.
	ep := seriallink.NewEndpoint(b.master, seriallink.Config{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(log, ep.Console())
	}()
	defer func() { ep.Close(); <-copied }()

	do(t, d, power.On)
	before := b.bootID(t)
	mark := time.Now()
	do(t, d, power.Cycle)
	back := b.bootID(t)
	if back == before {
		t.Fatalf("the board still runs boot %s after the reset", back)
	}
	defer func() {
		if t.Failed() {
			all, _ := log.Since(time.Time{})
			t.Logf("the whole record:\n%q", all)
		}
	}()
	testenv.Eventually(t, "the boot's console in the log", func() bool {
		lines, err := log.Since(mark)
		return err == nil && strings.Contains(string(consolelog.Text(lines)), "starting the agent")
	})
	lines, err := log.Since(mark)
	if err != nil {
		t.Fatal(err)
	}
	var first int = -1
	for i, l := range lines {
		if strings.Contains(l.Text, "sim-boot: boot 2, booting boardlinkd") {
			first = i
			break
		}
	}
	if first < 0 || !lines[first].Time.After(mark) {
		t.Fatalf("the boot's first line is not in the record since the cycle (boot %s):\n%s", back, consolelog.Text(lines))
	}
	t.Logf("recorded since the power cycle:\n%s", consolelog.Text(lines))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
