package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// TestMain lets the test binary be boardlinkd's boots: run() in a test is
// the sim board's supervisor, which runs os.Executable as each boot.
func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv(sim.EnvBoot); ok {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var addrRE = regexp.MustCompile(`"serving websocket" addr=(\S+)`)

// waitAddr waits for the agent to log the address it listens on.
func waitAddr(t *testing.T, logs func() string, done <-chan struct{}) string {
	t.Helper()
	for {
		if m := addrRE.FindStringSubmatch(logs()); m != nil {
			return m[1]
		}
		select {
		case <-done:
			t.Fatalf("agent exited early:\n%s", logs())
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
	yaml := "board: sim\nstate_dir: " + dir + "/state\nmodel: imx8\nlabels:\n  rack: \"7\"\nroots: [" + dir + "]\nsim_boot_delay: 5ms\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		logs   testenv.Buffer
		runErr error
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		runErr = run(ctx, []string{"--config", cfg, "--listen", "127.0.0.1:0", "--token-file", tok, "--id", "unit-1", "--no-mdns"}, io.Discard, &logs)
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
	if !slices.Contains(info.Capabilities, proto.CapReboot) || !slices.Contains(info.Capabilities, proto.CapFile) {
		t.Errorf("capabilities %v lack reboot or files", info.Capabilities)
	}
	// A detached command survives its connection but not the agent.
	pid := startSleeper(t, c)
	c.Close()
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("detached command died with its connection: %v", err)
	}
	cancel()
	<-done
	if runErr != nil {
		t.Fatalf("run: %v\n%s", runErr, logs.String())
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
	bin := buildAgent(t)
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		group bool // to the process group, as a terminal's ^C
	}{
		{"SIGTERM", syscall.SIGTERM, false},
		{"SIGINT", syscall.SIGINT, false},
		{"terminal ^C", syscall.SIGINT, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBoard(t, bin, "--listen", "127.0.0.1:0")
			c, _ := dialBoot(t, "ws://"+b.addr(t), dispatcher.DialOptions{}, "")
			defer c.Close()
			agent := agentPID(t, c)
			// A command tree that ignores TERM: the agent must still end it.
			pid := startSleeper(t, c)
			target := b.cmd.Process.Pid
			if tc.group {
				target = -target
			}
			if err := syscall.Kill(target, tc.sig); err != nil {
				t.Fatal(err)
			}
			if err := b.wait(t); err != nil {
				t.Fatalf("board exit: %v\n%s", err, b.logs.String())
			}
			for _, p := range []int{agent, pid} {
				if !proctest.Gone(p) {
					syscall.Kill(p, syscall.SIGKILL)
					t.Fatalf("process %d still alive after %v", p, tc.sig)
				}
			}
			if !strings.Contains(b.logs.String(), "boardlinkd stopped") {
				t.Fatalf("no clean stop in logs:\n%s", b.logs.String())
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
		{[]string{"--state-dir", dir, "--board", "rpi"}, `--board "rpi": want sim or linux`},
		{[]string{"--state-dir", dir, "--listen", "", "--serial", ""}, "nothing to serve"},
		{[]string{"--config", bad}, "state_dirr"},
		{[]string{"--state-dir", dir, "--label", "novalue"}, "KEY=VALUE"},
		{[]string{"--state-dir", dir, "--token-file", filepath.Join(dir, "missing")}, "token"},
		{[]string{"--state-dir", dir, "--serial", "/dev/null:fast"}, "baud"},
		{[]string{"--state-dir", dir, "--serial", "unix:"}, "no socket path"},
		{[]string{"--state-dir", dir, "--listen", "nocolon"}, "--listen"},
		{[]string{"--state-dir", dir, "--root", filepath.Join(dir, "missing")}, "not a directory"},
		{[]string{"--state-dir", dir, "--sim-boot-delay", "-1s"}, "sim_boot_delay"},
		{[]string{"--state-dir", dir, "--boot", "uboot"}, "need --board linux"},
		{[]string{"--state-dir", dir, "--boot", "grub"}, "need --board linux"},
		{[]string{"--state-dir", dir, "--boot", "lilo"}, "want sim, uboot or grub"},
		{[]string{"--state-dir", dir, "--trust-key", filepath.Join(dir, "missing.pub")}, "--trust-key: open " + filepath.Join(dir, "missing.pub")},
		{[]string{"--state-dir", dir, "--trust-key", dir}, "not a regular file"},
		{[]string{"--state-dir", dir, "--health-check", " "}, "--health-check: an empty command"},
		{[]string{"--state-dir", dir, "--health-timeout", "0s"}, "health_timeout must be positive"},
	}
	for _, tc := range tests {
		err := run(context.Background(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}
