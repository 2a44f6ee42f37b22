package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/qemuboard"
)

// figures logs what the agent costs and gives over the emulated UART,
// beside a plain shell on the same kind of port (ttyS2, a 16550 like the
// agent's ttyS1) of the same board in the same run: a command's round
// trip, and bytes each way. They are measurements, never asserted
// against a bound. They name how many boards ran at once: QEMU runs on
// TCG, so the other boards of the run slow this one down;
// `go test -run TestQEMUOwnPort -v ./e2e` takes them with this board alone.
func figures(ctx context.Context, t *testing.T, b *board) {
	const runs, size = 10, 256 << 10
	addr := b.AgentAddr()
	fig := func(format string, args ...any) { t.Logf("figure: "+format, args...) }
	fig("%d boards running at once; QEMU start to the agent's first beacon: %v", running.Load(), b.beacon.Round(time.Millisecond))
	fig("reboot round trip: boardlink reboot --wait %v, of which the board's way down and up again (old boot id to new) %v",
		b.rebootCLI.Round(time.Millisecond), b.rebootTook)

	// A command's round trip: the CLI (a new process and session each
	// time), a session of the dispatcher, and the shell.
	var cold []time.Duration
	for range 5 {
		cold = append(cold, b.cliOK(ctx, "exec", addr, "-n", "--", "true").took)
	}
	c := b.dial(ctx, nil)
	var warm []time.Duration
	for range runs {
		start := time.Now()
		if res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
			t.Fatalf("exec true: %+v %v", res, err)
		}
		warm = append(warm, time.Since(start))
	}
	sh := dialShell(ctx, t, b)
	var typed []time.Duration
	for range runs {
		start := time.Now()
		sh.run(ctx, "true", nil)
		typed = append(typed, time.Since(start))
	}
	fig("exec true, round trip (median of %d): boardlink exec %v (a process and a session each), dispatcher Exec in a session %v, shell `true; echo MARK$?` %v",
		runs, median(cold), median(warm), median(typed))

	// Bytes each way, the same amount: the agent's push and pull (sha256
	// checked at both ends) and raw bytes through head -c in the shell.
	local := randomFile(t, size)
	start := time.Now()
	if _, err := c.Push(ctx, local, "/tmp/fig.bin", dispatcher.TransferOptions{}); err != nil {
		t.Fatal(err)
	}
	push := time.Since(start)
	start = time.Now()
	if _, err := c.Pull(ctx, "/tmp/fig.bin", filepath.Join(t.TempDir(), "fig.bin"), dispatcher.TransferOptions{}); err != nil {
		t.Fatal(err)
	}
	pull := time.Since(start)
	c.Close()

	data, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	sh.run(ctx, fmt.Sprintf("head -c %d > /tmp/shell.bin", size), data)
	shellIn := time.Since(start)
	start = time.Now()
	out := sh.run(ctx, fmt.Sprintf("head -c %d /tmp/shell.bin", size), nil)
	shellOut := time.Since(start)
	sh.Close()
	onBoard := b.cliOK(ctx, "exec", addr, "-n", "--", "sha256sum", "/tmp/shell.bin").stdout
	if want := sha256File(t, local); !strings.HasPrefix(onBoard, want) || !bytes.Contains(out, data) {
		t.Errorf("the shell's raw bytes arrived damaged: sha256 on the board %q, want %s; %d bytes back", onBoard, want, len(out))
	}
	rate := func(d time.Duration) string { return fmt.Sprintf("%.1f KiB/s", float64(size)/1024/d.Seconds()) }
	fig("%d KiB host to board: boardlink push %s, shell head -c %s", size>>10, rate(push), rate(shellIn))
	fig("%d KiB board to host: boardlink pull %s, shell head -c %s", size>>10, rate(pull), rate(shellOut))
}

// shell types into the plain shell on ttyS2, as a lab does today.
type shell struct {
	net.Conn
	t   *testing.T
	buf []byte
	n   int
}

func dialShell(ctx context.Context, t *testing.T, b *board) *shell {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", b.ShellSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &shell{Conn: conn, t: t}
	s.run(ctx, "true", nil) // past the prompt and whatever was typed before
	return s
}

// run types `cmd; echo MARK$?`, then input if any once cmd runs, and
// returns what came back up to the mark, failing unless cmd exited 0.
// The marks are typed with a break ("M""ARK"), so that the line editor's
// echo of what is typed never matches them.
func (s *shell) run(ctx context.Context, cmd string, input []byte) []byte {
	s.t.Helper()
	s.n++
	line := fmt.Sprintf(`%s; echo "M""ARK-%d-$?"`+"\n", cmd, s.n)
	if input != nil {
		line = fmt.Sprintf(`echo "RE""ADY-%d"; %s`, s.n, line)
	}
	if _, err := s.Write([]byte(line)); err != nil {
		s.t.Fatal(err)
	}
	if input != nil {
		s.readUntil(ctx, fmt.Sprintf("READY-%d\n", s.n))
		if _, err := s.Write(input); err != nil {
			s.t.Fatal(err)
		}
	}
	out := s.readUntil(ctx, fmt.Sprintf("MARK-%d-", s.n))
	if status := s.readUntil(ctx, "\n"); strings.TrimSpace(string(status)) != "0" {
		s.t.Fatalf("shell: %s: exit %q", cmd, status)
	}
	return out
}

// readUntil reads until text and returns what came before it.
func (s *shell) readUntil(ctx context.Context, text string) []byte {
	s.t.Helper()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetReadDeadline(dl)
	}
	chunk := make([]byte, 64<<10)
	for {
		if i := bytes.Index(s.buf, []byte(text)); i >= 0 {
			out := slices.Clone(s.buf[:i])
			s.buf = s.buf[i+len(text):]
			return out
		}
		n, err := s.Read(chunk)
		s.buf = append(s.buf, chunk[:n]...)
		if err != nil {
			s.t.Fatalf("shell: waiting for %q: %v; got %q", text, err, qemuboard.Tail(s.buf, 5))
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}
