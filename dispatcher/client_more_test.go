package dispatcher_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// closedAddr is a loopback TCP address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestDialRefusals: every way a session is refused says why, with an
// error a caller can branch on.
func TestDialRefusals(t *testing.T) {
	b := startBoard(t, agent.Config{})
	addr := b.ws.URL()
	ctx := context.Background()
	pinned := dispatcher.NewKnownBoards("")
	if err := pinned.Pin(context.Background(), "test-board", fingerprint(t), false); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		addr  string
		opts  dispatcher.DialOptions
		check func(error) bool
		msg   string
	}{
		{"nobody listens", "ws://" + closedAddr(t), dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards("")},
			func(err error) bool {
				return !errors.Is(err, dispatcher.ErrBadAddress) && !errors.Is(err, dispatcher.ErrUntrusted)
			},
			"connection refused"},
		{"no way to check the key", addr, dispatcher.DialOptions{Token: labToken},
			func(err error) bool { return errors.Is(err, dispatcher.ErrUntrusted) }, "no way to check the board's key"},
		{"no credentials", addr, dispatcher.DialOptions{Trust: dispatcher.NewKnownBoards("")},
			func(err error) bool { return errors.Is(err, dispatcher.ErrNoCredentials) }, "boardlink pair test-board"},
		{"wrong token", addr, dispatcher.DialOptions{Token: "not-the-token-at-all", Trust: dispatcher.NewKnownBoards("")},
			func(err error) bool { return proto.IsReason(err, proto.ReasonUnauthorized) }, "refused the token"},
		{"host not paired", addr, dispatcher.DialOptions{HostKey: newKey(t), Trust: dispatcher.NewKnownBoards("")},
			func(err error) bool { return proto.IsReason(err, proto.ReasonUnauthorized) }, "refused this host's key"},
		{"key and token, both refused", addr, dispatcher.DialOptions{HostKey: newKey(t), Token: "not-the-token-at-all", Trust: dispatcher.NewKnownBoards("")},
			func(err error) bool { return proto.IsReason(err, proto.ReasonUnauthorized) }, "this host's key and the token"},
		{"another key wanted", addr, dispatcher.DialOptions{Token: labToken, Fingerprint: fingerprint(t)},
			func(err error) bool {
				var fe *dispatcher.FingerprintError
				return errors.As(err, &fe) && errors.Is(err, dispatcher.ErrUntrusted)
			},
			"board test-board showed key"},
		{"another board wanted", addr, dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards(""), BoardID: "lab-7"},
			func(err error) bool {
				var we *dispatcher.WrongBoardError
				return errors.As(err, &we) && we.Got == "test-board"
			},
			"wanted board lab-7, but test-board answered"},
		{"pinned with another key", addr, dispatcher.DialOptions{Token: labToken, Trust: pinned},
			func(err error) bool { var ke *dispatcher.KeyChangedError; return errors.As(err, &ke) }, "boardlink forget test-board"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dispatcher.Dial(ctx, tc.addr, tc.opts)
			if err == nil {
				c.Close()
				t.Fatal("dialled")
			}
			if !tc.check(err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want one that says %q", err, tc.msg)
			}
		})
	}
}

// TestDialNoAuthBoard: a board that serves without proofs (--no-auth)
// still proves its key, and needs no credentials.
func TestDialNoAuthBoard(t *testing.T) {
	b := startBoard(t, agent.Config{Auth: agent.AuthConfig{Key: newKey(t), NoAuth: true}})
	fp := b.agent.Fingerprint()
	c, err := dispatcher.Dial(context.Background(), b.ws.URL(), dispatcher.DialOptions{Fingerprint: fp})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Hello().Authenticated {
		t.Fatalf("hello %+v", c.Hello())
	}
}

// TestReconnect: a new connection replaces the old one, whose calls then
// fail; the board is the same boot.
func TestReconnect(t *testing.T) {
	b := startBoard(t, agent.Config{})
	for _, addr := range []string{b.ws.URL(), "unix://" + b.sock} {
		t.Run(addr[:4], func(t *testing.T) {
			ctx := context.Background()
			c := dial(t, addr)
			before, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			old := c.Conn()
			if err := c.Reconnect(ctx); err != nil {
				t.Fatal(err)
			}
			if err := old.Call(ctx, proto.MethodBoardInfo, nil, nil); !errors.Is(err, transport.ErrClosed) {
				t.Fatalf("a call on the replaced connection: %v", err)
			}
			after, err := c.Info(ctx)
			if err != nil || after.BootID != before.BootID || after.ID != "test-board" {
				t.Fatalf("after reconnect: %+v %v", after, err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Info(ctx); !errors.Is(err, transport.ErrClosed) {
				t.Fatalf("info after close: %v", err)
			}
		})
	}
}

// TestDialLine: a session over a byte stream the caller opened; text on
// the line outside frames (a boot log) is console text, kept and copied.
func TestDialLine(t *testing.T) {
	b := startBoard(t, agent.Config{})
	host, board := net.Pipe()
	const bootLog = "U-Boot 2024.01\nStarting kernel ...\n"
	srv := agent.NewLineSerialServer(b.agent, "pipe", board)
	started := make(chan error, 1)
	go func() {
		// The boot log comes first, then the agent.
		if _, err := board.Write([]byte(bootLog)); err != nil {
			started <- err
			return
		}
		started <- srv.Start(context.Background())
	}()
	var console bytes.Buffer
	c, err := dispatcher.DialLine(context.Background(), host, dispatcher.DialOptions{Token: labToken,
		Trust: dispatcher.NewKnownBoards(""), Console: &console})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(context.Background()) })
	if h := c.Hello(); h.BoardID != "test-board" || !h.Authenticated {
		t.Fatalf("hello %+v", h)
	}
	if err := c.Close(); err != nil { // returns once the console text is out
		t.Fatal(err)
	}
	if got := string(c.ConsoleSince(0)); got != bootLog || console.String() != bootLog {
		t.Fatalf("console kept %q, copied %q", got, console.String())
	}
	if got := c.ConsoleSince(c.ConsoleMark()); len(got) != 0 {
		t.Fatalf("since the last mark: %q", got)
	}
	ws := dial(t, b.ws.URL())
	if ws.ConsoleMark() != 0 || ws.ConsoleSince(0) != nil {
		t.Fatal("a WebSocket client has a console")
	}
}

// TestExecStreams: stdin, stdout and stderr stay apart; env and cwd reach
// the command; the log keeps both commands, newest first.
// failAfter takes n bytes, then fails every write.
type failAfter struct {
	n   int
	err error
}

func (w *failAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, w.err
	}
	w.n -= len(p)
	return len(p), nil
}

// TestExecOutputWriterFails: a writer of the command's output that fails
// ends that copy and resets the stream: the board drops the rest, the
// command is not held up by a window nobody opens again (its 8 MiB are
// far beyond it) and ends, and Exec returns its record with an
// *OutputError naming the stream and the writer's error; the other
// stream is copied whole. The same for Shell's terminal. Before, both
// waited for ever.
func TestExecOutputWriterFails(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	full := errors.New("no space left on the test's writer")
	var stderr bytes.Buffer
	res, err := c.Exec(context.Background(), dispatcher.ExecRequest{Argv: []string{"sh", "-c",
		`head -c 8388608 /dev/zero; echo done >&2; exit 3`}, Stdout: &failAfter{n: 100 << 10, err: full}, Stderr: &stderr})
	var oe *dispatcher.OutputError
	if !errors.As(err, &oe) || oe.Stream != "stdout" || !errors.Is(err, full) || res.ExitCode != 3 || stderr.String() != "done\n" {
		t.Fatalf("got %+v, %v; stderr %q", res, err, stderr.String())
	}
	log, err := c.ExecLog(context.Background(), 1)
	if err != nil || len(log) != 1 || log[0].StdoutBytes != 8<<20 {
		t.Fatalf("the board's record: %+v %v", log, err)
	}
	// The same on a terminal.
	res, err = c.Shell(context.Background(), dispatcher.ShellRequest{Argv: []string{"sh", "-c",
		`head -c 8388608 /dev/zero; exit 4`}, Stdout: &failAfter{n: 100 << 10, err: full}})
	if !errors.As(err, &oe) || oe.Stream != "terminal output" || !errors.Is(err, full) || res.ExitCode != 4 {
		t.Fatalf("on a terminal: got %+v, %v", res, err)
	}
}

func TestExecStreams(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ctx := context.Background()
	var stdout, stderr bytes.Buffer
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c", `tr a-z A-Z; echo "$X $(pwd)" >&2; exit 3`},
		Env: map[string]string{"X": "env"}, Cwd: b.dir, Stdin: strings.NewReader("hello"), Stdout: &stdout, Stderr: &stderr})
	if err != nil || res.ExitCode != 3 || stdout.String() != "HELLO" || stderr.String() != "env "+b.dir+"\n" {
		t.Fatalf("got %+v %v, stdout %q stderr %q", res, err, stdout.String(), stderr.String())
	}
	res, err = c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"echo $((6*7))"}, Shell: true, Stdout: &stdout})
	if err != nil || res.ExitCode != 0 || !strings.HasSuffix(stdout.String(), "42\n") {
		t.Fatalf("shell: %+v %v %q", res, err, stdout.String())
	}
	if err := c.Cancel(ctx, "no-such-command", "KILL"); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Fatalf("cancel of nothing: %v", err)
	}
	log, err := c.ExecLog(ctx, 0)
	if err != nil || len(log) != 2 || log[0].ExitCode != 0 || log[1].ExitCode != 3 {
		t.Fatalf("log %+v %v", log, err)
	}
}
