package agent_test

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// TestRebootAnswersFirst: system.reboot answers with the ending boot id
// before the board's Reboot runs, once; a second request is busy.
func TestRebootAnswersFirst(t *testing.T) {
	b, err := sim.Open(t.TempDir(), sim.Options{ID: "rebooter"})
	if err != nil {
		t.Fatal(err)
	}
	m := agent.NewExecs(agent.ExecOptions{})
	answered := make(chan struct{})
	rebooted := make(chan bool, 2)
	_, key, _ := ed25519.GenerateKey(nil)
	a := agent.New(b, m, agent.Config{Auth: agent.AuthConfig{Key: key, NoAuth: true}, Reboot: func() {
		select {
		case <-answered:
			rebooted <- true
		case <-time.After(10 * time.Second):
			rebooted <- false
		}
	}})
	ws := agent.NewWebSocketServer(a, "127.0.0.1:0")
	if err := ws.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ws.Stop(context.Background())
		m.Shutdown(context.Background())
	})
	c, err := dispatcher.Dial(context.Background(), ws.URL(), dispatcher.DialOptions{Trust: dispatcher.NewKnownBoards("")})
	c = connected(t, c, err)
	if !hasCap(c.Hello().Capabilities, proto.CapReboot) {
		t.Fatalf("capabilities %v lack %q", c.Hello().Capabilities, proto.CapReboot)
	}
	ctx := ctxTimeout(t, time.Minute)
	res, err := c.Reboot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	close(answered)
	if res.BootID != b.BootID() {
		t.Fatalf("reboot answered boot %q, want the running one %q", res.BootID, b.BootID())
	}
	if ok := <-rebooted; !ok {
		t.Fatal("Reboot ran before the answer arrived")
	}
	// The busy answer is the guard itself: the agent hands the board to
	// Reboot only after an answer that is not busy.
	if _, err := c.Reboot(ctx); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("second reboot: %v, want busy", err)
	}
}
