package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
)

// leaseFlags are what a lease asks for.
type leaseFlags struct {
	selects []string
	boards  []string
	count   int
	span    time.Duration
	wait    time.Duration
	ttl     time.Duration
}

func (f *leaseFlags) add(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.selects, "select", nil, "only boards with this label, KEY=VALUE (model=M for the model; repeatable)")
	fs.StringArrayVar(&f.boards, "board", nil, "only this board (repeatable)")
	fs.IntVarP(&f.count, "count", "n", 0, "how many boards (default: every --board given, else 1)")
	fs.DurationVar(&f.span, "for", 0, "how long the lease lasts at most (default: the service's, 1h)")
	fs.DurationVar(&f.wait, "wait", time.Hour, "how long to wait in the queue (0: take the boards now or fail)")
	fs.DurationVar(&f.ttl, "ttl", 0, "how long the lease lives without a renewal (default: the service's, 14s)")
}

func (f *leaseFlags) request() (service.AcquireRequest, error) {
	sel, err := dispatcher.ParseSelector(f.selects)
	if err != nil {
		return service.AcquireRequest{}, &usageError{fmt.Errorf("--select: %w", err)}
	}
	if f.count < 0 || f.span < 0 || f.wait < 0 || f.ttl < 0 {
		return service.AcquireRequest{}, &usageError{errors.New("--count, --for, --wait and --ttl must not be negative")}
	}
	return service.AcquireRequest{Select: sel, Boards: f.boards, Count: f.count, ForMs: f.span.Milliseconds(),
		WaitMs: f.wait.Milliseconds(), TTLMs: f.ttl.Milliseconds()}, nil
}

// acquireFlags acquires the lease f asks for from the service.
func (g *globals) acquireFlags(ctx context.Context, f *leaseFlags) (service.Lease, *service.Client, error) {
	req, err := f.request()
	if err != nil {
		return service.Lease{}, nil, err
	}
	c, err := g.serviceClient()
	if err != nil {
		return service.Lease{}, nil, err
	}
	l, err := g.acquire(ctx, c, req)
	return l, c, err
}

// acquire asks for a lease and waits until it is granted, telling its
// place in the queue on stderr as it changes.
func (g *globals) acquire(ctx context.Context, c *service.Client, req service.AcquireRequest) (service.Lease, error) {
	l, err := c.Acquire(ctx, req)
	if err != nil {
		return l, serviceFailure(err)
	}
	last := 0
	l, err = c.WaitGranted(ctx, l, func(l service.Lease) {
		if l.Position != last {
			last = l.Position
			fmt.Fprintf(g.stderr, "boardlink: lease %s: waiting for %d board(s): position %d in the queue\n", l.ID, l.Count, l.Position)
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			release(context.WithoutCancel(ctx), c, l.ID)
			return l, interrupted(ctx, "left the queue (lease %s released)", l.ID)
		}
		return l, serviceFailure(err)
	}
	return l, nil
}

// release ends a lease, bounded in time: the command is done, its
// result must not wait on the service.
func release(ctx context.Context, c *service.Client, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.Release(ctx, id)
	return err
}

func newLeaseCmd(g *globals) *cobra.Command {
	var f leaseFlags
	cmd := &cobra.Command{
		Use:   "lease [--select K=V]... [--count N] [--for D] -- COMMAND...",
		Short: "Hold boards of the lab service while a command runs",
		Long: `lease acquires boards from the lab service (--server or BOARDLINK_SERVER),
waiting its turn in the service's queue (first come, first served; its
place is printed on stderr), runs COMMAND with

  BOARDLINK_BOARDS     the boards' ids, comma-separated
  BOARDLINK_ADDRESSES  their addresses, in the same order
  BOARDLINK_LEASE      the lease's id (boardlink exec/power --server use it)
  BOARDLINK_SERVER     the service

in its environment, renews the lease while it runs, and releases it when
it ends, however it ends. SIGINT and SIGTERM are passed on to COMMAND.
Should boardlink itself be killed, the service ends the lease once it is
no longer renewed (within its TTL and a second: 15s by default) and
kills the commands run on its boards through the service.

Exit status: COMMAND's own (128+N when signal N killed it), 1 if the
service refused the lease or it was lost while COMMAND ran, 2 a wrong
command line, 255 the service could not be reached.`,
		Example: `  boardlink lease --select model=imx8 --count 2 --for 30m -- ./run-tests.sh
  boardlink lease --board sim-001 -- sh -c 'boardlink exec "$BOARDLINK_BOARDS" -- uname -a'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || cmd.ArgsLenAtDash() != 0 {
				return &usageError{fmt.Errorf("lease runs a command given after -- (see '%s --help'); or use lease acquire|renew|release|list", cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			l, c, err := g.acquireFlags(cmd.Context(), &f)
			if err != nil {
				return err
			}
			return g.runLeased(cmd, c, l, args)
		},
	}
	f.add(cmd.Flags())
	cmd.AddCommand(newLeaseAcquireCmd(g), newLeaseRenewCmd(g), newLeaseReleaseCmd(g), newLeaseListCmd(g))
	return cmd
}

// runLeased holds lease l while argv runs, and releases it.
func (g *globals) runLeased(cmd *cobra.Command, c *service.Client, l service.Lease, argv []string) error {
	ctx := cmd.Context()
	ttl := time.Duration(l.TTLMs) * time.Millisecond
	fmt.Fprintf(g.stderr, "boardlink: lease %s: boards %s (renewed every %v, until %s at most)\n",
		l.ID, strings.Join(l.Boards, ","), ttl/3, l.Until.Local().Format(time.DateTime))
	child := exec.Command(argv[0], argv[1:]...)
	child.Env = append(os.Environ(), "BOARDLINK_BOARDS="+strings.Join(l.Boards, ","),
		"BOARDLINK_ADDRESSES="+strings.Join(l.Addresses, ","), "BOARDLINK_LEASE="+l.ID,
		"BOARDLINK_SERVER="+g.serverURL())
	child.Stdin, child.Stdout, child.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
	if err := child.Start(); err != nil {
		return errors.Join(&exitError{code: 127, err: err}, release(context.WithoutCancel(ctx), c, l.ID))
	}
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	lost := make(chan error, 1)
	rctx, stopRenew := context.WithCancel(context.WithoutCancel(ctx))
	var renewing sync.WaitGroup
	renewing.Go(func() { renewLoop(rctx, c, l.ID, ttl, lost, g.warn) })
	var (
		waitErr  error
		lostErr  error
		signaled = ctx.Done()
	)
	for waitErr == nil {
		select {
		case waitErr = <-done:
			if waitErr == nil {
				waitErr = errDone
			}
		case <-signaled:
			signaled = nil
			if se, ok := context.Cause(ctx).(*signalError); ok {
				_ = child.Process.Signal(se.sig)
			} else {
				_ = child.Process.Signal(syscall.SIGINT)
			}
		case lostErr = <-lost:
			fmt.Fprintf(g.stderr, "boardlink: lease %s lost: %v; stopping the command\n", l.ID, lostErr)
			_ = child.Process.Signal(syscall.SIGTERM)
			lost = nil
		}
	}
	stopRenew()
	renewing.Wait()
	var relErr error
	if lostErr == nil {
		if relErr = release(context.WithoutCancel(ctx), c, l.ID); relErr != nil {
			g.warn(fmt.Sprintf("lease %s: release: %v (it ends by itself within %v)", l.ID, relErr, ttl))
		}
	}
	g.consoleHint(context.WithoutCancel(ctx), c, l)
	code := child.ProcessState.ExitCode()
	if ws, ok := child.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	switch {
	case lostErr != nil && code == 0:
		return &exitError{code: 1, err: fmt.Errorf("lease %s lost while the command ran: %w", l.ID, lostErr)}
	case code != 0:
		return &exitError{code: code}
	}
	return nil
}

// consoleHint says where the console text of the lease's span is, for
// each of its boards whose console the service records.
func (g *globals) consoleHint(ctx context.Context, c *service.Client, l service.Lease) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, id := range l.Boards {
		if b, err := c.Board(ctx, id); err == nil && b.Console {
			fmt.Fprintf(g.stderr, "boardlink: console of %s during the lease: boardlink --server %s console %s --since %s\n",
				id, g.serverURL(), id, l.Granted.UTC().Format(time.RFC3339))
		}
	}
}

// errDone marks a command that exited 0.
var errDone = errors.New("done")

// renewLoop renews lease id every third of its TTL until ctx ends. A
// lease the service no longer has is reported on lost; other failures
// are retried at the next turn.
func renewLoop(ctx context.Context, c *service.Client, id string, ttl time.Duration, lost chan<- error, warn func(string)) {
	t := time.NewTicker(max(ttl/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := c.Renew(ctx, id)
		var ae *service.APIError
		switch {
		case err == nil, ctx.Err() != nil:
		case errors.As(err, &ae) && (ae.Status == http.StatusGone || ae.Status == http.StatusNotFound):
			lost <- err
			return
		default:
			warn(fmt.Sprintf("lease %s: renew: %v", id, err))
		}
	}
}

func newLeaseAcquireCmd(g *globals) *cobra.Command {
	var f leaseFlags
	cmd := &cobra.Command{
		Use:   "acquire [--select K=V]... [--count N] [--for D] [--ttl D]",
		Short: "Acquire a lease and print it as JSON (renew it yourself)",
		Long: `acquire waits for a lease as 'boardlink lease' does and prints it as one JSON
object: id, boards, addresses, ttl_ms, expires. The lease then lives
only while renewed (boardlink lease renew ID) at least every ttl_ms;
ask a longer --ttl for a script that renews seldom.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, _, err := g.acquireFlags(cmd.Context(), &f)
			if err != nil {
				return err
			}
			return writeJSON(cmd.OutOrStdout(), l)
		},
	}
	f.add(cmd.Flags())
	return cmd
}

// leaseIDCmd is a lease subcommand that acts on one lease by id and
// prints the result as JSON.
func leaseIDCmd(g *globals, use, short string, do func(*service.Client, context.Context, string) (service.Lease, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " LEASE",
		Short: short,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.serviceClient()
			if err != nil {
				return err
			}
			l, err := do(c, cmd.Context(), args[0])
			if err != nil {
				return serviceFailure(err)
			}
			return writeJSON(cmd.OutOrStdout(), l)
		},
	}
}

func newLeaseRenewCmd(g *globals) *cobra.Command {
	return leaseIDCmd(g, "renew", "Renew a lease for another TTL, and print it as JSON", (*service.Client).Renew)
}

func newLeaseReleaseCmd(g *globals) *cobra.Command {
	return leaseIDCmd(g, "release", "Release a lease, and print it as JSON", (*service.Client).Release)
}

func newLeaseListCmd(g *globals) *cobra.Command {
	var ended int
	cmd := &cobra.Command{
		Use:   "list [--ended N]",
		Short: "List the open leases (and the last ended ones) as JSON",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.serviceClient()
			if err != nil {
				return err
			}
			ls, err := c.Leases(cmd.Context(), ended)
			if err != nil {
				return serviceFailure(err)
			}
			if ls == nil {
				ls = []service.Lease{}
			}
			return writeJSON(cmd.OutOrStdout(), map[string]any{"leases": ls})
		},
	}
	cmd.Flags().IntVar(&ended, "ended", 0, "also list this many of the latest ended leases")
	return cmd
}
