package power

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// outputKeep is how much of a command's output a CommandError keeps: its
// end, where a tool says what went wrong.
const outputKeep = 4 << 10

// waitDelay bounds how long a command's output is still read once it
// exited: a daemon it started in the background (a board's process, a
// socat) may hold the pipe for ever.
const waitDelay = 2 * time.Second

// CommandError is a power command that failed: it exited non-zero, could
// not start, or ran past its timeout (then it wraps
// context.DeadlineExceeded).
type CommandError struct {
	Action Action
	Argv   []string
	Output string // the end of its stdout and stderr, interleaved
	Err    error
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("power %s: %s: %v", e.Action, strings.Join(e.Argv, " "), e.Err)
	if out := strings.TrimSpace(e.Output); out != "" {
		msg += ": " + out
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

// commandDriver runs the configured command of each action.
type commandDriver struct {
	on, off, cycle []string
	timeout        time.Duration
}

func (d *commandDriver) Name() string { return DriverCommand }

func (d *commandDriver) Do(ctx context.Context, a Action) error {
	switch a {
	case On:
		return d.run(ctx, a, d.on)
	case Off:
		return d.run(ctx, a, d.off)
	case Cycle:
		if len(d.cycle) > 0 {
			return d.run(ctx, a, d.cycle)
		}
		if err := d.run(ctx, Off, d.off); err != nil {
			return err
		}
		return d.run(ctx, On, d.on)
	}
	_, err := ParseAction(string(a))
	return err
}

// run runs argv in a process group of its own, killed whole when the
// timeout or ctx ends. What it leaves running in the background must not
// need the group: start a board's daemon with setsid.
func (d *commandDriver) run(ctx context.Context, a Action, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	var out tail
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w after %v: %w", ctx.Err(), d.timeout, err)
	}
	// A command that exited 0 but left its output open past waitDelay
	// did its job.
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		return &CommandError{Action: a, Argv: argv, Output: out.String(), Err: err}
	}
	return nil
}

// tail keeps the last outputKeep bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - outputKeep; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
