// Command boardlinkd is the boardlink agent that runs on a board. See
// `boardlinkd --help`.
package main

import (
	"context"
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
		fmt.Fprintln(os.Stderr, "boardlinkd:", err)
		os.Exit(2)
	}
}

// run parses args and runs the agent until ctx is canceled (SIGINT or
// SIGTERM in main), then shuts it down cleanly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := newCommand(stdout, stderr)
	cmd.SetArgs(args)
	return cmd.ExecuteContext(ctx)
}
