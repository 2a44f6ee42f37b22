package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
	"github.com/creack/pty"
	"golang.org/x/term"
)

// lineCase is one line of the serial transfer rows: its rate and noise.
type lineCase struct {
	name    string
	baud    int
	corrupt float64 // share of bytes replaced, each way
	inject  float64 // chance that a frame or gap of the board's output gets a console line
}

// lineCases are issue 16's: a clean line, 0.1% of bytes corrupted, and
// that plus console text, at a console UART's rate and at 1 Mbaud.
func lineCases() []lineCase {
	var cs []lineCase
	for _, baud := range []int{serialBaud, 1_000_000} {
		cs = append(cs,
			lineCase{"clean", baud, 0, 0},
			lineCase{"0.1% of bytes corrupted", baud, 0.001, 0},
			lineCase{"0.1% corrupted + console text", baud, 0.001, 0.05},
		)
	}
	return cs
}

// what names the case's row.
func (c lineCase) what(cfg config) string {
	return fmt.Sprintf("pull %s over a serial line, %d baud, %s", benchkit.Human(int64(serialFileSize(cfg, c.baud))), c.baud, c.name)
}

// serialFileSize is the file a case moves: 64 KiB at a UART's rate and
// 256 KiB at 1 Mbaud (a few seconds on a clean line); in smoke mode a
// few KiB.
func serialFileSize(cfg config, baud int) int {
	n := 256 << 10
	if cfg.smoke {
		n = 4 << 10
	}
	if baud < 1_000_000 {
		n /= 4
	}
	return n
}

// benchZmodem compares boardlink's file transfer over the serial-framed
// link with ZMODEM (lrzsz's sz and rz, Debian package lrzsz), each
// through linetest's relay in the case's state: rate-limited to the baud
// rate (10 bits a byte), bytes corrupted each way, console lines written
// into the board's output. Both move a file from the board to the host:
// `boardlink pull` from an agent on a sim board, and sz on the board's
// pty to rz on the host's. A ZMODEM transfer that fails or runs past its
// allowance (five times the file's line time, plus 5 s) counts as
// failed, timed until it was given up.
func benchZmodem(ctx context.Context, e *benchEnv) ([]row, error) {
	var tools [2]string
	for i, name := range []string{"sz", "rz"} {
		var err error
		if tools[i], err = exec.LookPath(name); err != nil {
			return nil, errors.New("sz and rz not found; install with: apt-get install lrzsz")
		}
	}
	var rows []row
	for i, c := range lineCases() {
		r, err := zmodemRow(ctx, e, c, i, tools)
		if err != nil {
			return nil, fmt.Errorf("%s at %d baud: %w", c.name, c.baud, err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// zmodemRow measures one case; tools are sz's and rz's paths.
func zmodemRow(ctx context.Context, e *benchEnv, c lineCase, i int, tools [2]string) (row, error) {
	size := serialFileSize(e.cfg, c.baud)
	fmt.Fprintf(e.out, "pull %s over a serial line at %d baud, %s: boardlink and ZMODEM, %d runs each\n", benchkit.Human(int64(size)), c.baud, c.name, e.cfg.runs)
	dir := filepath.Join(e.tmp, fmt.Sprintf("zmodem-%d", i))
	board, host := filepath.Join(dir, "board"), filepath.Join(dir, "host")
	for _, d := range []string{board, host} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return row{}, err
		}
	}
	const name = "file.bin"
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(board, name), data, 0o600); err != nil {
		return row{}, err
	}
	sum, err := benchkit.HashFile(filepath.Join(board, name))
	if err != nil {
		return row{}, err
	}
	lineCfg := linetest.Config{Baud: c.baud, Corrupt: c.corrupt, Inject: c.inject, Seed: uint64(i + 1)}
	client, stop, err := serialAgent(ctx, e, fmt.Sprintf("zmodem-%d", i), linetest.New(lineCfg), []string{board})
	if err != nil {
		return row{}, err
	}
	defer stop()

	got := filepath.Join(host, name)
	lineTime := time.Duration(size) * 10 * time.Second / time.Duration(c.baud)
	allowance := 5*lineTime + 5*time.Second
	failed, seed := 0, lineCfg.Seed*1000
	var zerr error
	vs := []variant{
		{name: "boardlink", run: func(ctx context.Context) error {
			_, err := client.Pull(ctx, filepath.Join(board, name), got, dispatcher.TransferOptions{})
			return err
		}, check: func(context.Context) error {
			defer os.Remove(got)
			return checkCopy(got, sum)
		}},
		{name: "zmodem", run: func(ctx context.Context) error {
			seed++
			lineCfg.Seed = seed
			if zerr = zmodem(ctx, linetest.New(lineCfg), tools, board, host, name, allowance); zerr != nil && ctx.Err() != nil {
				return zerr
			}
			return nil
		}, check: func(context.Context) error {
			defer os.Remove(got)
			if zerr == nil {
				zerr = checkCopy(got, sum)
			}
			if zerr != nil {
				failed++
				fmt.Fprintf(e.out, "  ZMODEM failed: %v\n", zerr)
			}
			return nil
		}},
	}
	t, err := interleave(ctx, e.cfg.runs, vs...)
	if err != nil {
		return row{}, err
	}
	times := t.wall
	frac := func(ts []time.Duration) float64 {
		return float64(size) / benchkit.Median(ts).Seconds() / (float64(c.baud) / 10)
	}
	peer := fmt.Sprintf("sz → rz, ZMODEM: %.2f of the line rate", frac(times["zmodem"]))
	if failed > 0 {
		peer = fmt.Sprintf("sz → rz, ZMODEM: %d of %d failed (timed until given up)", failed, e.cfg.runs)
	}
	return row{
		what:   c.what(e.cfg),
		bl:     fmt.Sprintf("boardlink pull: %.2f of the line rate", frac(times["boardlink"])),
		peer:   peer,
		blTs:   times["boardlink"],
		peerTs: times["zmodem"],
	}, nil
}

// zmodem sends dir/name from sz on one pty to rz on another, each pty's
// master relayed to its side of line. It returns once sz has ended (or
// its allowance is over: an error then): sz ends when rz has confirmed
// the end of the session (ZFIN), so rz holds the whole file by then. rz
// itself lingers: it waits for sz's closing "OO", which sz's exit flushes
// off its pty before the relay reads it, and gives up only after 30 s.
func zmodem(ctx context.Context, line *linetest.Line, tools [2]string, board, host, name string, allowance time.Duration) error {
	boardPort, hostPort := line.Board(), line.Host()
	defer boardPort.Close()
	defer hostPort.Close()
	var szErr, rzErr bytes.Buffer
	receiver, err := onPTY(hostPort, exec.Command(tools[1], "-b", "-y", "-q"), host, &rzErr)
	if err != nil {
		return err
	}
	defer receiver.stop()
	sender, err := onPTY(boardPort, exec.Command(tools[0], "-b", "-q", name), board, &szErr)
	if err != nil {
		return err
	}
	defer sender.stop()
	t := time.NewTimer(allowance)
	defer t.Stop()
	select {
	case <-sender.done:
	case <-t.C:
		return fmt.Errorf("not done in %v", allowance)
	case <-ctx.Done():
		return ctx.Err()
	}
	if sender.err != nil {
		return fmt.Errorf("sz: %w: %s", sender.err, bytes.TrimSpace(szErr.Bytes()))
	}
	return nil
}

// ptyProc is a process whose terminal is a pty relayed to a line port.
type ptyProc struct {
	*group
	master, slave *os.File
}

// onPTY starts cmd in dir on a new raw pty whose master is relayed to port
// both ways.
func onPTY(port io.ReadWriter, cmd *exec.Cmd, dir string, stderr io.Writer) (*ptyProc, error) {
	master, slave, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("no pty: %w", err)
	}
	if _, err := term.MakeRaw(int(slave.Fd())); err != nil {
		master.Close()
		slave.Close()
		return nil, err
	}
	cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr = dir, slave, slave, stderr
	g, err := startGroup(cmd)
	if err != nil {
		master.Close()
		slave.Close()
		return nil, err
	}
	go io.Copy(port, master)
	go io.Copy(master, port)
	return &ptyProc{group: g, master: master, slave: slave}, nil
}

// stop ends the process and its relay: with the port closed by the
// caller and the pty closed here, both copies return.
func (p *ptyProc) stop() {
	p.group.stop()
	p.slave.Close()
	p.master.Close()
}
