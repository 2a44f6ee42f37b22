package main

import (
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/testenv"
)

// startSized runs the built CLI on a terminal of its own of the given
// size, with TERM=vt220, as a person runs it.
func startSized(t *testing.T, bin string, rows, cols uint16, args ...string) *ptyRun {
	t.Helper()
	r := &ptyRun{cmd: exec.Command(bin, append([]string{"--known-boards", knownBoards(t)}, args...)...), read: make(chan struct{})}
	r.cmd.Env = append(os.Environ(), "TERM=vt220")
	master, err := pty.StartWithSize(r.cmd, &pty.Winsize{Rows: rows, Cols: cols})
	if err != nil {
		testenv.SkipOrFail(t, "no pty: %v", err)
	}
	r.master = master
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
		master.Close()
	})
	go readTerminal(master, &r.out, r.read)
	return r
}

// typ types text on the CLI's terminal.
func (r *ptyRun) typ(t *testing.T, text string) {
	t.Helper()
	if _, err := r.master.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// await waits until the CLI's terminal has shown want, after what it
// showed at from.
func (r *ptyRun) await(t *testing.T, from int, want string) int {
	t.Helper()
	at := -1
	testenv.Eventually(t, "the terminal to show "+strconv.Quote(want), func() bool {
		seen := func() bool {
			if i := strings.Index(r.out.String()[from:], want); i >= 0 {
				at = from + i + len(want)
			}
			return at >= 0
		}
		if seen() {
			return true
		}
		select {
		case <-r.read: // all it showed is read: look once more
			if !seen() {
				t.Fatalf("the CLI's terminal closed before it showed %q:\n%q", want, r.out.String())
			}
			return true
		default:
			return false
		}
	})
	return at
}

// cooked fails the test unless the CLI's terminal is out of raw mode
// again: echo, lines and Ctrl-C as signal are back.
func (r *ptyRun) cooked(t *testing.T) {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(r.master.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint32(unix.ECHO | unix.ICANON | unix.ISIG); tio.Lflag&want != want {
		t.Fatalf("the terminal stayed raw: lflag %#x", tio.Lflag)
	}
}

// TestShellOnTerminal runs 'boardlink shell' on a terminal, over
// WebSocket and over the serial link: the board's terminal has the size,
// the TERM and the resizes of ours, Ctrl-C interrupts the board's
// foreground command and not the session, exit codes pass through, and
// "~." after Enter ends a session whose command hangs; exec -t is the
// same for one command.
func TestShellOnTerminal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	bin := testenv.GoBuild(t, ".")
	d := startBoard(t)
	for _, link := range []struct{ name, board string }{{"ws", d.ws.URL()}, {"serial", "unix://" + d.sock}} {
		board := link.board
		t.Run(link.name, func(t *testing.T) {
			t.Run("interactive", func(t *testing.T) {
				r := startSized(t, bin, 33, 101, "shell", board, "--", "sh", "-i")
				r.typ(t, "stty size; tty; echo \"T=$TERM\"\r")
				at := r.await(t, 0, "33 101\r\n")
				at = r.await(t, at, "/dev/pts/")
				at = r.await(t, at, "T=vt220\r\n")
				// The child prints once it is the terminal's foreground job.
				r.typ(t, "sh -c 'echo S$((1+1)); exec sleep 987661'\r")
				at = r.await(t, at, "S2\r\n")
				r.typ(t, "\x03")
				r.typ(t, "echo after-$((6*7))\r")
				r.await(t, at, "after-42\r\n")
				r.typ(t, "exit 7\r")
				if code, out := r.wait(); code != 7 {
					t.Fatalf("exit %d, want 7:\n%q", code, out)
				}
				r.cooked(t)
			})

			t.Run("resize", func(t *testing.T) {
				r := startSized(t, bin, 24, 80, "shell", board, "--", "sh", "-c",
					`sleep 100000 & trap 'stty size; n=$((n+1)); [ $n = 2 ] && kill $! && exit 3' WINCH; echo ready; while :; do wait; done`)
				at := r.await(t, 0, "ready")
				for _, sz := range []pty.Winsize{{Rows: 40, Cols: 120}, {Rows: 50, Cols: 132}} {
					// The host's terminal sends SIGWINCH to the CLI.
					if err := pty.Setsize(r.master, &sz); err != nil {
						t.Fatal(err)
					}
					at = r.await(t, at, strconv.Itoa(int(sz.Rows))+" "+strconv.Itoa(int(sz.Cols))+"\r\n")
				}
				if code, out := r.wait(); code != 3 {
					t.Fatalf("exit %d, want 3:\n%q", code, out)
				}
			})

			t.Run("escape", func(t *testing.T) {
				r := startSized(t, bin, 24, 80, "shell", board, "--", "sh", "-c", "echo ready; exec sleep 987662")
				at := r.await(t, 0, "ready")
				// The board's terminal echoes what reached it: "~~" sends one "~".
				r.typ(t, "\r~~x\r")
				r.await(t, at, "\r\n~x\r\n")
				r.typ(t, "~.")
				code, out := r.wait()
				if code != 255 || !strings.Contains(out, "session closed (~.)") || strings.Contains(out, "~~") {
					t.Fatalf("exit %d, want 255 after ~.:\n%q", code, out)
				}
				r.cooked(t)
				testenv.Eventually(t, "the board's command to end with the session", func() bool { return d.execs.Running() == 0 })
			})

			t.Run("exec -t", func(t *testing.T) {
				r := startSized(t, bin, 33, 101, "exec", "-t", board, "--", "sh", "-c", `stty size; echo "T=$TERM"; exit 4`)
				if code, out := r.wait(); code != 4 || !strings.Contains(out, "33 101\r\nT=vt220\r\n") {
					t.Fatalf("exit %d, want 4:\n%q", code, out)
				}
			})
		})
	}
}

// TestShellWithoutTerminal: with stdin and stdout not terminals, shell
// types what comes in on the board's terminal, ends with it, and says
// nothing of its own.
func TestShellWithoutTerminal(t *testing.T) {
	d := startBoard(t)
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		stdout, stderr, code := cli(t, "echo hi-$((1+2))\nexit 5\n", "shell", board, "--", "sh")
		if code != 5 || !strings.Contains(stdout, "hi-3\r\n") || stderr != "" {
			t.Fatalf("%s: exit %d\nstdout %q\nstderr %q", board, code, stdout, stderr)
		}
	}
}

// TestExecTTY: exec -t runs one command on a terminal, its output (stdout
// and stderr together) and exit status as exec's.
func TestExecTTY(t *testing.T) {
	d := startBoard(t)
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		stdout, stderr, code := cli(t, "", "exec", "-t", board, "--", "sh", "-c", "tty; echo out; echo err >&2; exit 9")
		if code != 9 || !regexp.MustCompile(`^/dev/pts/\d+\r\nout\r\nerr\r\n$`).MatchString(stdout) || stderr != "" {
			t.Fatalf("%s: exit %d\nstdout %q\nstderr %q", board, code, stdout, stderr)
		}
	}
}

func TestShellUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"shell"}, "needs BOARD"},
		{[]string{"shell", "b1", "ls"}, "a command after --"},
		{[]string{"shell", "b1", "--"}, "no command after --"},
		{[]string{"exec", "-t", "--detach", "ws://127.0.0.1:1", "--", "true"}, "-t and --detach"},
	} {
		_, stderr, code := cli(t, "", tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%q: exit %d %q, want 2 and %q", tc.args, code, stderr, tc.msg)
		}
	}
}

// TestEscapes: "~." and "~~" count only at the start of a line (and of
// the session), also when the keys come one read at a time.
func TestEscapes(t *testing.T) {
	for _, tc := range []struct {
		in, out string
		closed  bool
	}{
		{"ls\r~.rest", "ls\r", true},
		{"~.", "", true},
		{"a~.b", "a~.b", false},
		{"~~x", "~x", false},
		{"\n~x~.", "\n~x~.", false},
		{"\r~~~.", "\r~~.", false},
		{"\r~", "\r~", false}, // a "~" held when the input ends was typed
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			closed := false
			out, err := io.ReadAll(newEscapes(r, func() { closed = true }))
			if string(out) != tc.out || closed != tc.closed || (err != nil) != tc.closed {
				t.Errorf("%q (one byte at a time: %v): sent %q, closed %v, err %v; want %q, closed %v",
					tc.in, oneByte, out, closed, err, tc.out, tc.closed)
			}
		}
	}
}
