package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/testenv"
)

// otherToken is the token of a second user of the test service.
const otherToken = "token-of-another-user-0123456789"

// startService runs a lab service in this process over the demo board
// d, on loopback; its users are "tester", whose token is the tests'
// BOARDLINK_TOKEN, and "other". It returns its URL once the board is
// idle.
func startService(t *testing.T, d *demoBoard) string {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "board.token")
	if err := os.WriteFile(tok, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hash := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	cfg := service.Config{TokenFile: tok, Heartbeat: service.Duration(200 * time.Millisecond), QuarantineAfter: -1,
		Users:  []service.UserConfig{{Name: "tester", TokenSHA256: hash(testToken)}, {Name: "other", TokenSHA256: hash(otherToken)}},
		Boards: []service.BoardConfig{{ID: "demo-board", Address: d.ws.URL()}}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "lab.db"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(ctx, service.Options{Config: cfg, Store: st, Trust: dispatcher.NewKnownBoards(""),
		ConsoleDir: filepath.Join(dir, "console")})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(svc.Handler())
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := svc.Stop(ctx); err != nil {
			t.Error(err)
		}
		st.Close()
	})
	testenv.Eventually(t, "the board idle in the service", func() bool {
		b, err := svc.Board("demo-board")
		return err == nil && b.State == service.Idle
	})
	return hs.URL
}

// TestExecThroughServer: exec --server sends stdin over the service's
// exec stream; exit codes, a command not found and a board another user
// leased come out as a direct exec's do.
func TestExecThroughServer(t *testing.T) {
	d := startBoard(t)
	url := startService(t, d)
	tests := []struct {
		name           string
		args           []string
		stdin          string
		stdout, stderr string
		code           int
	}{
		{"stdin", []string{"--", "tr", "a-z", "A-Z"}, "abc", "ABC", "", 0},
		{"exit 42 with both streams", []string{"--shell", "--", "cat; echo err >&2; exit 42"}, "in\n", "in\n", "err\n", 42},
		{"no stdin", []string{"-n", "--", "cat"}, "abc", "", "", 0},
		{"signal", []string{"--", "sh", "-c", "kill -TERM $$"}, "", "", "boardlink: command killed by signal TERM\n", 128 + 15},
		{"not found", []string{"--", "/no/such/cmd"}, "", "", "", 127},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := cli(t, tc.stdin, append([]string{"--server", url, "exec", "demo-board"}, tc.args...)...)
			if code != tc.code || stdout != tc.stdout || tc.code != 127 && stderr != tc.stderr {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d %q %q", code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
		})
	}

	t.Run("leased by another", func(t *testing.T) {
		c, err := service.NewClient(url, otherToken, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		l, err := c.Acquire(ctx, service.AcquireRequest{Boards: []string{"demo-board"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release(ctx, l.ID)
		for _, args := range [][]string{{"exec", "demo-board", "--", "true"}, {"exec", "-t", "demo-board", "--", "true"}, {"shell", "demo-board"}} {
			_, stderr, code := cli(t, "", append([]string{"--server", url}, args...)...)
			if code != 1 || !strings.Contains(stderr, "other") {
				t.Fatalf("%v on a board another user leased: exit %d, %q", args, code, stderr)
			}
		}
	})
}

// TestShellThroughServer runs 'boardlink --server URL shell' and 'exec
// -t' on a terminal of their own: the board's terminal has the size, the
// TERM and the resizes of ours, what is typed reaches it, exit codes pass
// through, the local terminal is restored, Ctrl-C on exec without -t
// cancels the command and exits 130, and "~." ends a session whose
// command hangs.
func TestShellThroughServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	bin := testenv.GoBuild(t, ".")
	d := startBoard(t)
	url := startService(t, d)

	t.Run("interactive", func(t *testing.T) {
		r := startSized(t, bin, 33, 101, "--server", url, "shell", "demo-board", "--", "sh", "-i")
		r.typ(t, "stty size; tty; echo \"T=$TERM\"\r")
		at := r.await(t, 0, "33 101\r\n")
		at = r.await(t, at, "/dev/pts/")
		r.await(t, at, "T=vt220\r\n")
		r.typ(t, "exit 7\r")
		if code, out := r.wait(); code != 7 {
			t.Fatalf("exit %d, want 7:\n%q", code, out)
		}
		r.cooked(t)
	})

	t.Run("resize", func(t *testing.T) {
		r := startSized(t, bin, 24, 80, "--server", url, "exec", "-t", "demo-board", "--", "sh", "-c",
			`sleep 100000 & trap 'stty size; kill $!; exit 3' WINCH; stty size; while :; do wait; done`)
		r.await(t, 0, "24 80\r\n")
		// The host's terminal sends SIGWINCH to the CLI.
		if err := pty.Setsize(r.master, &pty.Winsize{Rows: 50, Cols: 132}); err != nil {
			t.Fatal(err)
		}
		if code, out := r.wait(); code != 3 || !strings.Contains(out, "24 80\r\n50 132\r\n") {
			t.Fatalf("exit %d, want 3 after the new size:\n%q", code, out)
		}
		r.cooked(t)
	})

	t.Run("ctrl-c", func(t *testing.T) {
		// Without -t the terminal stays the CLI's: Ctrl-C interrupts
		// boardlink, which has the service cancel the command (TERM) and
		// still shows what it printed on its way out.
		r := startSized(t, bin, 24, 80, "--server", url, "exec", "demo-board", "--", "sh", "-c",
			`trap 'echo got-TERM; exit 9' TERM; echo ready; sleep 100000 & wait`)
		r.await(t, 0, "ready")
		r.ctrlC(t)
		if code, out := r.wait(); code != 130 || !strings.Contains(out[strings.Index(out, "ready"):], "got-TERM\r\n") {
			t.Fatalf("exit %d, want 130 after Ctrl-C, and the command's last words:\n%q", code, out)
		}
	})

	t.Run("escape", func(t *testing.T) {
		r := startSized(t, bin, 24, 80, "--server", url, "shell", "demo-board", "--", "sh", "-c", "echo ready; exec sleep 987663")
		r.await(t, 0, "ready")
		r.typ(t, "\r~.")
		code, out := r.wait()
		if code != 255 || !strings.Contains(out, "session closed (~.)") {
			t.Fatalf("exit %d, want 255 after ~.:\n%q", code, out)
		}
		r.cooked(t)
	})
}
