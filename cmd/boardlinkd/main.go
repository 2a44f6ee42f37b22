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
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		code := 2
		if e, ok := errors.AsType[*exitError](err); ok {
			code, err = e.code, e.err
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "boardlinkd:", err)
		}
		os.Exit(code)
	}
}

// run parses args and runs the board until ctx is canceled (SIGINT or
// SIGTERM in main), then shuts it down cleanly. An *exitError says which
// status to exit with.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return newCommand(args, stdout, stderr).ExecuteContext(ctx)
}

// exitError makes boardlinkd exit with code rather than 2; err, if not
// nil, is printed first.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }
