package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Size is a terminal's window size, in character cells.
type Size struct{ Rows, Cols uint16 }

// ShellRequest is a command to run on a pseudo-terminal on the board
// (docs/protocol.md section 5.12).
type ShellRequest struct {
	// Argv is the command; empty: the login shell of the agent's user.
	Argv []string
	// Shell runs Argv[0] as a /bin/sh -c script, as ExecRequest.Shell.
	Shell      bool
	Env        map[string]string
	Cwd        string
	Timeout    time.Duration
	KillSignal string
	// Term is TERM on the board; "": the agent's default (dumb).
	Term string
	// Size is the terminal's size at the start; zero: the agent's (24x80).
	Size Size
	// Stdin is what is typed on the terminal; nil types nothing. When it
	// ends the terminal gets its end-of-file character (Ctrl-D).
	Stdin io.Reader
	// Stdout receives everything the terminal prints; nil discards it.
	Stdout io.Writer
	// Resize delivers the terminal's new sizes while the command runs.
	Resize <-chan Size
}

// ErrNoTerminal says that the agent cannot run a command on a terminal:
// it speaks a protocol older than 5.
var ErrNoTerminal = errors.New("the agent runs no command on a terminal")

// Shell runs a command on a terminal on the board and returns its final
// record once the terminal's output has been copied out. Canceling ctx
// sends TERM to the command, as Exec does; a Stdout that fails is an
// *OutputError, with the record. A Read of Stdin still pending
// when it returns is left to end by itself (a terminal may never reach
// EOF); nothing else outlives the call.
func (c *Client) Shell(ctx context.Context, r ShellRequest) (proto.ExecResult, error) {
	if perr := proto.CheckMethodVersion(proto.MethodExecResize, c.Hello().Protocol); perr != nil {
		return proto.ExecResult{}, fmt.Errorf("%w: %w", ErrNoTerminal, perr)
	}
	argv := r.Argv
	if len(argv) == 0 {
		if r.Shell {
			return proto.ExecResult{}, errors.New("a shell script needs its text in Argv[0]")
		}
		argv = []string{loginShell}
	}
	p := proto.ExecStartParams{Argv: argv, Shell: r.Shell, Env: r.Env, Cwd: r.Cwd, TimeoutMs: r.Timeout.Milliseconds(),
		KillSignal: r.KillSignal, Tty: true, Term: r.Term, Rows: r.Size.Rows, Cols: r.Size.Cols}
	conn := c.Conn()
	log := c.opts.Logger
	out, err := conn.OpenStream()
	if err != nil {
		return proto.ExecResult{}, err
	}
	p.Stdout = out.ID()
	var in *transport.Stream
	if r.Stdin != nil {
		if in, err = conn.OpenStream(); err != nil {
			out.Close()
			return proto.ExecResult{}, err
		}
		defer in.Close()
		p.Stdin = in.ID()
	}
	stdout := r.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	copied := make(chan struct{})
	var lost error // read once copied is closed
	go func() {
		defer close(copied)
		lost = copyOut("terminal output", stdout, out)
	}()
	// On every way out, nothing writes Stdout any more.
	defer func() {
		out.Close()
		<-copied
	}()
	var started proto.ExecStartResult
	if err := conn.Call(ctx, proto.MethodExecStart, p, &started); err != nil {
		return proto.ExecResult{}, err
	}
	if in != nil {
		// Not waited for: a terminal on stdin may never reach EOF.
		go func() {
			if _, err := io.Copy(in, r.Stdin); err == nil {
				_ = in.CloseWrite()
			}
		}()
	}
	log.Debug("shell started", "id", started.ID, "pid", started.PID, "argv", argv, "term", r.Term,
		"rows", r.Size.Rows, "cols", r.Size.Cols)

	ended := make(chan struct{})
	var resizing sync.WaitGroup
	if r.Resize != nil {
		resizing.Go(func() { c.resizeLoop(ctx, started.ID, r.Resize, ended) })
	}
	res, err := c.wait(ctx, started.ID)
	close(ended)
	resizing.Wait()
	if err != nil {
		return res, err
	}
	<-copied // the output up to its FIN
	log.Debug("shell ended", "id", started.ID, "exit_code", res.ExitCode, "signal", res.Signal)
	return res, lost
}

// loginShell is the argv that asks the agent for its user's login shell.
const loginShell = "-"

// resizeLoop sends each new size of sizes to the command id until ended
// closes.
func (c *Client) resizeLoop(ctx context.Context, id string, sizes <-chan Size, ended <-chan struct{}) {
	log := c.opts.Logger
	for {
		select {
		case <-ended:
			return
		case sz, ok := <-sizes:
			if !ok {
				return
			}
			if sz.Rows == 0 || sz.Cols == 0 {
				continue // a terminal that does not know its size
			}
			err := c.Conn().Call(ctx, proto.MethodExecResize, proto.ExecResizeParams{ID: id, Rows: sz.Rows, Cols: sz.Cols}, nil)
			// not_found: the command ended meanwhile.
			log.Debug("shell resize", "id", id, "rows", sz.Rows, "cols", sz.Cols, "err", err)
		}
	}
}
