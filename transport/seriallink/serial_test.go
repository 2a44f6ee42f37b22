package seriallink

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport"
)

// A board behind a socket, as with ser2net or QEMU's serial chardev: the
// host reaches it with OpenLine, probes it, then dials.
func TestOpenLineSockets(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			testenv.CheckLeaks(t)
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(t.TempDir(), "serial.sock")
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			agentDone := make(chan struct{})
			go func() { // the board: one agent session, echoing
				defer close(agentDone)
				c, err := ln.Accept()
				if err != nil {
					return
				}
				ae := NewEndpoint(c, Config{Beacon: beaconOf("qemu"), BeaconInterval: 50 * time.Millisecond})
				defer ae.Close()
				l, err := ae.Accept(context.Background())
				if err != nil {
					return
				}
				echo(l)
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rwc, err := OpenLine(ctx, network+"://"+ln.Addr().String(), 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Probe(ctx, rwc)
			if err != nil || string(got) != `{"id":"qemu"}` {
				t.Fatalf("Probe = %q, %v", got, err)
			}
			he := NewEndpoint(rwc, Config{})
			defer he.Close()
			hl, err := he.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := hl.WriteMessage(ctx, transport.Text, []byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, p, err := hl.ReadMessage(); err != nil || string(p) != "ping" {
				t.Fatalf("echo: %q %v", p, err)
			}
			hl.Close()
			<-agentDone
		})
	}
}

// Probe on a silent socket stops on ctx through the read deadline, and
// leaves the connection usable.
func TestProbeSilentSocket(t *testing.T) {
	testenv.CheckLeaks(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Probe(ctx, a); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Probe: %v", err)
	}
	go b.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := a.Read(buf); err != nil {
		t.Fatalf("read after Probe: %v", err)
	}
}
