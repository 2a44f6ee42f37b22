package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootstrapCLI: what bootstrap refuses before it touches a line, and
// a line where nothing answers: it listens, types one newline (the user
// asked for bootstrap), and says what the line showed.
func TestBootstrapCLI(t *testing.T) {
	t.Setenv("BOARDLINK_TOKEN", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bootstrap"}, "one ADDRESS"},
		{[]string{"bootstrap", "unix:///nonexistent"}, "needs the token"},
		{[]string{"bootstrap", "ws://127.0.0.1:7207"}, "needs a line"},
	} {
		_, stderr, code := cli(t, "", c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("boardlink %s: exit %d, %q; want 2 and %q", strings.Join(c.args, " "), code, stderr, c.want)
		}
	}

	// A line that only prints a banner: no prompt, nothing typed but the
	// newline.
	sock := filepath.Join(t.TempDir(), "line.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 2) // what boardlink typed; closed when it hung up
	go func() {
		defer close(got)
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("U-Boot 2024.01\r\n=> "))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		got <- string(buf[:n])
		_, _ = c.Write([]byte("\r\n=> ")) // as U-Boot answers a newline
		n, _ = c.Read(buf)                // until boardlink hangs up
		if n > 0 {
			got <- string(buf[:n])
		}
	}()
	t.Setenv("BOARDLINK_TOKEN", "0123456789abcdef0123")
	_, stderr, code := cli(t, "", "bootstrap", "unix://"+sock, "--listen", "100ms", "--prompt-timeout", "200ms")
	if code != 255 || !strings.Contains(stderr, "no shell or login prompt") || !strings.Contains(stderr, "=> ") {
		t.Errorf("bootstrap on a boot loader: exit %d, %q", code, stderr)
	}
	var typed string
	for s := range got {
		typed += s
	}
	if typed != "\n" {
		t.Errorf("bootstrap typed %q into a boot loader, want one newline", typed)
	}
}
