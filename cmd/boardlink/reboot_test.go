package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
)

// simBoard is a real boardlinkd (its supervisor and the agent it boots)
// on loopback, with WebSocket and a unix-socket serial line.
type simBoard struct {
	ws, serial, files, state string
	stderr                   *testenv.Buffer
}

// startSimBoard runs boardlinkd with extra flags added to the usual ones.
func startSimBoard(t *testing.T, bootDelay time.Duration, extra ...string) *simBoard {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the real boardlinkd")
	}
	bin := testenv.GoBuild(t, "../boardlinkd")
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String() // every boot listens here again
	ln.Close()
	b := &simBoard{ws: "wss://" + addr, serial: "unix://" + filepath.Join(dir, "uart.sock"),
		files: filepath.Join(dir, "files"), state: filepath.Join(dir, "state"), stderr: &testenv.Buffer{}}
	if err := os.Mkdir(b.files, 0o755); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--board", "sim", "--state-dir", b.state, "--listen", addr, "--token-file", token,
		"--serial", "unix:" + filepath.Join(dir, "uart.sock"), "--root", b.files, "--no-mdns",
		"--sim-boot-delay", bootDelay.String()}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = b.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("boardlinkd did not stop on SIGINT; log:\n%s", b.stderr)
		}
	})
	waitUp(t, b, "")
	return b
}

// TestRebootWait reboots a real sim board while a command hangs on it,
// over WebSocket and over the serial line: each time the board is back
// with a new boot id, the hanging command is gone, and the time is told.
func TestRebootWait(t *testing.T) {
	b := startSimBoard(t, 200*time.Millisecond)
	for _, board := range []string{b.ws, b.serial} {
		t.Run(strings.SplitN(board, ":", 2)[0], func(t *testing.T) {
			pidFile := filepath.Join(b.files, "sleep.pid")
			os.Remove(pidFile)
			hung := make(chan int, 1)
			go func() {
				_, _, code := cli(t, "", "exec", b.ws, "--", "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 1000")
				hung <- code
			}()
			var pid int
			testenv.Eventually(t, "the hanging command's pid", func() bool {
				raw, _ := os.ReadFile(pidFile)
				pid, _ = strconv.Atoi(strings.TrimSpace(string(raw)))
				return pid != 0
			})
			logPath := filepath.Join(t.TempDir(), "console.log")
			stdout, stderr, code := cli(t, "", "reboot", board, "--wait", "--timeout", "60s", "--json", "--console-log", logPath)
			if code != 0 {
				t.Fatalf("reboot --wait: exit %d\n%s%s\nboard log:\n%s", code, stdout, stderr, b.stderr)
			}
			var rep rebootReport
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatalf("reboot --json: %v\n%s", err, stdout)
			}
			if rep.NewBootID == "" || rep.NewBootID == rep.OldBootID || rep.TookMs <= 0 || rep.Commands < 1 {
				t.Fatalf("reboot report %+v", rep)
			}
			if !proctest.Gone(pid) {
				t.Fatalf("the hanging sleep (pid %d) survived the reboot", pid)
			}
			if code := <-hung; code == 0 {
				t.Fatal("the hanging command's exec succeeded across a reboot")
			}
			c, err := dispatcher.Dial(context.Background(), b.ws, testDialOptions())
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(context.Background())
			c.Close()
			if err != nil || info.BootID != rep.NewBootID {
				t.Fatalf("board.info after the reboot: %+v %v, want boot %s", info, err, rep.NewBootID)
			}
			if strings.HasPrefix(board, "unix:") {
				text, err := os.ReadFile(logPath)
				if err != nil || !strings.Contains(string(text), "sim-boot: boot") || rep.ConsoleLog != logPath {
					t.Fatalf("console log %q (%v), report %+v: want the boot banner", text, err, rep)
				}
			}
			t.Logf("%s: back after %d ms, boot %s", board, rep.TookMs, rep.NewBootID)
		})
	}
}

// TestRebootNotBack: a board that takes longer than --timeout is exit 124,
// and the console text seen so far is saved.
func TestRebootNotBack(t *testing.T) {
	b := startSimBoard(t, 30*time.Second)
	logPath := filepath.Join(t.TempDir(), "console.log")
	stdout, stderr, code := cli(t, "", "reboot", b.serial, "--wait", "--timeout", "2s", "--console-log", logPath)
	if code != exitTimeout || !strings.Contains(stderr, "did not come back") {
		t.Fatalf("reboot of a board that stays down: exit %d\n%s%s", code, stdout, stderr)
	}
	text, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(text), "reboot") || !strings.Contains(stdout, "console log: "+logPath) {
		t.Fatalf("console log %q (%v); stdout %q", text, err, stdout)
	}
}

// TestConsole: `boardlink console` shows the boot text of a reboot made
// over WebSocket, without writing to the line.
func TestConsole(t *testing.T) {
	b := startSimBoard(t, 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errs testenv.Buffer
	done := make(chan error, 1)
	go func() { done <- runWithStdin(ctx, strings.NewReader(""), []string{"console", b.serial}, &out, &errs) }()
	shows := func(text string) bool {
		select {
		case err := <-done:
			t.Fatalf("console ended early: %v\n%s%s", err, out.String(), errs.String())
		default:
		}
		return strings.Contains(out.String(), text)
	}
	// The console is attached once it shows the board's log (its boot's
	// stderr) of a command run after it started.
	testenv.Eventually(t, "the console to show the board's log", func() bool {
		if _, stderr, code := cli(t, "", "exec", b.ws, "-n", "--", "true", "console-attached"); code != 0 {
			t.Fatalf("exec: %d %s", code, stderr)
		}
		return shows("console-attached")
	})
	if _, stderr, code := cli(t, "", "reboot", b.ws, "--wait"); code != 0 {
		t.Fatalf("reboot: %d %s", code, stderr)
	}
	testenv.Eventually(t, "the console to show the second boot", func() bool { return shows("sim-boot: boot 2") })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("console after ^C: %v", err)
	}
	if !strings.Contains(out.String(), "reboot: Restarting system") {
		t.Fatalf("console lacks the reboot line:\n%s", out.String())
	}
	if _, stderr, code := cli(t, "", "console", b.ws); code != exitUsage || !strings.Contains(stderr, "serial line only") {
		t.Fatalf("console of a WebSocket address: %d %s", code, stderr)
	}
}
