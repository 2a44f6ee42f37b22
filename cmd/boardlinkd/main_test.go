package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
)

var addrRE = regexp.MustCompile(`"serving websocket" addr=(\S+)`)

// waitAddr waits for the agent to log the address it listens on.
func waitAddr(t *testing.T, logs func() string, done <-chan error) string {
	t.Helper()
	for {
		if m := addrRE.FindStringSubmatch(logs()); m != nil {
			return m[1]
		}
		select {
		case err := <-done:
			t.Fatalf("agent exited early: %v\n%s", err, logs())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestRunServesAndStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("board: sim\nstate_dir: "+dir+"/state\nmodel: imx8\nlabels:\n  rack: \"7\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs testenv.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", cfg, "--listen", "127.0.0.1:0", "--token-file", tok, "--id", "unit-1"}, io.Discard, &logs)
	}()
	addr := waitAddr(t, logs.String, done)
	c, err := dispatcher.Dial(ctx, "ws://"+addr, dispatcher.DialOptions{Token: "t0ken"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil || info.ID != "unit-1" || info.Model != "imx8" || info.Labels["rack"] != "7" {
		t.Fatalf("info %+v %v", info, err)
	}
	// A detached command survives its connection but not the agent.
	pid := startSleeper(t, c)
	c.Close()
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("detached command died with its connection: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, logs.String())
	}
	if !proctest.Gone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("command %d outlived the agent", pid)
	}
}

// startSleeper starts a detached command tree that ignores TERM and INT and
// returns the pid of its grandchild sleep.
func startSleeper(t *testing.T, c *dispatcher.Client) int {
	t.Helper()
	pr, pw := io.Pipe()
	go c.Exec(context.Background(), dispatcher.ExecRequest{
		Argv: []string{"sh", "-c", "trap '' TERM INT; sleep 1000 & echo $!; wait"}, Stdout: pw, Detach: true})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestSignalLeavesNoChildBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "boardlinkd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			var logs testenv.Buffer
			agent := exec.Command(bin, "--state-dir", filepath.Join(dir, "state"), "--listen", "127.0.0.1:0")
			agent.Stderr = &logs
			if err := agent.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- agent.Wait() }()
			addr := waitAddr(t, logs.String, exited)
			ctx := context.Background()
			c, err := dispatcher.Dial(ctx, "ws://"+addr, dispatcher.DialOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A command tree that ignores TERM: the agent must still end it.
			pid := startSleeper(t, c)
			if err := agent.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := <-exited; err != nil {
				t.Fatalf("agent exit: %v\n%s", err, logs.String())
			}
			if !proctest.Gone(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("grandchild %d still alive after %v", pid, sig)
			}
			if !strings.Contains(logs.String(), "boardlinkd stopped") {
				t.Fatalf("no clean stop in logs:\n%s", logs.String())
			}
		})
	}
}

func TestBadConfigIsAClearError(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("state_dirr: /tmp/x\n"), 0o600)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "127.0.0.1:0"}, "--state-dir is required"},
		{[]string{"--state-dir", dir, "--board", "rpi"}, "only backend"},
		{[]string{"--state-dir", dir, "--listen", "", "--serial", ""}, "nothing to serve"},
		{[]string{"--config", bad}, "state_dirr"},
		{[]string{"--state-dir", dir, "--label", "novalue"}, "KEY=VALUE"},
		{[]string{"--state-dir", dir, "--token-file", filepath.Join(dir, "missing")}, "token"},
		{[]string{"--state-dir", dir, "--serial", "/dev/null:fast"}, "baud"},
	}
	for _, tc := range tests {
		err := run(context.Background(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}
