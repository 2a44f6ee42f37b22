package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/proto"
)

func newExecCmd(g *globals) *cobra.Command {
	var (
		req     dispatcher.ExecRequest
		env     []string
		noStdin bool
		tty     bool
	)
	cmd := &cobra.Command{
		Use:   "exec BOARD [flags] -- ARGV...",
		Short: "Run a command on a board and exit with its exit code",
		Long: `exec runs ARGV on the board, directly (no shell unless --shell), and
streams its stdout and stderr to yours, separately and byte for byte. Your
stdin is sent to the command unless -n is given.

Exit status:
  N        the command's own exit code
  128+N    the command was killed by signal N
  124      the command ran past --timeout and was killed
  127      the command was not found on the board
  255      the link or the agent failed
  2        the command line was wrong

Interrupting boardlink (Ctrl-C) sends TERM to the command's process group
on the board and exits with its status. Without --detach, the command is
also killed when the connection drops.

With -t the command runs on a pseudo-terminal on the board, joined to
yours as 'boardlink shell' does it (raw mode, window size, Ctrl-C typed
to the board, the escape ~. after Enter); its stdout and stderr then come
together on stdout.

Through the lab service (--server URL, $BOARDLINK_SERVER) the command runs
on the service's connection to the board, under the lease of
$BOARDLINK_LEASE if set; stdin and -t go over the service's exec stream.`,
		Example: `  boardlink exec ws://127.0.0.1:7207 -- uname -a
  boardlink exec serial:///dev/ttyUSB0 --timeout 30s -- ./run-tests --fast
  boardlink exec ws://10.77.0.2:7207 --shell -- 'dmesg | tail -n 20'
  echo hello | boardlink exec ws://127.0.0.1:7207 -- tr a-z A-Z
  boardlink exec -t ws://127.0.0.1:7207 -- top`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return &usageError{fmt.Errorf("exec needs BOARD and a command after -- (see '%s --help')", cmd.CommandPath())}
			}
			if dash := cmd.ArgsLenAtDash(); dash > 1 {
				return &usageError{fmt.Errorf("exec takes one BOARD before --, got %q", args[:dash])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var err error
			if req.Env, err = parseEnv(env); err != nil {
				return err
			}
			if req.Timeout < 0 {
				return &usageError{fmt.Errorf("--timeout must not be negative")}
			}
			req.Argv = args[1:]
			if tty {
				if req.Detach {
					return &usageError{errors.New("-t and --detach: nothing could take up the terminal of a detached command")}
				}
				sr := dispatcher.ShellRequest{Argv: req.Argv, Shell: req.Shell, Env: req.Env, Cwd: req.Cwd,
					Timeout: req.Timeout, KillSignal: req.KillSignal}
				if noStdin {
					sr.Stdin = strings.NewReader("") // typed: Ctrl-D
				}
				return runTerminal(cmd, g, args[0], sr)
			}
			req.Stdout, req.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if !noStdin {
				req.Stdin = cmd.InOrStdin()
			}
			if g.serverURL() != "" {
				return g.execThroughService(ctx, args[0], req)
			}
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			res, err := c.Exec(ctx, req)
			if err != nil {
				return execError(err)
			}
			return execStatus(res, req.Timeout)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&req.Timeout, "timeout", 0, "kill the command's process group after this long (exit 124); 0: no limit")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable, KEY=VALUE (repeatable)")
	f.StringVar(&req.Cwd, "cwd", "", "working directory on the board")
	f.BoolVar(&req.Shell, "shell", false, "run ARGV[0] as a /bin/sh -c script (ARGV[1:] become $0, $1, ...)")
	f.BoolVar(&req.Detach, "detach", false, "keep the command running if the connection drops")
	f.StringVar(&req.KillSignal, "kill-signal", "", "signal sent on timeout before KILL (default TERM)")
	f.BoolVarP(&noStdin, "no-stdin", "n", false, "do not send stdin to the command")
	f.BoolVarP(&tty, "tty", "t", false, "run the command on a terminal on the board, joined to yours (see 'boardlink shell')")
	return cmd
}

// execThroughService runs req on board through the lab service, under
// the lease of $BOARDLINK_LEASE if set: with stdin on the service's exec
// stream, without it (-n) in one request.
func (g *globals) execThroughService(ctx context.Context, board string, req dispatcher.ExecRequest) error {
	switch {
	case req.Detach:
		return &usageError{errors.New("--detach does not go through the lab service (--server, $BOARDLINK_SERVER)")}
	case req.Stdin == nil:
		return g.execViaServer(ctx, board, req)
	}
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	out, err := c.ExecStream(ctx, board, os.Getenv("BOARDLINK_LEASE"), service.ExecStreamRequest{ExecRequest: service.ExecRequest{
		Argv: req.Argv, Shell: req.Shell, Env: req.Env, Cwd: req.Cwd, TimeoutMs: req.Timeout.Milliseconds(), KillSignal: req.KillSignal}},
		service.ExecIO{Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr})
	return serverExecStatus(out, err, req.Timeout)
}

// serverExecStatus maps how a command run through the lab service ended
// to boardlink's exit status, as exec's; a command the service ended (its
// lease ended, the board was lost) says why.
func serverExecStatus(out service.ExecOutcome, err error, timeout time.Duration) error {
	if ae, ok := errors.AsType[*service.APIError](err); ok && ae.Status == http.StatusBadGateway && ae.Reason == string(proto.ReasonNotFound) {
		return &exitError{code: 127, err: err} // the board found no such command
	}
	if err != nil {
		return serviceFailure(err)
	}
	status := execStatus(out.Result, timeout)
	if out.Canceled == "" {
		return status
	}
	code := exitLink
	if ee, ok := errors.AsType[*exitError](status); ok {
		code = ee.code
	}
	return &exitError{code: code, err: fmt.Errorf("the lab service ended the command: %s", out.Canceled)}
}

// execError maps a failed exec or shell to boardlink's exit status.
func execError(err error) error {
	switch proto.ReasonOf(err) {
	case proto.ReasonNotFound: // as a shell does for a command it cannot find
		return &exitError{code: 127, err: err}
	case proto.ReasonInvalidParams:
		return &usageError{err}
	}
	return linkFailure(err)
}

func parseEnv(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	env := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, &usageError{fmt.Errorf("--env %q: want KEY=VALUE", kv)}
		}
		env[k] = v
	}
	return env, nil
}

// execStatus maps a command's final record to boardlink's exit status.
func execStatus(r proto.ExecResult, timeout time.Duration) error {
	switch {
	case r.TimedOut:
		return &exitError{code: exitTimeout, err: fmt.Errorf("command timed out after %s and was killed", timeout)}
	case r.SignalNum > 0:
		return &exitError{code: 128 + r.SignalNum, err: fmt.Errorf("command killed by signal %s", r.Signal)}
	case r.ExitCode != 0:
		return &exitError{code: r.ExitCode}
	}
	return nil
}
