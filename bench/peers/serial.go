package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// serialBaud is the rate of the serial rows: a board's console UART.
const serialBaud = 115200

// benchSerial times `true` over a serial line at serialBaud (linetest's
// relay: 10 bits a byte, each way): boardlink's client over the
// serial-framed link to an agent on a sim board, against /bin/sh reading
// its commands from a line of its own at the same rate, the typed-shell
// way (`/bin/true; echo MARK$?`, read up to the mark). The shell runs on
// pipes, so it neither echoes the command nor prints a prompt: the fewest
// bytes the typed way can cost.
func benchSerial(ctx context.Context, e *benchEnv) ([]row, error) {
	fmt.Fprintf(e.out, "exec true over a serial line at %d baud, %d rounds\n", serialBaud, e.cfg.serial)
	c, stop, err := serialAgent(ctx, e, "serial", linetest.New(linetest.Config{Baud: serialBaud}), nil)
	if err != nil {
		return nil, err
	}
	defer stop()
	sh, err := serialShell()
	if err != nil {
		return nil, err
	}
	defer sh.stop()
	vs := []variant{
		{name: "client serial", run: func(ctx context.Context) error {
			res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}})
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit code %d", res.ExitCode)
			}
			return err
		}},
		{name: "sh on a serial line", run: sh.run},
	}
	return measure(ctx, e.cfg.serial, true, fmt.Sprintf("`true` over a serial line (%d baud)", serialBaud), vs, 1, 0)
}

// serialAgent serves an agent on a sim board (its state in a directory
// named name, its file roots roots) on the board's side of line and dials
// it from the host's side.
func serialAgent(ctx context.Context, e *benchEnv, name string, line *linetest.Line, roots []string) (*dispatcher.Client, func(), error) {
	b, err := sim.Open(filepath.Join(e.dirs["state"], name), sim.Options{ID: "bench-" + name})
	if err != nil {
		return nil, nil, err
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, nil, err
	}
	const token = "bench-peers-serial-token-0123456789"
	execs := agent.NewExecs(agent.ExecOptions{})
	a := agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "bench", Value: token}}}, Roots: roots})
	srv := agent.NewLineSerialServer(a, "bench-line", line.Board())
	if err := srv.Start(ctx); err != nil {
		return nil, nil, err
	}
	stop := func() {
		bg, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Stop(bg)
		execs.Shutdown(bg)
	}
	c, err := dispatcher.DialLine(ctx, line.Host(), dispatcher.DialOptions{Token: token, Trust: dispatcher.NewKnownBoards("")})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("serial dial: %w", err)
	}
	return c, func() { c.Close(); stop() }, nil
}

// lineShell is /bin/sh fed from the host's side of a line.
type lineShell struct {
	*group
	host, board *linetest.Port
	out         *bufio.Reader
}

func serialShell() (*lineShell, error) {
	line := linetest.New(linetest.Config{Baud: serialBaud})
	board := line.Board()
	cmd := exec.Command("/bin/sh")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = board, board, board
	g, err := startGroup(cmd)
	if err != nil {
		return nil, err
	}
	host := line.Host()
	s := &lineShell{group: g, host: host, board: board, out: bufio.NewReader(host)}
	if err := s.run(context.Background()); err != nil {
		s.stop()
		return nil, fmt.Errorf("sh on a line: %w", err)
	}
	return s, nil
}

// run types /bin/true and reads up to its end mark.
func (s *lineShell) run(context.Context) error { return typeTrue(s.host, s.out, "sh on a line") }

// stop closes both ends, which ends the copies of the shell's stdin and
// output, and the shell.
func (s *lineShell) stop() {
	s.host.Close()
	s.board.Close()
	s.group.stop()
}
