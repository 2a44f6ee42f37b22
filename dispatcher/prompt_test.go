package dispatcher_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/bootstrap"
)

// TestDialHintsAtBootstrap: a line that carries a shell and no agent
// (never given one, or whose agent died) does not keep a dial waiting for
// ever: once no agent was heard and the console ends in a prompt, the
// dial says so and names `boardlink bootstrap`, having typed nothing.
func TestDialHintsAtBootstrap(t *testing.T) {
	for _, tc := range []struct {
		console string
		want    bootstrap.Prompt
	}{
		{"Debian GNU/Linux 12 board ttyS0\r\n\r\nboard login: ", bootstrap.LoginPrompt},
		{"[    3.141592] random: crng init done\r\n/ # ", bootstrap.ShellPrompt},
	} {
		t.Run(tc.want.String(), func(t *testing.T) {
			// The line: a unix socket, as QEMU's chardev gives one.
			ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "uart"))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			host, err := net.Dial("unix", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			board, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer board.Close()
			if _, err := board.Write([]byte(tc.console)); err != nil {
				t.Fatal(err)
			}
			_, err = dispatcher.DialLine(context.Background(), host, dispatcher.DialOptions{})
			var hint *bootstrap.HintError
			if !errors.As(err, &hint) || hint.Prompt != tc.want || !strings.Contains(err.Error(), "boardlink bootstrap") {
				t.Fatalf("a dial of a line with only a %s: %v", tc.want, err)
			}
			// Nothing waits to be read on the board's side: a read that
			// may not wait finds nothing.
			if err := board.SetReadDeadline(time.Now()); err != nil {
				t.Fatal(err)
			}
			typed := make([]byte, 64)
			if n, _ := board.Read(typed); n != 0 {
				t.Fatalf("the dial typed %q into the shell", typed[:n])
			}
		})
	}
}
