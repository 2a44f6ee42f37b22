package dispatcher_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestConsole: Console copies what a serial line carries, listening only,
// until the line closes (an error: the console is gone) or ctx ends.
func TestConsole(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "uart.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lines := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			lines <- c
		}
	}()

	// The board prints its boot log and the line closes.
	errc := make(chan error, 1)
	var out testenv.Buffer
	go func() { errc <- dispatcher.Console(context.Background(), "unix://"+sock, &out) }()
	line := <-lines
	line.Write([]byte("U-Boot 2024.01\r\nStarting kernel\r\n"))
	line.Close()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "the line closed") {
		t.Fatalf("line closed: %v", err)
	}
	if out.String() != "U-Boot 2024.01\r\nStarting kernel\r\n" {
		t.Fatalf("console %q", out.String())
	}

	// The caller stops listening once the text came: no error, and
	// nothing was ever written to the line.
	ctx, cancel := context.WithCancel(context.Background())
	heard := &firstWrite{ch: make(chan struct{})}
	go func() { errc <- dispatcher.Console(ctx, "unix://"+sock, heard) }()
	line = <-lines
	defer line.Close()
	line.Write([]byte("login: "))
	<-heard.ch
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("canceled: %v", err)
	}
	// The host closed its end: a read sees EOF, having seen nothing.
	if n, err := line.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("the console wrote %d bytes (%v)", n, err)
	}

	for addr, want := range map[string]error{
		"wss://127.0.0.1:7207": dispatcher.ErrBadAddress,
		"gopher://x":           dispatcher.ErrBadAddress,
		"lab-7":                dispatcher.ErrNeedsDiscovery,
	} {
		if err := dispatcher.Console(context.Background(), addr, &out); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", addr, err, want)
		}
	}
}

// firstWrite closes ch at its first write.
type firstWrite struct {
	once sync.Once
	ch   chan struct{}
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.ch) })
	return len(p), nil
}
