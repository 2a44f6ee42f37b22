package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// patience bounds every wait so that a bug fails the test instead of
// hanging it; it is never what a test asserts.
const patience = 60 * time.Second

func newExecs(t *testing.T, opts ExecOptions) *Execs {
	t.Helper()
	if opts.DefaultGrace == 0 {
		opts.DefaultGrace = 200 * time.Millisecond
	}
	m := NewExecs(opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return m
}

func start(t *testing.T, m *Execs, p proto.ExecStartParams, eio ExecIO) *Command {
	t.Helper()
	c, err := m.Start(p, eio)
	if err != nil {
		t.Fatalf("Start(%q): %v", p.Argv, err)
	}
	return c
}

func wait(t *testing.T, m *Execs, c *Command) proto.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	res, err := m.Wait(ctx, c.ID())
	if err != nil {
		t.Fatalf("Wait(%s): %v", c.ID(), err)
	}
	if res != c.Result() {
		t.Errorf("Wait and Result disagree: %+v vs %+v", res, c.Result())
	}
	return res
}

func run(t *testing.T, m *Execs, p proto.ExecStartParams, eio ExecIO) proto.ExecResult {
	t.Helper()
	return wait(t, m, start(t, m, p, eio))
}

func sh(script string, args ...string) proto.ExecStartParams {
	return proto.ExecStartParams{Argv: append([]string{script}, args...), Shell: true}
}

// skipIfIgnored skips a test of signal name when the test runs with that
// signal ignored (nohup, a background job): commands inherit that.
func skipIfIgnored(t *testing.T, name string) {
	t.Helper()
	if sig, ok := signalByName(name); ok && signal.Ignored(sig) {
		t.Skipf("SIG%s is ignored by this test process, and so by its commands", name)
	}
}

// killGroupOnCleanup makes sure nothing a test leaves running survives it.
func killGroupOnCleanup(t *testing.T, pgid int) {
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
}

func TestExecExitStatus(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	tests := []struct {
		name      string
		p         proto.ExecStartParams
		code      int
		signal    string
		signalNum int
	}{
		{name: "exit 0", p: proto.ExecStartParams{Argv: []string{"true"}}, code: 0},
		{name: "exit 1", p: proto.ExecStartParams{Argv: []string{"false"}}, code: 1},
		{name: "exit 42 via argv", p: proto.ExecStartParams{Argv: []string{"sh", "-c", "exit 42"}}, code: 42},
		{name: "exit 42 via shell", p: sh("exit 42"), code: 42},
		{name: "shell args are $0 $1", p: sh(`[ "$0" = a ] && [ "$1" = "b c" ] && exit 7`, "a", "b c"), code: 7},
		{name: "killed by KILL", p: sh("kill -9 $$"), code: -1, signal: "KILL", signalNum: 9},
		{name: "killed by SEGV", p: sh("kill -SEGV $$"), code: -1, signal: "SEGV", signalNum: 11},
		{name: "killed by TERM", p: sh("kill -TERM $$"), code: -1, signal: "TERM", signalNum: 15},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := start(t, m, tt.p, ExecIO{})
			if c.PID() <= 0 {
				t.Errorf("PID() = %d", c.PID())
			}
			res := wait(t, m, c)
			if res.ExitCode != tt.code || res.Signal != tt.signal || res.SignalNum != tt.signalNum {
				t.Errorf("exit %d signal %q (%d), want exit %d signal %q (%d)",
					res.ExitCode, res.Signal, res.SignalNum, tt.code, tt.signal, tt.signalNum)
			}
			if res.TimedOut || res.Canceled {
				t.Errorf("TimedOut %v Canceled %v, want neither", res.TimedOut, res.Canceled)
			}
			if res.ID != c.ID() || res.Started.IsZero() || res.Ended.Before(res.Started) || res.DurationMs < 0 {
				t.Errorf("bad record: %+v", res)
			}
		})
	}
}

func TestExecStartErrors(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("not a program"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newExecs(t, ExecOptions{})
	tests := []struct {
		name   string
		p      proto.ExecStartParams
		reason proto.Reason
		msg    string
	}{
		{name: "no such executable", p: proto.ExecStartParams{Argv: []string{"boardlink-no-such-program"}},
			reason: proto.ReasonNotFound, msg: "boardlink-no-such-program"},
		{name: "no such path", p: proto.ExecStartParams{Argv: []string{filepath.Join(dir, "nope")}},
			reason: proto.ReasonNotFound, msg: "no such file"},
		{name: "no such cwd", p: proto.ExecStartParams{Argv: []string{"true"}, Cwd: filepath.Join(dir, "nodir")},
			reason: proto.ReasonInvalidParams, msg: "cwd"},
		{name: "cwd is a file", p: proto.ExecStartParams{Argv: []string{"true"}, Cwd: plain},
			reason: proto.ReasonInvalidParams, msg: "not a directory"},
		{name: "not executable", p: proto.ExecStartParams{Argv: []string{plain}},
			reason: proto.ReasonInvalidParams, msg: "permission denied"},
		{name: "empty argv", p: proto.ExecStartParams{}, reason: proto.ReasonInvalidParams, msg: "argv"},
		{name: "bad kill signal", p: proto.ExecStartParams{Argv: []string{"true"}, KillSignal: "BOGUS"},
			reason: proto.ReasonInvalidParams, msg: "kill_signal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := m.Start(tt.p, ExecIO{})
			if err == nil {
				t.Fatalf("Start succeeded (pid %d)", c.PID())
			}
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Reason() != tt.reason || !strings.Contains(pe.Error(), tt.msg) {
				t.Fatalf("err = %v, want reason %s with a message containing %q", err, tt.reason, tt.msg)
			}
		})
	}
	if n := len(m.Log(0)); n != 0 {
		t.Errorf("failed starts left %d log entries", n)
	}
}

func TestExecStreams(t *testing.T) {
	all := make([]byte, 256*1024) // every byte value, 1024 times, past any pipe buffer
	for i := range all {
		all[i] = byte(i)
	}
	file := filepath.Join(t.TempDir(), "bytes")
	if err := os.WriteFile(file, all, 0o644); err != nil {
		t.Fatal(err)
	}
	m := newExecs(t, ExecOptions{})
	tests := []struct {
		name     string
		p        proto.ExecStartParams
		stdin    io.Reader
		out, err []byte
	}{
		{name: "separate streams", p: sh("printf out; printf err >&2; printf more"), out: []byte("outmore"), err: []byte("err")},
		{name: "binary stdout", p: proto.ExecStartParams{Argv: []string{"cat", file}}, out: all},
		{name: "binary stderr", p: sh(`cat "$0" >&2`, file), err: all},
		{name: "binary stdin to stdout", p: proto.ExecStartParams{Argv: []string{"cat"}}, stdin: bytes.NewReader(all), out: all},
		{name: "no stdin reads empty", p: proto.ExecStartParams{Argv: []string{"cat"}}},
		{name: "env added", p: proto.ExecStartParams{Argv: []string{"sh", "-c", `printf %s "$BL_X"`}, Env: map[string]string{"BL_X": "a=b c"}},
			out: []byte("a=b c")},
		{name: "env keeps the agent's", p: proto.ExecStartParams{Argv: []string{"sh", "-c", `printf %s "$HOME"`}}, out: []byte(os.Getenv("HOME"))},
		{name: "env cleared", p: proto.ExecStartParams{Argv: []string{"/usr/bin/env"}, ClearEnv: true, Env: map[string]string{"ONLY": "1"}},
			out: []byte("ONLY=1\n")},
		{name: "env cleared and empty", p: proto.ExecStartParams{Argv: []string{"/usr/bin/env"}, ClearEnv: true}},
		{name: "cwd", p: proto.ExecStartParams{Argv: []string{"pwd"}, Cwd: "/"}, out: []byte("/\n")},
		{name: "relative program in cwd", p: proto.ExecStartParams{Argv: []string{"./true"}, Cwd: "/bin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			res := run(t, m, tt.p, ExecIO{Stdin: tt.stdin, Stdout: &out, Stderr: &errb})
			if res.ExitCode != 0 {
				t.Fatalf("exit %d signal %q, stderr %q", res.ExitCode, res.Signal, errb.Bytes())
			}
			if !bytes.Equal(out.Bytes(), tt.out) || !bytes.Equal(errb.Bytes(), tt.err) {
				t.Errorf("stdout %d bytes, stderr %d bytes (%.40q, %.40q), want %d and %d",
					out.Len(), errb.Len(), out.Bytes(), errb.Bytes(), len(tt.out), len(tt.err))
			}
			if res.StdoutBytes != int64(len(tt.out)) || res.StderrBytes != int64(len(tt.err)) {
				t.Errorf("counted %d/%d bytes, want %d/%d", res.StdoutBytes, res.StderrBytes, len(tt.out), len(tt.err))
			}
		})
	}
}

func TestExecConcurrent(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	const n = 10
	cmds := make([]*Command, n)
	outs := make([]bytes.Buffer, n)
	errs := make([]bytes.Buffer, n)
	for i := range n {
		cmds[i] = start(t, m, sh(`i=0; while [ $i -lt 200 ]; do echo "out $0"; echo "err $0" >&2; i=$((i+1)); done; exit $0`,
			strconv.Itoa(i)), ExecIO{Stdout: &outs[i], Stderr: &errs[i]})
	}
	ids := map[string]bool{}
	for i, c := range cmds {
		res := wait(t, m, c)
		if res.ExitCode != i {
			t.Errorf("command %d: exit %d", i, res.ExitCode)
		}
		if want := strings.Repeat(fmt.Sprintf("out %d\n", i), 200); outs[i].String() != want {
			t.Errorf("command %d: stdout is not its own: %.60q", i, outs[i].String())
		}
		if want := strings.Repeat(fmt.Sprintf("err %d\n", i), 200); errs[i].String() != want {
			t.Errorf("command %d: stderr is not its own: %.60q", i, errs[i].String())
		}
		if ids[c.ID()] {
			t.Errorf("id %s used twice", c.ID())
		}
		ids[c.ID()] = true
	}
}

// failingWriter accepts its first write and then fails like a dead
// connection.
type failingWriter struct{ writes, bytes int }

func (w *failingWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > 1 {
		return 0, errors.New("connection lost")
	}
	w.bytes += len(p)
	return len(p), nil
}

func TestExecFailingWriterDoesNotBlock(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	const size = 4 << 20 // far more than a pipe holds: the command blocks unless drained
	var out, errw failingWriter
	res := run(t, m, sh(`head -c $0 /dev/zero; head -c $0 /dev/zero >&2; exit 3`, strconv.Itoa(size)),
		ExecIO{Stdout: &out, Stderr: &errw})
	if res.ExitCode != 3 {
		t.Fatalf("exit %d signal %q, want 3: the command did not run to its end", res.ExitCode, res.Signal)
	}
	if res.StdoutBytes != size || res.StderrBytes != size {
		t.Errorf("counted %d/%d bytes, want %d each", res.StdoutBytes, res.StderrBytes, size)
	}
	if out.writes != 2 || errw.writes != 2 {
		t.Errorf("failed writers were called %d/%d times, want 2 each (one success, one failure)", out.writes, errw.writes)
	}
}

// gateWriter blocks every write until released: a client that stopped
// granting flow-control credit.
type gateWriter struct {
	gate    chan struct{}
	waiting atomic.Bool // a write has begun
	buf     bytes.Buffer
}

func (w *gateWriter) Write(p []byte) (int, error) {
	w.waiting.Store(true)
	<-w.gate
	return w.buf.Write(p)
}

// A slow reader holds the output back past the drain delay; what the
// command wrote must still arrive in full.
func TestExecSlowWriterLosesNothing(t *testing.T) {
	// A drain delay that has passed by the time the command exited.
	m := newExecs(t, ExecOptions{DrainDelay: time.Nanosecond})
	const size = 60000 // fits in the pipe, so the command exits while its output waits
	w := &gateWriter{gate: make(chan struct{})}
	c := start(t, m, proto.ExecStartParams{Argv: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}}, ExecIO{Stdout: w})
	testenv.Eventually(t, "the writer to block and the command to exit", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return w.waiting.Load() && c.exited
	})
	close(w.gate) // the drain deadline passed a nanosecond after the exit

	res := wait(t, m, c)
	if res.ExitCode != 0 || res.StdoutBytes != size || w.buf.Len() != size {
		t.Fatalf("exit %d, counted %d, delivered %d bytes; want 0, %d, %d", res.ExitCode, res.StdoutBytes, w.buf.Len(), size, size)
	}
}

func TestExecBackgroundChildDoesNotHoldResult(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	var out testenv.Buffer
	c := start(t, m, sh(`sleep 1000 & echo $!; exit 5`), ExecIO{Stdout: &out})
	killGroupOnCleanup(t, c.PID())
	res := wait(t, m, c)
	if res.ExitCode != 5 {
		t.Fatalf("exit %d signal %q, want 5", res.ExitCode, res.Signal)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("background pid: %v (stdout %q)", err, out.String())
	}
	if proctest.Gone(pid) {
		t.Errorf("the background child %d is gone; the test proves nothing", pid)
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	tests := []struct {
		name       string
		script     string
		killSignal string
		want       string // the leader's death
	}{
		{name: "TERM", script: `sleep 1000 & echo $!; wait`, want: "TERM"},
		{name: "QUIT", script: `sleep 1000 & echo $!; wait`, killSignal: "QUIT", want: "QUIT"},
		// Only the SIGKILL after the grace period stops this grandchild.
		{name: "ignored TERM escalates to KILL", script: `(trap "" TERM; exec sleep 1000) & echo $!; wait`, want: "TERM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			skipIfIgnored(t, tt.killSignal)
			var out testenv.Buffer
			p := sh(tt.script)
			p.TimeoutMs, p.KillSignal, p.GraceMs = 300, tt.killSignal, 100
			c := start(t, m, p, ExecIO{Stdout: &out})
			killGroupOnCleanup(t, c.PID())
			res := wait(t, m, c)
			if !res.TimedOut || res.Canceled || res.ExitCode != -1 || res.Signal != tt.want {
				t.Errorf("TimedOut %v Canceled %v exit %d signal %q; want a timeout, signal %s",
					res.TimedOut, res.Canceled, res.ExitCode, res.Signal, tt.want)
			}
			grandchild, err := strconv.Atoi(strings.TrimSpace(out.String()))
			if err != nil {
				t.Fatalf("grandchild pid: %v (stdout %q)", err, out.String())
			}
			testenv.Eventually(t, "the grandchild to die", func() bool { return proctest.Gone(grandchild) })
			testenv.Eventually(t, "the process group to die", func() bool { return proctest.GroupGone(c.PID()) })
		})
	}
}

func TestExecCancel(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	tests := []struct {
		name     string
		script   string // prints "ready" once its traps are set
		before   string // a signal sent first with Cancel
		signal   string
		code     int
		want     string // the leader's death, "" for an exit
		canceled bool
	}{
		{name: "default TERM", script: `echo ready; exec sleep 1000`, want: "TERM", code: -1, canceled: true},
		{name: "TERM", script: `echo ready; exec sleep 1000`, signal: "TERM", want: "TERM", code: -1, canceled: true},
		{name: "KILL", script: `echo ready; exec sleep 1000`, signal: "KILL", want: "KILL", code: -1, canceled: true},
		{name: "HUP", script: `echo ready; exec sleep 1000`, signal: "HUP", want: "HUP", code: -1, canceled: true},
		{name: "TERM ignored escalates to KILL", script: `trap "" TERM; echo ready; sleep 1000`, signal: "TERM",
			want: "KILL", code: -1, canceled: true},
		// TERM is followed by CONT, so a stopped command runs its handler
		// instead of waiting for the SIGKILL.
		{name: "TERM to a stopped command", script: `trap "exit 9" TERM; echo ready; while :; do sleep 0.05; done`,
			before: "STOP", signal: "TERM", code: 9, canceled: true},
		{name: "USR1 is only delivered", script: `trap "exit 3" USR1; echo ready; while :; do sleep 0.05; done`,
			signal: "USR1", code: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			skipIfIgnored(t, tt.signal)
			var out testenv.Buffer
			c := start(t, m, sh(tt.script), ExecIO{Stdout: &out})
			killGroupOnCleanup(t, c.PID())
			testenv.Eventually(t, "the command to be ready", func() bool { return strings.Contains(out.String(), "ready") })
			if tt.before != "" {
				if err := m.Cancel(c.ID(), tt.before); err != nil {
					t.Fatalf("Cancel(%s): %v", tt.before, err)
				}
			}
			if err := m.Cancel(c.ID(), tt.signal); err != nil {
				t.Fatalf("Cancel: %v", err)
			}
			res := wait(t, m, c)
			if res.ExitCode != tt.code || res.Signal != tt.want || res.Canceled != tt.canceled || res.TimedOut {
				t.Errorf("exit %d signal %q Canceled %v TimedOut %v; want exit %d signal %q Canceled %v",
					res.ExitCode, res.Signal, res.Canceled, res.TimedOut, tt.code, tt.want, tt.canceled)
			}
			testenv.Eventually(t, "the process group to die", func() bool { return proctest.GroupGone(c.PID()) })
			if err := m.Cancel(c.ID(), tt.signal); !proto.IsReason(err, proto.ReasonNotFound) {
				t.Errorf("Cancel after the end = %v, want not_found", err)
			}
		})
	}

	if err := m.Cancel("c0-0000", ""); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Errorf("Cancel of an unknown id = %v, want not_found", err)
	}
	c := start(t, m, proto.ExecStartParams{Argv: []string{"sleep", "1000"}}, ExecIO{})
	if err := m.Cancel(c.ID(), "SEGV"); !proto.IsReason(err, proto.ReasonInvalidParams) {
		t.Errorf("Cancel with SEGV = %v, want invalid_params", err)
	}
	m.Kill(c.ID())
	if res := wait(t, m, c); !res.Canceled || res.Signal != "TERM" {
		t.Errorf("after Kill: Canceled %v signal %q, want canceled by TERM", res.Canceled, res.Signal)
	}
	m.Kill("c0-0000") // unknown: ignored
	m.Kill(c.ID())    // finished: ignored
}

func TestExecWait(t *testing.T) {
	m := newExecs(t, ExecOptions{})
	if _, err := m.Wait(context.Background(), "c0-0000"); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Errorf("Wait for an unknown id = %v, want not_found", err)
	}
	c := start(t, m, proto.ExecStartParams{Argv: []string{"sleep", "1000"}}, ExecIO{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Wait(ctx, c.ID()); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a canceled context = %v, want context.Canceled", err)
	}
	select {
	case <-c.Done():
		t.Error("the command ended because a Wait gave up")
	default:
	}
}

func TestExecShutdown(t *testing.T) {
	m := newExecs(t, ExecOptions{DefaultGrace: 300 * time.Millisecond})
	var ready, withChild testenv.Buffer
	cmds := []*Command{
		start(t, m, proto.ExecStartParams{Argv: []string{"sleep", "1000"}}, ExecIO{}),
		start(t, m, sh(`trap "" TERM; echo ready; sleep 1000`), ExecIO{Stdout: &ready}),
		start(t, m, sh(`trap "" TERM; sleep 1000 & echo $!; wait`), ExecIO{Stdout: &withChild}),
	}
	for _, c := range cmds {
		killGroupOnCleanup(t, c.PID())
	}
	detached := start(t, m, proto.ExecStartParams{Argv: []string{"sleep", "1000"}, Detach: true}, ExecIO{})
	killGroupOnCleanup(t, detached.PID())
	if !detached.Detached() || cmds[0].Detached() {
		t.Error("Detached() does not reflect the request")
	}
	cmds = append(cmds, detached)
	testenv.Eventually(t, "the commands to be ready", func() bool {
		return strings.Contains(ready.String(), "ready") && strings.Contains(withChild.String(), "\n")
	})
	grandchild, err := strconv.Atoi(strings.TrimSpace(withChild.String()))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range cmds {
		select {
		case <-c.Done():
		default:
			t.Fatalf("command %s not done after Shutdown", c.ID())
		}
		// The leaders are the agent's children and reaped: no polling.
		if err := syscall.Kill(c.PID(), 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("leader %d of %s: kill(pid, 0) = %v, want ESRCH", c.PID(), c.ID(), err)
		}
		if !c.Result().Canceled {
			t.Errorf("%s: not marked Canceled", c.ID())
		}
		testenv.Eventually(t, "the process group to die", func() bool { return proctest.GroupGone(c.PID()) })
	}
	testenv.Eventually(t, "the grandchild to die", func() bool { return proctest.Gone(grandchild) })

	if _, err := m.Start(proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{}); !proto.IsReason(err, proto.ReasonBusy) {
		t.Errorf("Start after Shutdown = %v, want busy", err)
	}
}

// A process that ignores TERM and outlives its leader is killed when
// Shutdown returns, not when the grace period ends.
func TestExecShutdownKillsStragglers(t *testing.T) {
	m := newExecs(t, ExecOptions{DefaultGrace: time.Hour})
	var out testenv.Buffer
	c := start(t, m, sh(`(trap "" TERM; exec sleep 1000) >/dev/null 2>&1 & echo $!; wait`), ExecIO{Stdout: &out})
	killGroupOnCleanup(t, c.PID())
	testenv.Eventually(t, "the grandchild's pid", func() bool { return strings.Contains(out.String(), "\n") })
	grandchild, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if res := c.Result(); res.Signal != "TERM" {
		t.Errorf("leader signal %q, want TERM", res.Signal)
	}
	testenv.Eventually(t, "the grandchild to die", func() bool { return proctest.Gone(grandchild) })
}

// When Shutdown's context ends first, everything still running is killed
// at once instead of after the grace period.
func TestExecShutdownContextEnds(t *testing.T) {
	m := newExecs(t, ExecOptions{DefaultGrace: time.Hour})
	var out testenv.Buffer
	c := start(t, m, sh(`trap "" TERM; echo ready; sleep 1000`), ExecIO{Stdout: &out})
	killGroupOnCleanup(t, c.PID())
	testenv.Eventually(t, "the command to be ready", func() bool { return strings.Contains(out.String(), "ready") })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	if res := wait(t, m, c); res.Signal != "KILL" {
		t.Errorf("signal %q, want KILL", res.Signal)
	}
	testenv.Eventually(t, "the process group to die", func() bool { return proctest.GroupGone(c.PID()) })
}
