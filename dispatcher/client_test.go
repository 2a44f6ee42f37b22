package dispatcher_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

func TestDialAddresses(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		addr string
		want error
	}{
		{"board-7", dispatcher.ErrNeedsDiscovery},
		{"gopher://x", dispatcher.ErrBadAddress},
		{"serial:///dev/ttyUSB0?baud=fast", dispatcher.ErrBadAddress},
		{"serial:///dev/ttyUSB0?baud=-3", dispatcher.ErrBadAddress},
	}
	for _, tc := range tests {
		if _, err := dispatcher.Dial(ctx, tc.addr, dispatcher.DialOptions{}); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.addr, err, tc.want)
		}
	}
}

// TestExecCancelEndsCommandOnBoard: canceling Exec's context sends TERM to
// the command on the board and still returns its final record, after
// the output it wrote on its way out.
func TestExecCancelEndsCommandOnBoard(t *testing.T) {
	testenv.CheckLeaks(t)
	b, err := sim.Open(t.TempDir(), sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	execs := agent.NewExecs(agent.ExecOptions{})
	_, key, _ := ed25519.GenerateKey(nil)
	token := "client-test-token-0123456789"
	ws := agent.NewWebSocketServer(agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: key,
		Tokens: []agent.Token{{Name: "test", Value: token}}}}), "127.0.0.1:0")
	if err := ws.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ws.Stop(context.Background())
		execs.Shutdown(context.Background())
	})
	c, err := dispatcher.Dial(context.Background(), ws.URL(), dispatcher.DialOptions{Token: token, Trust: dispatcher.NewKnownBoards("")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if h := c.Hello(); h.BoardID != b.Identity().ID || h.Protocol != proto.Version {
		t.Fatalf("hello %+v", h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	rest := make(chan string, 1)
	go func() {
		// Cancel once the command has printed, so it is surely running.
		r := bufio.NewReader(pr)
		line, _ := r.ReadString('\n')
		if line == "ready\n" {
			cancel()
		}
		b, _ := io.ReadAll(r)
		rest <- string(b)
	}()
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c",
		`trap 'echo last-words; trap - TERM; kill -TERM $$' TERM; echo ready; sleep 1000 & wait`}, Stdout: pw})
	pw.Close()
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	// What it said on its way out is not lost to the record that came first.
	if out := <-rest; out != "last-words\n" {
		t.Errorf("output after the cancel %q, want the command's last words", out)
	}
	if !res.Canceled || res.Signal != "TERM" {
		t.Fatalf("result %+v, want canceled by TERM", res)
	}
	log, err := c.ExecLog(context.Background(), 1)
	if err != nil || len(log) != 1 || log[0].Running {
		t.Fatalf("log %+v %v", log, err)
	}
}
