package dispatcher_test

import (
	"context"
	"net"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// TestDialWait: DialWait keeps trying a board that does not answer yet,
// telling each failed attempt, and connects once its agent is up; a
// board that refuses the credentials ends it at once.
func TestDialWait(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing answers there until the agent starts
	b, err := sim.Open(t.TempDir(), sim.Options{ID: "late-board"})
	if err != nil {
		t.Fatal(err)
	}
	a := agent.New(b, agent.NewExecs(agent.ExecOptions{}), agent.Config{
		Auth: agent.AuthConfig{Key: newKey(t), Tokens: []agent.Token{{Name: "test", Value: labToken}}}})
	ws := agent.NewWebSocketServer(a, addr)
	t.Cleanup(func() { ws.Stop(context.Background()) })
	failed := make(chan dispatcher.WaitProgress, 100)
	started := make(chan error, 1)
	go func() {
		first := <-failed
		if first.Attempts != 1 || first.Err == nil {
			t.Errorf("first attempt: %+v", first)
		}
		started <- ws.Start(context.Background())
	}()
	opts := dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards("")}
	c, err := dispatcher.DialWait(context.Background(), addr, opts,
		dispatcher.WaitOptions{Progress: func(p dispatcher.WaitProgress) { failed <- p }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	if c.Hello().BoardID != "late-board" {
		t.Fatalf("connected to %q", c.Hello().BoardID)
	}

	opts.Token = "not-the-lab-token"
	attempts := 0
	_, err = dispatcher.DialWait(context.Background(), addr, opts,
		dispatcher.WaitOptions{Progress: func(dispatcher.WaitProgress) { attempts++ }})
	if !proto.IsReason(err, proto.ReasonUnauthorized) || attempts != 0 {
		t.Fatalf("a refused token: %v after %d retries, want unauthorized at once", err, attempts)
	}
}
