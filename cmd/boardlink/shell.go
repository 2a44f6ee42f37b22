package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
)

func newShellCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "shell BOARD [-- COMMAND...]",
		Short: "Open a terminal on a board: its login shell, or a command",
		Long: `shell runs COMMAND on a pseudo-terminal on the board, or without one the
login shell of the agent's user, and joins your terminal to it, as ssh
does: your terminal is in raw mode (every key goes to the board, Ctrl-C
too, which interrupts the board's foreground command and not the
session), TERM and the window size go along, and so does every resize.
boardlink exits with the command's exit status, as exec does.

Escapes, typed after Enter:
  ~.   close the session (a command that hangs ends with it)
  ~~   send one ~

Without a terminal on stdin, what comes in is typed on the board's
terminal as it comes, and its end is Ctrl-D. The session ends the command
when the link drops. 'boardlink exec -t' is the same for one command,
with exec's flags. Through the lab service (--server URL) the terminal
runs over the service's exec stream, under the lease of $BOARDLINK_LEASE
if set.`,
		Example: `  boardlink shell ws://10.77.0.2:7207
  boardlink shell serial:///dev/ttyUSB0 -- top
  boardlink shell unix:///tmp/qemu-serial.sock -- sh -c 'dmesg | less'`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case len(args) == 0:
				return &usageError{fmt.Errorf("shell needs BOARD (see '%s --help')", cmd.CommandPath())}
			case dash == -1 && len(args) > 1, dash > 1:
				return &usageError{fmt.Errorf("shell takes one BOARD, and a command after --, got %q", args)}
			case dash == 1 && len(args) == 1:
				return &usageError{fmt.Errorf("shell: no command after -- (leave out -- for the login shell)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTerminal(cmd, g, args[0], dispatcher.ShellRequest{Argv: args[1:]})
		},
	}
}

// runTerminal runs req on a terminal on board, joined to this process's
// standard streams; shell and exec -t.
func runTerminal(cmd *cobra.Command, g *globals, board string, req dispatcher.ShellRequest) error {
	ctx := cmd.Context()
	in, out := cmd.InOrStdin(), cmd.OutOrStdout()
	local := localTerminal(in, out)
	req.Term = termName(g)
	if local.sized {
		// Watched before the first look: a resize while the session
		// opens is sent once the command runs.
		sizes := make(chan dispatcher.Size, 1)
		req.Resize = sizes
		stop := watchSize(ctx, local, sizes, g)
		defer stop()
		req.Size = local.size()
	}
	req.Stdout = out
	if req.Stdin == nil {
		req.Stdin = in
	} else {
		local.raw = false // exec -t -n: nothing is typed, Ctrl-C stays ours
	}
	link, err := g.terminalLink(ctx, board)
	if err != nil {
		return err
	}
	defer link.Close()

	var escaped atomic.Bool
	if local.raw {
		state, err := term.MakeRaw(local.in)
		if err != nil {
			return fmt.Errorf("terminal: raw mode: %w", err)
		}
		// Restored before anything is printed: the deferred calls run
		// before main prints an error.
		defer term.Restore(local.in, state)
		req.Stdin = newEscapes(req.Stdin, func() {
			escaped.Store(true)
			g.debug("shell: ~. typed: closing the session")
			link.Close()
		})
	}
	g.debug("shell", "raw", local.raw, "term", req.Term, "rows", req.Size.Rows, "cols", req.Size.Cols)
	err = link.run(ctx, req)
	if escaped.Load() {
		return &exitError{code: exitLink, err: errors.New("session closed (~.)")}
	}
	return err
}

// termLink is where a terminal session runs: a session with the board,
// or the lab service (--server).
type termLink interface {
	// run runs req and returns boardlink's exit status for it.
	run(ctx context.Context, req dispatcher.ShellRequest) error
	// Close ends the session at once (~.).
	Close() error
}

// terminalLink opens the link a terminal session on board runs on.
func (g *globals) terminalLink(ctx context.Context, board string) (termLink, error) {
	if g.serverURL() == "" {
		c, err := g.dial(ctx, board)
		if err != nil {
			return nil, err
		}
		return boardTerm{c}, nil
	}
	c, err := g.serviceClient()
	if err != nil {
		return nil, err
	}
	return &serviceTerm{c: c, board: board, lease: os.Getenv("BOARDLINK_LEASE"), closed: make(chan struct{})}, nil
}

// boardTerm is a terminal session on a session with the board.
type boardTerm struct{ c *dispatcher.Client }

func (b boardTerm) run(ctx context.Context, req dispatcher.ShellRequest) error {
	res, err := b.c.Shell(ctx, req)
	if err != nil {
		return execError(err)
	}
	return execStatus(res, req.Timeout)
}

func (b boardTerm) Close() error { return b.c.Close() }

// serviceTerm is a terminal session through the lab service's exec
// stream, under the lease of $BOARDLINK_LEASE if set.
type serviceTerm struct {
	c            *service.Client
	board, lease string
	once         sync.Once
	closed       chan struct{}
}

func (s *serviceTerm) run(ctx context.Context, req dispatcher.ShellRequest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	argv := req.Argv
	if len(argv) == 0 {
		argv = []string{"-"} // the login shell of the agent's user
	}
	r := service.ExecStreamRequest{Tty: true, Term: req.Term, Rows: req.Size.Rows, Cols: req.Size.Cols,
		ExecRequest: service.ExecRequest{Argv: argv, Shell: req.Shell, Env: req.Env, Cwd: req.Cwd,
			TimeoutMs: req.Timeout.Milliseconds(), KillSignal: req.KillSignal}}
	out, err := s.c.ExecStream(ctx, s.board, s.lease, r, service.ExecIO{Stdin: req.Stdin, Stdout: req.Stdout, Resize: req.Resize})
	return serverExecStatus(out, err, req.Timeout)
}

func (s *serviceTerm) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// terminal is what runTerminal knows of the local terminal.
type terminal struct {
	in     int  // stdin's descriptor, when raw
	raw    bool // stdin is a terminal: put it in raw mode, with escapes
	sized  bool // some standard stream is a terminal whose size is sizeFD's
	sizeFD int
}

// localTerminal looks at stdin and stdout: a terminal on stdin is put in
// raw mode; the size comes from stdin's terminal, else stdout's.
func localTerminal(in io.Reader, out io.Writer) terminal {
	var t terminal
	if fd, ok := terminalFD(in); ok {
		t.in, t.raw = fd, true
		t.sized, t.sizeFD = true, fd
	} else if fd, ok := terminalFD(out); ok {
		t.sized, t.sizeFD = true, fd
	}
	return t
}

// terminalFD is v's descriptor if v is a terminal.
func terminalFD(v any) (int, bool) {
	f, ok := v.(interface{ Fd() uintptr })
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// size is the terminal's size now; zero if it cannot tell.
func (t terminal) size() dispatcher.Size {
	cols, rows, err := term.GetSize(t.sizeFD)
	if err != nil || rows <= 0 || cols <= 0 || rows > 0xffff || cols > 0xffff {
		return dispatcher.Size{}
	}
	return dispatcher.Size{Rows: uint16(rows), Cols: uint16(cols)}
}

// watchSize sends the terminal's size to sizes on every SIGWINCH, the
// latest only, until the returned stop is called.
func watchSize(ctx context.Context, t terminal, sizes chan dispatcher.Size, g *globals) (stop func()) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-winch:
			}
			sz := t.size()
			g.debug("shell: window resized", "rows", sz.Rows, "cols", sz.Cols)
			select { // a size not sent yet is stale: replace it
			case <-sizes:
			default:
			}
			sizes <- sz
		}
	}()
	return func() {
		signal.Stop(winch)
		close(done)
		<-ended
	}
}

// termName is $TERM for the board, if the protocol can carry it
// (printable ASCII without spaces, at most 64 bytes).
func termName(g *globals) string {
	t := os.Getenv("TERM")
	ok := len(t) <= 64
	for i := 0; i < len(t) && ok; i++ {
		ok = t[i] > ' ' && t[i] < 0x7f
	}
	if !ok {
		g.debug("shell: TERM not passed on: not printable ASCII without spaces, or too long", "term", escape(t))
		return ""
	}
	return t
}

// escapes passes typed input through, except the escapes that follow
// Enter, as ssh's: "~." calls onClose and ends the input, "~~" sends one
// "~"; a "~" followed by anything else is sent as typed.
type escapes struct {
	r         io.Reader
	onClose   func()
	buf       [4096]byte
	out       [2 * 4096]byte // filter's output: at most two bytes per byte in
	pending   []byte
	err       error
	lineStart bool // the next byte starts a line
	tilde     bool // a "~" at the start of a line is held
}

// errEscaped ends the input after "~.".
var errEscaped = errors.New("session closed by ~.")

func newEscapes(r io.Reader, onClose func()) *escapes {
	return &escapes{r: r, onClose: onClose, lineStart: true}
}

func (e *escapes) Read(p []byte) (int, error) {
	for len(e.pending) == 0 {
		if e.err != nil {
			return 0, e.err
		}
		n, err := e.r.Read(e.buf[:])
		e.pending = e.filter(e.buf[:n], e.out[:0])
		if e.err == nil && err != nil {
			e.err = err
			if e.tilde { // the input ended after a "~": it was typed
				e.tilde = false
				e.pending = append(e.pending, '~')
			}
		}
	}
	n := copy(p, e.pending)
	e.pending = e.pending[n:]
	return n, nil
}

// filter appends what in sends to out.
func (e *escapes) filter(in, out []byte) []byte {
	for _, b := range in {
		if e.tilde {
			e.tilde = false
			switch b {
			case '.':
				e.err = errEscaped
				e.onClose()
				return out // what follows "~." is not sent
			case '~':
				out = append(out, '~')
				e.lineStart = false
				continue
			}
			out = append(out, '~')
		} else if e.lineStart && b == '~' {
			e.tilde = true
			continue
		}
		out = append(out, b)
		e.lineStart = b == '\r' || b == '\n'
	}
	return out
}
