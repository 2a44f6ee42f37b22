package service

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/testenv"
)

// streamRun is an ExecStream under way.
type streamRun struct {
	out, errOut testenv.Buffer
	done        chan struct{}
	outcome     ExecOutcome
	err         error
}

func startStream(ctx context.Context, c *Client, board, lease string, r ExecStreamRequest, sio ExecIO) *streamRun {
	run := &streamRun{done: make(chan struct{})}
	sio.Stdout, sio.Stderr = &run.out, &run.errOut
	go func() {
		defer close(run.done)
		run.outcome, run.err = c.ExecStream(ctx, board, lease, r, sio)
	}()
	return run
}

func (r *streamRun) wait(t *testing.T) (ExecOutcome, error) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		t.Fatalf("the command did not end; its output: %q %q", r.out.String(), r.errOut.String())
	}
	return r.outcome, r.err
}

// awaitOutput waits until the command printed want.
func (r *streamRun) awaitOutput(t *testing.T, want string) {
	t.Helper()
	testenv.Eventually(t, "the command to print "+want, func() bool {
		select {
		case <-r.done:
			t.Fatalf("the command ended before it printed %q: %q %v", want, r.out.String(), r.err)
		default:
		}
		return strings.Contains(r.out.String(), want)
	})
}

// TestExecStream: a real service, a real sim board's agent and a real
// WebSocket: stdin reaches the command, stdout and stderr stay apart,
// exit codes pass through; on a terminal what is typed reaches it,
// `stty size` follows each resize and argv ["-"] is the login shell; a
// client that cancels gets the command's record; a bad start is refused;
// every stream is in the audit log.
func TestExecStream(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	ctx := context.Background()
	alice := l.clients["alice"]
	id := l.sim.Boards[0].ID

	t.Run("stdin and exit code", func(t *testing.T) {
		r := startStream(ctx, alice, id, "", ExecStreamRequest{ExecRequest: ExecRequest{Shell: true,
			Argv: []string{`tr a-z A-Z; echo to-stderr >&2; exit 42`}}},
			ExecIO{Stdin: strings.NewReader("hello through the service\n")})
		out, err := r.wait(t)
		if err != nil || out.Result.ExitCode != 42 || out.Canceled != "" {
			t.Fatalf("%+v %v", out, err)
		}
		if r.out.String() != "HELLO THROUGH THE SERVICE\n" || r.errOut.String() != "to-stderr\n" {
			t.Fatalf("stdout %q, stderr %q", r.out.String(), r.errOut.String())
		}
	})

	t.Run("large stdin", func(t *testing.T) {
		// More than one message of input, and more than the pipes hold.
		in := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
		r := startStream(ctx, alice, id, "", ExecStreamRequest{ExecRequest: ExecRequest{Argv: []string{"wc", "-c"}}},
			ExecIO{Stdin: strings.NewReader(in)})
		out, err := r.wait(t)
		if err != nil || out.Result.ExitCode != 0 || strings.TrimSpace(r.out.String()) != "1048576" {
			t.Fatalf("%+v %v: %q", out, err, r.out.String())
		}
	})

	t.Run("terminal", func(t *testing.T) {
		typed, typing := io.Pipe()
		defer typing.Close()
		sizes := make(chan dispatcher.Size, 1)
		r := startStream(ctx, alice, id, "", ExecStreamRequest{Tty: true, Term: "vt220", Rows: 33, Cols: 101,
			ExecRequest: ExecRequest{Shell: true, Argv: []string{
				`stty size; echo "T=$TERM"; read line; echo "got $line"; ` +
					`sleep 100000 & trap 'stty size; kill $!; exit 3' WINCH; echo ready; while :; do wait; done`}}},
			ExecIO{Stdin: typed, Resize: sizes})
		r.awaitOutput(t, "33 101\r\nT=vt220\r\n")
		if _, err := typing.Write([]byte("typed words\r")); err != nil {
			t.Fatal(err)
		}
		r.awaitOutput(t, "got typed words\r\n")
		r.awaitOutput(t, "ready")
		sizes <- dispatcher.Size{Rows: 40, Cols: 120}
		out, err := r.wait(t)
		if err != nil || out.Result.ExitCode != 3 {
			t.Fatalf("%+v %v: %q", out, err, r.out.String())
		}
		if !strings.Contains(r.out.String(), "40 120\r\n") {
			t.Fatalf("no new size: %q", r.out.String())
		}
	})

	t.Run("login shell", func(t *testing.T) {
		// A home of its own: the shell reads no profile of the user's.
		r := startStream(ctx, alice, id, "", ExecStreamRequest{Tty: true, ExecRequest: ExecRequest{Argv: []string{"-"},
			Env: map[string]string{"HOME": t.TempDir()}}}, ExecIO{Stdin: strings.NewReader("echo zero=$0; exit 5\n")})
		out, err := r.wait(t)
		if err != nil || out.Result.ExitCode != 5 || !strings.Contains(r.out.String(), "zero=-") {
			t.Fatalf("%+v %v: %q", out, err, r.out.String())
		}
	})

	t.Run("canceled by the client", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		r := startStream(cctx, alice, id, "", ExecStreamRequest{ExecRequest: ExecRequest{Shell: true,
			Argv: []string{"echo ready; exec sleep 100000"}}}, ExecIO{})
		r.awaitOutput(t, "ready")
		cancel()
		out, err := r.wait(t)
		if err != nil || out.Result.Signal != "TERM" || !strings.Contains(out.Canceled, "canceled by the client") {
			t.Fatalf("%+v %v", out, err)
		}
	})

	t.Run("bad start", func(t *testing.T) {
		_, err := alice.ExecStream(ctx, id, "", ExecStreamRequest{ExecRequest: ExecRequest{Argv: []string{"true"}},
			Term: "with space"}, ExecIO{})
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || len(ae.Fields) == 0 || ae.Fields[0].Field != "start.term" {
			t.Fatalf("%#v", err)
		}
	})

	// Each is recorded once its handler has returned, after the client had
	// its answer.
	var es []store.AuditEntry
	testenv.Eventually(t, "the six streams in the audit log", func() bool {
		var err error
		es, err = l.svc.Audit(ctx, store.AuditFilter{Board: id, Action: "board.exec", User: "alice"})
		return err == nil && len(es) == 6
	})
	var tty, canceled, bad bool
	for _, e := range es {
		tty = tty || strings.HasPrefix(e.Detail, "tty: stty size")
		canceled = canceled || strings.Contains(e.Detail, "canceled: canceled by the client")
		bad = bad || strings.HasPrefix(e.Detail, "no start: ")
	}
	if !tty || !canceled || !bad {
		t.Fatalf("audit: %+v", es)
	}
}

// TestExecStreamLeases: on a board a lease holds, another user's stream
// is refused before the upgrade with the holder and the expiry; the
// holder's runs, and the lease's expiry ends it; no token, no stream.
func TestExecStreamLeases(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	ctx := context.Background()
	alice, bob := l.clients["alice"], l.clients["bob"]
	id := l.sim.Boards[0].ID
	held, err := acquire(ctx, bob, AcquireRequest{Boards: []string{id}, TTLMs: 1500})
	if err != nil {
		t.Fatal(err)
	}
	_, err = alice.ExecStream(ctx, id, "", ExecStreamRequest{ExecRequest: ExecRequest{Argv: []string{"true"}}}, ExecIO{})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Reason != ReasonLeased || ae.Leased == nil ||
		ae.Leased.Holder != "bob" || ae.Leased.Lease != held.ID || ae.Leased.Expires.IsZero() {
		t.Fatalf("another user's stream on a leased board: %#v", err)
	}
	// Bob does not renew: the lease expires while his command runs.
	r := startStream(ctx, bob, id, held.ID, ExecStreamRequest{Tty: true, ExecRequest: ExecRequest{Shell: true,
		Argv: []string{"echo ready; exec sleep 100000"}}}, ExecIO{})
	r.awaitOutput(t, "ready")
	out, err := r.wait(t)
	if err != nil || out.Result.Signal != "TERM" || !strings.Contains(out.Canceled, "lease "+held.ID+" expired") {
		t.Fatalf("%+v %v", out, err)
	}
	l.audited(id, "board.exec", "canceled: lease "+held.ID)

	req, err := http.NewRequest("GET", "ws"+strings.TrimPrefix(l.srv.URL, "http")+"/api/v1/boards/"+id+"/exec/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err := websocket.DefaultDialer.Dial(req.URL.String(), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a token: %v %v", resp, err)
	}
}

// shortClocks sets the exec stream's clocks to a few hundred
// milliseconds for the test, back after the lab's cleanup (call it first).
func shortClocks(t *testing.T) {
	p, i, w := streamPing, streamIdle, writeWait
	t.Cleanup(func() { streamPing, streamIdle, writeWait = p, i, w })
	streamPing, streamIdle, writeWait = 50*time.Millisecond, 300*time.Millisecond, 150*time.Millisecond
}

// TestExecStreamInputWaits: a command that leaves its input unread for a
// while (here a second and a half, five times the stream's clocks,
// shortened for the test) still gets all of it. The input waits in the
// client's socket meanwhile, the service reading none: neither the
// client's write of it nor the service's silence toward the client ends
// the stream, and the pings go on being answered.
func TestExecStreamInputWaits(t *testing.T) {
	shortClocks(t)
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	const size = 32 << 20 // more than the sockets and pipes on the way hold
	r := startStream(context.Background(), l.clients["alice"], l.sim.Boards[0].ID, "", ExecStreamRequest{
		ExecRequest: ExecRequest{Shell: true, Argv: []string{"sleep 1.5; wc -c"}}},
		ExecIO{Stdin: strings.NewReader(strings.Repeat("x", size))})
	out, err := r.wait(t)
	if err != nil || out.Result.ExitCode != 0 || strings.TrimSpace(r.out.String()) != strconv.Itoa(size) {
		t.Fatalf("%+v %v: %q %q", out, err, r.out.String(), r.errOut.String())
	}
}

// slowReader is a client's output that takes a while over its first
// write: a pager, a terminal on hold.
type slowReader struct {
	n     int
	first bool
}

func (s *slowReader) Write(p []byte) (int, error) {
	if !s.first {
		s.first = true
		time.Sleep(1500 * time.Millisecond)
	}
	s.n += len(p)
	return len(p), nil
}

// TestExecStreamOutputWaits: a client that reads no output for a while
// (a second and a half, five times the shortened clocks) gets all of it:
// the service's writes of output wait in its socket meanwhile, and the
// client's own wait is no silence of the service's.
func TestExecStreamOutputWaits(t *testing.T) {
	shortClocks(t)
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	const size = 32 << 20
	var slow slowReader
	out, err := l.clients["alice"].ExecStream(context.Background(), l.sim.Boards[0].ID, "", ExecStreamRequest{
		ExecRequest: ExecRequest{Argv: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}}}, ExecIO{Stdout: &slow})
	if err != nil || out.Result.ExitCode != 0 || slow.n != size {
		t.Fatalf("%+v %v: %d bytes of %d", out, err, slow.n, size)
	}
}

// TestExecStreamClientGone: a client whose connection goes silent (a
// relay on the way stops moving bytes either way, the socket left open)
// while the service's writes of output wait for it is taken for gone once
// it has not been heard (no ping) for the silence bound: the command is
// canceled and the audit log says the client left.
func TestExecStreamClientGone(t *testing.T) {
	shortClocks(t)
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	relay, addr := startFrozenRelay(t, l.srv.URL)
	c, err := NewClient(addr, l.tokens["alice"], nil)
	if err != nil {
		t.Fatal(err)
	}
	id := l.sim.Boards[0].ID
	r := startStream(context.Background(), c, id, "", ExecStreamRequest{ExecRequest: ExecRequest{Argv: []string{"yes"}}}, ExecIO{})
	r.awaitOutput(t, "y\ny\n")
	relay.freeze()
	l.audited(id, "board.exec", errClientLeft.Error())
	// The client hears nothing through the frozen relay either, and gives
	// up (waited for: its goroutines read the clocks shortClocks restores).
	if out, err := r.wait(t); err == nil {
		t.Fatalf("the client, through a frozen relay: %+v", out)
	}
}

// TestWSWriterFailureKeepsReading: a peer that sent its last messages
// and closed makes the other end's next writes fail (its socket answers
// them with a reset). The writer stops and says so, and leaves the
// socket open: the messages already received are all still read. (An
// exec stream's client lost the tail of a command's output so, when a
// pong to a service that had closed failed before it had read it all.)
func TestWSWriterFailureKeepsReading(t *testing.T) {
	const n, size = 8, 8 << 10 // within the sockets' buffers
	closed := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := streamUpgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer close(closed)
		defer ws.Close()
		for i := range n {
			if ws.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte{byte(i)}, size)) != nil {
				return
			}
		}
		_ = ws.WriteMessage(websocket.TextMessage, []byte("end"))
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	<-closed
	failed := make(chan error, 1)
	w := newWSWriter(ws, 0, 0, func(err error) { failed <- err })
	for w.send(websocket.TextMessage, []byte("pong")) == nil {
	}
	if err := <-failed; err == nil {
		t.Fatal("the writer stopped without a failure")
	}
	for i := range n {
		kind, raw, err := ws.ReadMessage()
		if err != nil || kind != websocket.BinaryMessage || !bytes.Equal(raw, bytes.Repeat([]byte{byte(i)}, size)) {
			t.Fatalf("message %d after the writer failed: %d, %d bytes, %v", i, kind, len(raw), err)
		}
	}
	if kind, raw, err := ws.ReadMessage(); err != nil || kind != websocket.TextMessage || string(raw) != "end" {
		t.Fatalf("the last message: %d %q %v", kind, raw, err)
	}
}
