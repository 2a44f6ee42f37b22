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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitStatus(err, os.Stderr))
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
