package service

import (
	"context"
	"crypto/ed25519"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestConsoleRecorded: the service records the console text of a board
// on a serial line (here a pty, as a USB serial port is) while it holds
// its session, and serves it by time; a board on the network has none.
func TestConsoleRecorded(t *testing.T) {
	dir := t.TempDir()
	b, err := sim.Open(filepath.Join(dir, "board"), sim.Options{ID: "uart-board"})
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	execs := agent.NewExecs(agent.ExecOptions{})
	a := agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "t", Value: "uart-token"}}}})
	master, slave := testenv.RawPTY(t)
	srv := agent.NewLineSerialServer(a, "pty", master)
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		slave.Close()
		srv.Stop(context.Background())
		execs.Shutdown(context.Background())
	})

	tok := filepath.Join(dir, "board.token")
	writeSecret(t, tok, "uart-token")
	userTok := filepath.Join(dir, "alice.token")
	writeSecret(t, userTok, "token-of-alice")
	cfg := Config{TokenFile: tok, Heartbeat: Duration(200 * time.Millisecond), QuarantineAfter: -1,
		Users:  []UserConfig{{Name: "alice", TokenFile: userTok}},
		Boards: []BoardConfig{{ID: "uart-board", Address: "serial://" + slave.Name()}}}
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "lab.db"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(ctx, Options{Config: cfg, Store: st, Trust: dispatcher.NewKnownBoards("")})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(svc.Handler())
	t.Cleanup(func() {
		hs.Close()
		svc.Stop(context.Background())
		st.Close()
	})
	c, err := NewClient(hs.URL, "token-of-alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the board idle", func() bool {
		got, err := c.Board(ctx, "uart-board")
		return err == nil && got.State == Idle && got.Console
	})
	// The kernel writes on the line between the agent's frames.
	if _, err := master.WriteString("[   12.345678] usb 1-1: new high-speed USB device\r\n"); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	testenv.Eventually(t, "the console line recorded", func() bool {
		text.Reset()
		if err := c.Console(ctx, "uart-board", "5m", false, &text); err != nil {
			t.Fatal(err)
		}
		return strings.Contains(text.String(), "usb 1-1: new high-speed USB device")
	})
	// Nothing recorded after it: a time past it gives none of it.
	text.Reset()
	if err := c.Console(ctx, "uart-board", time.Now().Add(time.Hour).Format(time.RFC3339), false, &text); err != nil || text.Len() != 0 {
		t.Fatalf("%q %v", text.String(), err)
	}
	if err := c.Console(ctx, "uart-board", "bad", false, &text); !strings.Contains(errString(err), "since") {
		t.Fatalf("%v", err)
	}

	// Followed: what was recorded, then each line as it comes, a line
	// still arriving as far as it came.
	fctx, stop := context.WithCancel(ctx)
	var followed testenv.Buffer
	done := make(chan error, 1)
	go func() { done <- c.Console(fctx, "uart-board", "5m", true, &followed) }()
	testenv.Eventually(t, "the recorded line followed", func() bool {
		return strings.Contains(followed.String(), "new high-speed USB device")
	})
	for _, s := range []string{"[   13.000001] sda: sda1 sda2\r\n", "buildroot login: "} {
		if _, err := master.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, "the new lines followed", func() bool {
		return strings.HasSuffix(followed.String(), "device\r\n[   13.000001] sda: sda1 sda2\r\nbuildroot login: ")
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
