package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// serveUnix starts a serial server on a unix socket and returns its path.
func (h *harness) serveUnix(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "serial.sock")
	s := agent.NewUnixSerialServer(h.agent, path)
	h.startSerial(t, s)
	return path
}

// servePTY has the agent serve the slave side of a new pty, opened by path
// as a serial port, and returns the master.
func (h *harness) servePTY(t testing.TB) *os.File {
	t.Helper()
	master, slave := testenv.RawPTY(t)
	s := agent.NewSerialServer(h.agent, slave.Name(), 115200)
	h.startSerial(t, s)
	return master
}

func (h *harness) startSerial(t testing.TB, s *agent.SerialServer) {
	t.Helper()
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("serial stop: %v", err)
		}
	})
}

// relay copies between a pty master and the board's end of a simulated
// line, so the agent's real serial port sees a noisy UART.
func relay(master *os.File, board io.ReadWriter) {
	go io.Copy(board, master)
	go io.Copy(master, board)
}

func TestNoisyLineThousandCommands(t *testing.T) {
	n := 100 // the thousand with BOARDLINK_E2E=1, as CI runs it
	if testenv.E2E() && !testing.Short() {
		n = 1000
	}
	h := newHarness(t, "noisy-token")
	master := h.servePTY(t)
	line := linetest.New(linetest.Config{Corrupt: 0.001, Drop: 0.0005, Inject: 0.02, Seed: 7})
	relay(master, line.Board())
	var console testenv.Buffer
	ctx := context.Background()
	opts := h.opts()
	opts.Console = &console
	c, err := dispatcher.DialLine(ctx, line.Host(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer master.Close()
	for i := range n {
		want := fmt.Sprintf("command %d says %s", i, strings.Repeat("x", i%200))
		o := run(t, c, dispatcher.ExecRequest{Argv: []string{"sh", "-c", `echo "$1"; echo "$1" >&2; exit $(($2 % 256))`, "sh", want, fmt.Sprint(i)}})
		if o.stdout != want+"\n" || o.stderr != want+"\n" || o.res.ExitCode != i%256 {
			t.Fatalf("command %d: stdout %q stderr %q exit %d", i, o.stdout, o.stderr, o.res.ExitCode)
		}
	}
	st := line.Stats()
	t.Logf("%d commands: %d bytes corrupted, %d dropped, %d console lines injected", n, st.Corrupted, st.Dropped, st.Lines)
	if st.Corrupted == 0 || st.Lines == 0 {
		t.Fatalf("the line was not noisy: %+v", st)
	}
	// Every injected console line reaches the console stream, in order.
	// Close returns once the console text seen so far is written out.
	c.Close()
	got := console.String()
	for _, text := range line.Injected() {
		i := strings.Index(got, text)
		if i < 0 {
			t.Fatalf("injected console text %q missing from the console stream", text)
		}
		got = got[i+len(text):]
	}
}

func TestSerialNeedsToken(t *testing.T) {
	h := newHarness(t, "serial-secret-of-the-board")
	path := h.serveUnix(t)
	ctx := context.Background()
	// A raw session: every method but session.hello is refused until a
	// hello brings the token (as a client older than protocol 4 does).
	line, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ep := seriallink.NewEndpoint(line, seriallink.Config{})
	defer ep.Close()
	link, err := ep.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(link, transport.Config{Client: true})
	c.Start()
	defer c.Close()
	if err := c.Call(ctx, proto.MethodBoardInfo, nil, nil); !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("board.info before hello: %v", err)
	}
	if err := c.Call(ctx, proto.MethodExecStart, proto.ExecStartParams{Argv: []string{"true"}}, nil); !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("exec.start before hello: %v", err)
	}
	if err := c.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: 1, Token: "serial-secret-of-the-board"}, nil); err != nil {
		t.Fatal(err)
	}
	var info proto.BoardInfo
	if err := c.Call(ctx, proto.MethodBoardInfo, nil, &info); err != nil || info.ID != "test-board" {
		t.Fatalf("board.info after hello: %+v %v", info, err)
	}
	wrong := h.opts()
	wrong.Token = "not-the-serial-secret"
	_, err = dispatcher.Dial(ctx, "unix://"+path, wrong)
	if !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("wrong token over serial: %v", err)
	}
	// The line is locked out for a while: even the right token waits.
	_, err = dispatcher.Dial(ctx, "unix://"+path, h.opts())
	if !proto.IsReason(err, proto.ReasonUnauthorized) || !strings.Contains(err.Error(), "retry in") {
		t.Fatalf("right token right after a wrong one: %v, want a lockout", err)
	}
}

// TestSerialGarbage feeds the agent's line random bytes, truncated and
// corrupted frames: the agent keeps beaconing and serves the next session.
func TestSerialGarbage(t *testing.T) {
	testenv.CheckLeaks(t)
	h := newHarness(t, "")
	path := h.serveUnix(t)
	ctx := context.Background()
	frame := beaconFrame(t, path)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 3 {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, 4096)
		for i := range junk {
			junk[i] = byte(rng.IntN(256))
		}
		corrupt := append([]byte(nil), frame...)
		corrupt[len(corrupt)/2] ^= 0x55
		for _, g := range [][]byte{junk, {0x00, 0xFE, 0x81}, frame[:len(frame)/2], corrupt} {
			if _, err := conn.Write(g); err != nil {
				t.Fatalf("round %d: agent dropped the line: %v", round, err)
			}
		}
		c, err := dispatcher.DialLine(ctx, conn, h.opts())
		if err != nil {
			t.Fatalf("round %d: no session after garbage: %v", round, err)
		}
		o := run(t, c, dispatcher.ExecRequest{Argv: []string{"echo", "still here"}})
		c.Close()
		if o.stdout != "still here\n" {
			t.Fatalf("round %d: %q", round, o.stdout)
		}
	}
}

// beaconFrame returns one whole frame (0x00 0xFE ... 0x00) the agent sent on
// a fresh line: a beacon, to cut into truncated and corrupted frames.
func beaconFrame(t *testing.T, path string) []byte {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // give up rather than hang
	var seen []byte
	buf := make([]byte, 512)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no beacon from the agent: %v", err)
		}
		seen = append(seen, buf[:n]...)
		if start := bytes.Index(seen, []byte{0x00, 0xFE}); start >= 0 {
			if end := bytes.IndexByte(seen[start+2:], 0); end >= 0 {
				return seen[start : start+2+end+1]
			}
		}
	}
}
