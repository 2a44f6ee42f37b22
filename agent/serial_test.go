package agent_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// serveUnix starts a serial server on a unix socket and returns its path.
func (h *harness) serveUnix(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "serial.sock")
	s := agent.NewUnixSerialServer(h.agent, path)
	h.startSerial(t, s)
	return path
}

// servePTY has the agent serve the slave side of a new pty, opened by path
// as a serial port, and returns the master.
func (h *harness) servePTY(t *testing.T) *os.File {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pty here: %v", err) // BOARDLINK_E2E makes this fatal, see TestMain
	}
	s := agent.NewSerialServer(h.agent, slave.Name(), 115200)
	h.startSerial(t, s)
	slave.Close() // the agent holds its own descriptor
	return master
}

func (h *harness) startSerial(t *testing.T, s *agent.SerialServer) {
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

// consoleSink collects the console text the client sees.
type consoleSink struct {
	mu sync.Mutex
	b  strings.Builder
}

func (c *consoleSink) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Write(p)
}

func (c *consoleSink) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

func TestNoisyLineThousandCommands(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	h := newHarness(t, "noisy-token")
	master := h.servePTY(t)
	line := linetest.New(linetest.Config{Corrupt: 0.001, Drop: 0.0005, Inject: 0.02, Seed: 7})
	relay(master, line.Board())
	var console consoleSink
	ctx := context.Background()
	c, err := dispatcher.DialLine(ctx, line.Host(), dispatcher.DialOptions{Token: "noisy-token", Console: &console})
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
	h := newHarness(t, "serial-secret")
	path := h.serveUnix(t)
	ctx := context.Background()
	_, err := dispatcher.Dial(ctx, "unix://"+path, dispatcher.DialOptions{Token: "nope"})
	if !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("wrong token over serial: %v", err)
	}
	// A session that skips hello is refused method by method.
	c, err := dispatcher.Dial(ctx, "unix://"+path, dispatcher.DialOptions{Token: "serial-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Info(ctx); err != nil {
		t.Fatal(err)
	}
}
