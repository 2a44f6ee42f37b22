package dispatcher_test

import (
	"context"
	"crypto/ed25519"
	"path/filepath"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// testBoard is a sim board's agent in this process: a WebSocket server on
// 127.0.0.1 and a serial-framed line on a unix socket, both accepting
// labToken. Its file root is its state directory.
type testBoard struct {
	sim   *sim.Board
	agent *agent.Agent
	dir   string
	ws    *agent.WebSocketServer
	sock  string // the serial line's unix socket
}

func startBoard(t *testing.T, cfg agent.Config) *testBoard {
	t.Helper()
	dir := t.TempDir()
	b, err := sim.Open(dir, sim.Options{ID: "test-board"})
	if err != nil {
		t.Fatal(err)
	}
	execs := agent.NewExecs(agent.ExecOptions{})
	if cfg.Auth.Key == nil {
		cfg.Auth = agent.AuthConfig{Key: newKey(t), Tokens: []agent.Token{{Name: "test", Value: labToken}}}
	}
	if cfg.Roots == nil {
		cfg.Roots = []string{dir}
	}
	a := agent.New(b, execs, cfg)
	tb := &testBoard{sim: b, agent: a, dir: dir, ws: agent.NewWebSocketServer(a, "127.0.0.1:0"),
		sock: filepath.Join(dir, "serial.sock")}
	serial := agent.NewUnixSerialServer(a, tb.sock)
	for _, s := range []interface{ Start(context.Context) error }{tb.ws, serial} {
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		serial.Stop(ctx)
		tb.ws.Stop(ctx)
		execs.Shutdown(ctx)
	})
	return tb
}

// dial opens a session with the board at addr with the test token.
func dial(t *testing.T, addr string) *dispatcher.Client {
	t.Helper()
	c, err := dispatcher.Dial(context.Background(), addr, dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards("")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// servePTY runs an agent for board id on the board's side of a pty and
// returns the host's side, a serial port by path.
func servePTY(t *testing.T, id string) string {
	t.Helper()
	b, err := sim.Open(t.TempDir(), sim.Options{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	execs := agent.NewExecs(agent.ExecOptions{})
	a := agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: newKey(t), Tokens: []agent.Token{{Name: "t", Value: labToken}}}})
	master, slave := testenv.RawPTY(t)
	s := agent.NewLineSerialServer(a, "pty", master)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		slave.Close() // the master's blocked read returns once the slave side goes
		s.Stop(context.Background())
		execs.Shutdown(context.Background())
	})
	return slave.Name()
}
