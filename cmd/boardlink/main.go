// Command boardlink is the host side of boardlink: it finds boards and
// drives them through their agent. See `boardlink --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signalContext()
	// afterSignal before stop, which cancels ctx too.
	err := afterSignal(ctx, run(ctx, os.Args[1:], os.Stdout, os.Stderr))
	stop()
	os.Exit(exitStatus(err, os.Stderr))
}

// signalError is the cause of the context of a run that SIGINT (Ctrl-C)
// or SIGTERM stopped.
type signalError struct{ sig os.Signal }

func (e *signalError) Error() string { return "interrupted by " + e.sig.String() }

// signalContext is canceled by the first SIGINT or SIGTERM, with a
// *signalError as its cause. Every verb then stops at once and says what
// it left; a second signal has its default effect and ends the process
// on the spot.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			signal.Stop(sigs)
			cancel(&signalError{sig})
		case <-done:
		}
	}()
	return ctx, func() {
		close(done)
		signal.Stop(sigs)
		cancel(nil)
	}
}

// interruptStatus is the exit status after ctx was interrupted: 128+N for
// signal N, so 130 after Ctrl-C (and when a test cancels ctx).
func interruptStatus(ctx context.Context) int {
	if se, ok := context.Cause(ctx).(*signalError); ok {
		if n, ok := se.sig.(syscall.Signal); ok {
			return 128 + int(n)
		}
	}
	return 128 + int(syscall.SIGINT)
}

// interrupted is how a verb ends when ctx was interrupted: the exit
// status of the signal, and a message that says what was left and how
// to go on.
func interrupted(ctx context.Context, format string, args ...any) error {
	return &exitError{code: interruptStatus(ctx), err: fmt.Errorf("interrupted: "+format, args...)}
}

// afterSignal gives a run that a signal stopped the signal's exit status,
// whatever its verb returned (a verb that runs until interrupted, as
// console and ls --watch do, returns nil). A verb's own interrupted
// error, which says more, is kept.
func afterSignal(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	if ee, ok := errors.AsType[*exitError](err); ok && ee.code == interruptStatus(ctx) {
		return err
	}
	if err == nil {
		return &exitError{code: interruptStatus(ctx)}
	}
	return &exitError{code: interruptStatus(ctx), err: errors.New("interrupted")}
}

// run is the whole CLI: it parses args and runs one verb. Tests call it
// in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runWithStdin(ctx, os.Stdin, args, stdout, stderr)
}

// runWithStdin is run with stdin given, for exec's input.
func runWithStdin(ctx context.Context, stdin io.Reader, args []string, stdout, stderr io.Writer) error {
	root := newRoot(stdout, stderr)
	root.SetIn(stdin)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// exitError carries a process exit status through run: the board's exit
// code for exec, or one of the CLI's own.
type exitError struct {
	code int
	err  error // printed unless nil
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// Exit statuses of the CLI itself (exec passes the board's through).
const (
	exitUsage   = 2
	exitTimeout = 124
	exitLink    = 255
)

// exitStatus prints err (if it says something) and returns the status.
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "boardlink:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "boardlink:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return 1
}
