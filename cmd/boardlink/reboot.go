package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/proto"
)

// rebootReport is reboot's JSON output.
type rebootReport struct {
	Board      string `json:"board"`
	OldBootID  string `json:"old_boot_id"`
	NewBootID  string `json:"new_boot_id,omitempty"`
	TookMs     int64  `json:"took_ms,omitempty"`
	Commands   int    `json:"commands_ended"`
	ConsoleLog string `json:"console_log,omitempty"`
	Error      string `json:"error,omitempty"`
}

func newRebootCmd(g *globals) *cobra.Command {
	var (
		wait       bool
		timeout    time.Duration
		consoleLog string
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:   "reboot BOARD [--wait] [--timeout D] [--console-log FILE] [--json]",
		Short: "Reboot a board, and with --wait return when it is back",
		Long: `reboot asks the agent to reboot the board. The agent answers first, then
stops its work cleanly: every running command's process group is ended
(TERM, then KILL after its grace period), whatever it is doing. This works
while another command hangs.

With --wait, reboot returns only when the board is back: reconnected,
answering, and reporting a new boot id. It prints how long that took. A
board that is not back within --timeout is an error (exit 124).

On a serial link the console text seen during the reboot (boot loader,
kernel messages) is saved to --console-log, by default under
$XDG_STATE_HOME/boardlink/console/ (~/.local/state/...), so a board that
fails to boot leaves its log; the path is printed.

With --server (or $BOARDLINK_SERVER) the lab service reboots the board
and, with --wait, waits for its new boot, under the lease of
$BOARDLINK_LEASE if set (a board another lease holds is refused, exit 1);
the service records the console itself ('boardlink console --since').

Exit status: 0 rebooted (and back, with --wait); 124 not back in time;
255 the link failed before the agent answered; 2 a usage error.`,
		Example: `  boardlink reboot board1 --wait
  boardlink reboot unix:///tmp/qemu-uart.sock --wait --timeout 3m --json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return &usageError{fmt.Errorf("--timeout must be positive")}
			}
			ctx := cmd.Context()
			if g.serverURL() != "" {
				if consoleLog != "" {
					return &usageError{errors.New("--console-log does not go through the lab service: it records the console (boardlink console --since)")}
				}
				return g.rebootViaServer(cmd, args[0], wait, timeout, asJSON)
			}
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			rep := rebootReport{Board: c.Hello().BoardID}
			mark := c.ConsoleMark()
			if !wait {
				res, err := c.Reboot(ctx)
				if err != nil {
					return linkFailure(err)
				}
				rep.OldBootID, rep.Commands = res.BootID, res.Commands
				return printReboot(cmd, asJSON, rep, nil)
			}
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var wait waitShow
			spin := startSpinner(cmd.ErrOrStderr(), fmt.Sprintf("rebooting %s: waiting for a new boot (up to %s)", rep.Board, timeout),
				func() string { return wait.status(c.ConsoleSince(mark)) })
			back, werr := c.RebootWait(wctx, dispatcher.WaitOptions{Progress: wait.set})
			spin.end()
			rep.OldBootID, rep.NewBootID, rep.TookMs, rep.Commands = back.OldBootID, back.NewBootID, back.TookMs, back.Commands
			if text := c.ConsoleSince(mark); len(text) > 0 || consoleLog != "" {
				p, err := saveConsole(consoleLog, rep.Board, text)
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "boardlink: saving the console log:", err)
				}
				rep.ConsoleLog = p
			}
			switch {
			case werr == nil:
			case ctx.Err() != nil && back.OldBootID == "":
				werr = interrupted(ctx, "before %s answered the reboot request: it may reboot all the same", rep.Board)
			case ctx.Err() != nil:
				werr = interrupted(ctx, "stopped waiting for %s: boot %s ended, and the board may be back by now ('boardlink info %s' says)",
					rep.Board, rep.OldBootID, args[0])
			case errors.Is(werr, dispatcher.ErrNotBack):
				werr = &exitError{code: exitTimeout, err: werr}
			case back.OldBootID == "":
				werr = linkFailure(werr) // the reboot request itself failed
			default:
				werr = &exitError{code: 1, err: werr}
			}
			return printReboot(cmd, asJSON, rep, werr)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&wait, "wait", "w", false, "return only when the board is back with a new boot id")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "with --wait, how long the board may take to come back")
	f.StringVar(&consoleLog, "console-log", "", "where to save the console text seen during the reboot (serial links)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// rebootViaServer reboots board through the lab service, under the lease
// of $BOARDLINK_LEASE if set; with wait, the service waits for its new
// boot.
func (g *globals) rebootViaServer(cmd *cobra.Command, board string, wait bool, timeout time.Duration, asJSON bool) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	var spin *spinner
	if wait {
		spin = startSpinner(cmd.ErrOrStderr(), fmt.Sprintf("rebooting %s through the lab service: waiting for a new boot (up to %s)", board, timeout), nil)
	}
	back, err := c.Reboot(ctx, board, os.Getenv("BOARDLINK_LEASE"), service.RebootRequest{Wait: wait, TimeoutMs: timeout.Milliseconds()})
	if spin != nil {
		spin.end()
	}
	rep := rebootReport{Board: board, OldBootID: back.OldBootID, NewBootID: back.NewBootID, TookMs: back.TookMs, Commands: back.Commands}
	var ae *service.APIError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		err = interrupted(ctx, "stopped waiting for %s through the lab service: it may reboot all the same", board)
	case errors.As(err, &ae) && ae.Reason == string(proto.ReasonTimeout):
		err = &exitError{code: exitTimeout, err: err}
	default:
		err = serviceFailure(err)
	}
	return printReboot(cmd, asJSON, rep, err)
}

// waitShow is what a wait for a board shows besides its time: the last
// failed attempt, and the last console line.
type waitShow struct {
	mu   sync.Mutex
	last dispatcher.WaitProgress
}

func (w *waitShow) set(p dispatcher.WaitProgress) {
	w.mu.Lock()
	w.last = p
	w.mu.Unlock()
}

// status says where the wait stands.
func (w *waitShow) status(console []byte) string {
	w.mu.Lock()
	p := w.last
	w.mu.Unlock()
	var parts []string
	if p.Err != nil {
		msg := p.Err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:] // the cause, not the whole chain
		}
		parts = append(parts, fmt.Sprintf("attempt %d: %s", p.Attempts, clip(msg, 40)))
	}
	if line := lastLine(console); line != "" {
		parts = append(parts, "last console line: "+clip(line, 60))
	}
	return strings.Join(parts, ", ")
}

// lastLine is the last line of text with something printable in it.
func lastLine(text []byte) string {
	lines := strings.Split(string(text), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		line := strings.Map(func(r rune) rune {
			if unicode.IsPrint(r) {
				return r
			}
			return -1
		}, lines[i])
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

// clip cuts s to n runes.
func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func printReboot(cmd *cobra.Command, asJSON bool, rep rebootReport, err error) error {
	if err != nil {
		rep.Error = err.Error()
	}
	if asJSON {
		if jerr := writeJSON(cmd.OutOrStdout(), rep); jerr != nil {
			return jerr
		}
	} else {
		out := cmd.OutOrStdout()
		switch {
		case rep.NewBootID != "":
			fmt.Fprintf(out, "%s is back after %.1fs: boot %s (was %s)\n", rep.Board,
				float64(rep.TookMs)/1000, rep.NewBootID, rep.OldBootID)
		case err == nil:
			fmt.Fprintf(out, "%s is rebooting (boot %s ends; %d running command(s) ended)\n", rep.Board, rep.OldBootID, rep.Commands)
		}
		if rep.ConsoleLog != "" {
			fmt.Fprintf(out, "console log: %s\n", rep.ConsoleLog)
		}
	}
	return err
}

// saveConsole writes text to path, or to a fresh file named after the
// board and the time under the user's state directory.
func saveConsole(path, board string, text []byte) (string, error) {
	if path == "" {
		dir := os.Getenv("XDG_STATE_HOME")
		if dir == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			dir = filepath.Join(home, ".local", "state")
		}
		dir = filepath.Join(dir, "boardlink", "console")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		name := strings.NewReplacer("/", "_", ":", "_").Replace(url.PathEscape(board))
		path = filepath.Join(dir, fmt.Sprintf("%s-%s.log", name, time.Now().UTC().Format("20060102T150405Z")))
	}
	return path, os.WriteFile(path, text, 0o644)
}

func newConsoleCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var since string
	cmd := &cobra.Command{
		Use:   "console BOARD [--timeout D] [--since D]",
		Short: "Stream a board's serial console text",
		Long: `console prints the console text of the board's serial line (boot loader
and kernel messages, anything outside the agent's frames) as it arrives,
until interrupted or until --timeout. It only listens: nothing is written
to the line, so a boot loader waiting for a key or a shell is undisturbed.

BOARD must be reached over a serial line: serial://, tcp:// or unix://, or
a board id that discovery finds on a serial port.

Every boardlink call on a serial line shares it through one process per
line that holds it (boardlink line-mux, started by the first call): console
gets the text the line kept, then what comes, while exec, push or shell run
on the same line. With BOARDLINK_LINE_MUX=off each call opens the line
itself, and a unix: socket of QEMU (-chardev socket,server=on), which
serves one client at a time, is taken from console by the next client:
console then says so and exits 255, never silently.

With --server (or $BOARDLINK_SERVER) the lab service's record of the
board's console is read instead: --since 5m (or an RFC 3339 time) starts
that long ago, so what the board printed between a reset and now is there.

Exit status: 0 at --timeout; 2 a malformed address; 130 after Ctrl-C; 255
the line closed under it (another client took a unix: socket, a ser2net
port went away, a USB serial port was unplugged).`,
		Example: `  boardlink console serial:///dev/ttyUSB0?baud=115200
  boardlink console unix:///tmp/qemu-uart.sock --timeout 30s > boot.log`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			if g.serverURL() != "" {
				return g.consoleViaServer(ctx, args[0], since, cmd.OutOrStdout())
			}
			if since != "" {
				return &usageError{errors.New("--since reads the lab service's record: give --server URL or set BOARDLINK_SERVER")}
			}
			addr, err := g.resolve(ctx, args[0])
			if err != nil {
				return err
			}
			err = dispatcher.ConsoleShared(ctx, addr, cmd.OutOrStdout(), g.consoleShare())
			switch {
			case errors.Is(err, dispatcher.ErrBadAddress):
				return &usageError{err}
			case errors.Is(err, dispatcher.ErrLineClosed) && strings.HasPrefix(addr, "unix:"):
				err = fmt.Errorf("%w; a unix: socket (QEMU's chardev) serves one client: another one may have taken it", err)
			}
			return linkFailure(err)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "stop after this long (0: until interrupted)")
	cmd.Flags().StringVar(&since, "since", "", "with --server: start from the lab service's record this long ago (5m) or since an RFC 3339 time")
	return cmd
}
