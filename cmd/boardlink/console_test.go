package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// chardev is a unix socket that serves one client at a time, as QEMU's
// -chardev socket,server=on does: a new client takes the line, and the
// one before is closed.
func chardev(t *testing.T, banner string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "uart.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var cur net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				if cur != nil {
					cur.Close()
				}
				return
			}
			if cur != nil {
				cur.Close()
			}
			cur = c
			c.Write([]byte(banner))
		}
	}()
	return sock
}

// TestConsoleLosesLine: when another client takes a unix: chardev from
// the console, the console says so and exits 255, not 0.
func TestConsoleLosesLine(t *testing.T) {
	sock := chardev(t, "U-Boot 2025.01\r\nHit any key to stop autoboot\r\n")
	var stdout, stderr testenv.Buffer
	done := make(chan int, 1)
	go func() {
		err := run(context.Background(), []string{"console", "unix://" + sock}, &stdout, &stderr)
		done <- exitStatus(err, &stderr)
	}()
	testenv.Eventually(t, "the console showing the banner", func() bool { return strings.Contains(stdout.String(), "autoboot") })
	other, err := net.Dial("unix", sock) // a second client: the chardev drops the console
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	code := <-done
	if code != exitLink || !strings.Contains(stderr.String(), "the line closed") ||
		!strings.Contains(stderr.String(), "serves one client") {
		t.Fatalf("console after losing the line: exit %d, stderr %q", code, stderr.String())
	}
	t.Log(strings.TrimSpace(stderr.String()))
}
