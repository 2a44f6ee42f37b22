package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
)

func newWaitCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait BOARD [--timeout D]",
		Short: "Wait until a board answers, as adb wait-for-device",
		Long: `wait connects to BOARD again and again until its agent answers and a
session opens: for a board being powered on, flashed or booted, or an
agent just started in the background. It shows how long it has waited and
why the last attempt failed, and prints the board's id and boot once it is
up.

What waiting cannot mend ends it at once: a malformed address, a board
whose key is not the one pinned, a token the board refuses.

Exit status: 0 the board answered; 124 not within --timeout; 2 a usage
error; 130 after Ctrl-C; 255 the board refused the session.`,
		Example: `  boardlinkd --board sim --state-dir /tmp/board1 --token-file /tmp/lab.token & boardlink wait 127.0.0.1
  boardlink wait board1 --timeout 5m && boardlink exec board1 -- uname -a`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return &usageError{errors.New("--timeout must be positive")}
			}
			ctx := cmd.Context()
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var show waitShow
			start := time.Now()
			spin := startSpinner(cmd.ErrOrStderr(), fmt.Sprintf("waiting for %s to answer (up to %s)", args[0], timeout),
				func() string { return show.status(nil) })
			c, err := g.connect(wctx, args[0], func(ctx context.Context, addr string, opts dispatcher.DialOptions) (*dispatcher.Client, error) {
				return dispatcher.DialWait(ctx, addr, opts, dispatcher.WaitOptions{Progress: show.set})
			})
			spin.end()
			switch {
			case ctx.Err() != nil:
				return interrupted(ctx, "%s had not answered after %s", args[0], seconds(time.Since(start)))
			case errors.Is(err, context.DeadlineExceeded):
				return &exitError{code: exitTimeout, err: fmt.Errorf("%s did not answer within %s: %w", args[0], timeout, errors.Unwrap(err))}
			case err != nil:
				return err
			}
			defer c.Close()
			h := c.Hello()
			info, err := c.Info(ctx)
			if err != nil {
				return linkFailure(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is up after %s: boot %s, agent %s\n", h.BoardID, seconds(time.Since(start)), info.BootID, info.Agent)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait")
	return cmd
}
