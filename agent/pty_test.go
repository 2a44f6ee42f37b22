package agent_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// session is a command on a terminal on the board, typed into and read
// by the test.
type session struct {
	t    *testing.T
	out  testenv.Buffer
	in   *io.PipeWriter
	done chan struct{}
	res  proto.ExecResult
	err  error
}

// startSession runs req with c.Shell; what the test types is its input.
func startSession(t *testing.T, c *dispatcher.Client, req dispatcher.ShellRequest) *session {
	t.Helper()
	pr, pw := io.Pipe()
	s := &session{t: t, in: pw, done: make(chan struct{})}
	req.Stdin, req.Stdout = pr, &s.out
	go func() {
		defer close(s.done)
		s.res, s.err = c.Shell(context.Background(), req)
	}()
	t.Cleanup(func() { pw.Close() })
	return s
}

func (s *session) typ(text string) {
	s.t.Helper()
	if _, err := s.in.Write([]byte(text)); err != nil {
		s.t.Fatalf("type %q: %v", text, err)
	}
}

// await waits until the terminal has shown want.
func (s *session) await(want string) {
	s.t.Helper()
	testenv.Eventually(s.t, "the terminal to show "+strconv.Quote(want), func() bool {
		select {
		case <-s.done:
			s.t.Fatalf("the command ended (%+v, %v) before the terminal showed %q:\n%q", s.res, s.err, want, s.out.String())
		default:
		}
		return strings.Contains(s.out.String(), want)
	})
}

// wait returns the command's final record.
func (s *session) wait() proto.ExecResult {
	s.t.Helper()
	<-s.done
	if s.err != nil {
		s.t.Fatalf("shell: %v\n%q", s.err, s.out.String())
	}
	return s.res
}

// TestTerminal runs commands on a terminal over each link: the size set,
// a resize, TERM, a tty, Ctrl-C to the foreground job while the shell
// goes on, the exit status, and input that ends as Ctrl-D does.
func TestTerminal(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "")
			c := tr.dial(t, h)

			t.Run("size, tty and TERM", func(t *testing.T) {
				s := startSession(t, c, dispatcher.ShellRequest{Argv: []string{"sh", "-c", `stty size; tty; echo "T=$TERM"; exit 7`},
					Term: "vt220", Size: dispatcher.Size{Rows: 33, Cols: 101}})
				res := s.wait()
				out := s.out.String()
				if !strings.Contains(out, "33 101\r\n") || !regexp.MustCompile(`/dev/pts/\d+\r\n`).MatchString(out) ||
					!strings.Contains(out, "T=vt220\r\n") {
					t.Fatalf("terminal showed %q", out)
				}
				if res.ExitCode != 7 || res.StderrBytes != 0 || res.StdoutBytes != int64(len(out)) {
					t.Fatalf("result %+v for output %q", res, out)
				}
			})

			t.Run("resize", func(t *testing.T) {
				sizes := make(chan dispatcher.Size)
				// WINCH interrupts the shell's wait and runs the trap; the
				// second one ends the command.
				s := startSession(t, c, dispatcher.ShellRequest{Argv: []string{"sh", "-c",
					`sleep 100000 & trap 'stty size; n=$((n+1)); [ $n = 2 ] && kill $! && exit 3' WINCH; echo ready; while :; do wait; done`},
					Size: dispatcher.Size{Rows: 24, Cols: 80}, Resize: sizes})
				s.await("ready")
				sizes <- dispatcher.Size{Rows: 40, Cols: 120}
				s.await("40 120\r\n")
				sizes <- dispatcher.Size{Rows: 50, Cols: 132}
				if res := s.wait(); res.ExitCode != 3 || !strings.HasSuffix(s.out.String(), "50 132\r\n") {
					t.Fatalf("result %+v\n%q", res, s.out.String())
				}
			})

			t.Run("Ctrl-C", func(t *testing.T) {
				s := startSession(t, c, dispatcher.ShellRequest{Argv: []string{"sh", "-i"}})
				s.typ("sleep 987651\n")
				sleep := awaitForeground(t, "sleep", "987651")
				s.typ("\x03")
				testenv.Eventually(t, "the foreground sleep to end", func() bool { return !alive(sleep) })
				s.typ("echo after-$((6*7))\n")
				s.await("after-42")
				s.typ("exit 6\n")
				if res := s.wait(); res.ExitCode != 6 {
					t.Fatalf("result %+v\n%q", res, s.out.String())
				}
			})

			t.Run("input ends with Ctrl-D", func(t *testing.T) {
				var out testenv.Buffer
				res, err := c.Shell(context.Background(), dispatcher.ShellRequest{Argv: []string{"sh"},
					Stdin: strings.NewReader("echo x$((2+3))\n"), Stdout: &out})
				if err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "x5\r\n") {
					t.Fatalf("%+v %v %q", res, err, out.String())
				}
			})

			t.Run("login shell", func(t *testing.T) {
				// A home of its own: the shell reads no profile of the
				// user's and writes no history of theirs.
				home := t.TempDir()
				s := startSession(t, c, dispatcher.ShellRequest{Env: map[string]string{"HOME": home}})
				s.typ(`echo "zero=$0 shell=$SHELL in=$(pwd)"; exit 5` + "\n")
				res := s.wait()
				m := regexp.MustCompile(`zero=-(\S+) shell=(\S+) in=(\S+)\r\n`).FindStringSubmatch(s.out.String())
				if m == nil || !strings.HasSuffix(m[2], "/"+m[1]) || m[3] != home || res.ExitCode != 5 {
					t.Fatalf("login shell: %+v\n%q", res, s.out.String())
				}
				t.Logf("the login shell: %s", m[2])
			})
		})
	}
}

// TestTerminalEndsWithItsLink: a session that loses its link ends the
// foreground job of its terminal, which job control put in a process
// group of its own.
func TestTerminalEndsWithItsLink(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "")
			c := tr.dial(t, h)
			s := startSession(t, c, dispatcher.ShellRequest{Argv: []string{"sh", "-i"}})
			s.typ("sleep 987652\n")
			sleep := awaitForeground(t, "sleep", "987652")
			c.Close()
			<-s.done
			testenv.Eventually(t, "the sleep to end with the session", func() bool { return !alive(sleep) })
			testenv.Eventually(t, "no command running", func() bool { return h.execs.Running() == 0 })
		})
	}
}

// TestTerminalRefused: the terminal's own rules, at the edge.
func TestTerminalRefused(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	conn := c.Conn()
	st, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []struct {
		name  string
		p     proto.ExecStartParams
		field string
	}{
		{"stderr on a terminal", proto.ExecStartParams{Argv: []string{"true"}, Tty: true, Stderr: st.ID()}, "stderr"},
		{"size without a terminal", proto.ExecStartParams{Argv: []string{"true"}, Rows: 3, Cols: 4}, "tty"},
		{"term with a space", proto.ExecStartParams{Argv: []string{"true"}, Tty: true, Term: "vt 100"}, "term"},
	} {
		err := conn.Call(context.Background(), proto.MethodExecStart, tc.p, nil)
		if !hasField(err, tc.field) {
			t.Errorf("%s: got %v, want invalid_params on %s", tc.name, err, tc.field)
		}
	}

	var started proto.ExecStartResult
	if err := conn.Call(context.Background(), proto.MethodExecStart, proto.ExecStartParams{Argv: []string{"sleep", "1000"}}, &started); err != nil {
		t.Fatal(err)
	}
	defer h.execs.Kill(started.ID)
	for _, tc := range []struct {
		name   string
		p      proto.ExecResizeParams
		reason proto.Reason
		field  string
	}{
		{"not on a terminal", proto.ExecResizeParams{ID: started.ID, Rows: 2, Cols: 2}, proto.ReasonInvalidParams, "id"},
		{"zero rows", proto.ExecResizeParams{ID: started.ID, Rows: 0, Cols: 2}, proto.ReasonInvalidParams, "rows"},
		{"unknown", proto.ExecResizeParams{ID: "c999-0000", Rows: 2, Cols: 2}, proto.ReasonNotFound, ""},
	} {
		err := conn.Call(context.Background(), proto.MethodExecResize, tc.p, nil)
		if !proto.IsReason(err, tc.reason) || tc.field != "" && !hasField(err, tc.field) {
			t.Errorf("resize %s: got %v, want %s %s", tc.name, err, tc.reason, tc.field)
		}
	}
}

// hasField reports whether err is invalid_params naming field.
func hasField(err error, field string) bool {
	var perr *proto.Error
	if !errors.As(err, &perr) || !proto.IsReason(err, proto.ReasonInvalidParams) || perr.Data == nil {
		return false
	}
	for _, f := range perr.Data.Fields {
		if f.Field == field {
			return true
		}
	}
	return false
}

// TestTerminalOutputEndsCleanly: the terminal's end (EIO on its master)
// is the end of the output, not a failure, and every byte printed
// before it arrives.
func TestTerminalOutputEndsCleanly(t *testing.T) {
	var log testenv.Buffer
	m := agent.NewExecs(agent.ExecOptions{Logger: slog.New(slog.NewTextHandler(&log, nil))})
	var out testenv.Buffer
	c, err := m.Start(proto.ExecStartParams{Argv: []string{"sh", "-c", "seq 1 20000"}, Tty: true}, agent.ExecIO{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	want := strings.ReplaceAll(seq(20000), "\n", "\r\n")
	if out.String() != want || c.Result().ExitCode != 0 {
		t.Fatalf("got %d bytes (want %d), result %+v", len(out.String()), len(want), c.Result())
	}
	if strings.Contains(log.String(), "level=WARN") {
		t.Fatalf("the agent warned:\n%s", log.String())
	}
}

func seq(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		b.WriteString(strconv.Itoa(i) + "\n")
	}
	return b.String()
}

// awaitForeground waits for the process running argv (exactly) to be
// its terminal's foreground job, and returns its pid.
func awaitForeground(t *testing.T, argv ...string) int {
	t.Helper()
	want := strings.Join(argv, "\x00") + "\x00"
	pid := 0
	testenv.Eventually(t, "a foreground "+strings.Join(argv, " "), func() bool {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline"); string(cmdline) != want {
				continue
			}
			// pid (comm) state ppid pgrp session tty_nr tpgid
			stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
			if len(f) > 5 && f[2] == f[5] {
				pid = n
				return true
			}
		}
		return false
	})
	return pid
}

// alive reports whether pid is a process that has not exited.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
