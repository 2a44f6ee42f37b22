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

var addrRE = regexp.MustCompile(`"serving (wss|ws)://[^"]*"[^\n]*? addr=(\S+)`)

// waitAddr waits for the agent to log the address it listens on, and
// returns its URL.
func waitAddr(t *testing.T, logs func() string, done <-chan struct{}) string {
	t.Helper()
	for {
		if m := addrRE.FindStringSubmatch(logs()); m != nil {
			return m[1] + "://" + m[2]
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
	if err := os.WriteFile(tok, []byte("a-token-of-16-or-more\n"), 0o600); err != nil {
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
	c, err := dispatcher.Dial(ctx, addr, dispatcher.DialOptions{Token: "a-token-of-16-or-more", Trust: dispatcher.NewKnownBoards("")})
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
			c, _ := dialBoot(t, b.addr(t), b.opts(), "")
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
	os.WriteFile(bad, []byte("board: sim\nstate_dirr: /tmp/x\n"), 0o600)
	open := filepath.Join(dir, "open-token")
	os.WriteFile(open, []byte("a-token-of-16-or-more\n"), 0o644)
	short := filepath.Join(dir, "short-token")
	os.WriteFile(short, []byte("# a comment\nshort\n"), 0o600)
	empty := filepath.Join(dir, "empty-token")
	os.WriteFile(empty, []byte("# only a comment\n\n"), 0o600)
	sim := func(args ...string) []string { return append([]string{"--board", "sim"}, args...) }
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--state-dir", dir}, "--board is required: linux (this system) or sim"},
		{sim("--listen", "127.0.0.1:0"), "--state-dir is required"},
		{[]string{"--state-dir", dir, "--board", "rpi"}, `--board "rpi": want linux or sim`},
		{sim("--state-dir", dir, "--listen", "", "--serial", ""), "nothing to serve"},
		{[]string{"--config", bad}, "state_dirr"},
		{sim("--state-dir", dir, "--label", "novalue"), "KEY=VALUE"},
		{sim("--state-dir", dir, "--token-file", filepath.Join(dir, "missing")), "--token-file"},
		{sim("--state-dir", dir, "--token-file", open), "readable by others (mode 0644): it holds a secret; run chmod 600 " + open},
		{sim("--state-dir", dir, "--token-file", short), short + ":2: a token of 5 characters is too short"},
		{sim("--state-dir", dir, "--token-file", empty), "holds no token"},
		{sim("--state-dir", dir, "--serial", "/dev/null:fast"), "baud"},
		{sim("--state-dir", dir, "--serial", "unix:"), "no socket path"},
		{sim("--state-dir", dir, "--listen", "nocolon"), "--listen"},
		{sim("--state-dir", dir, "--insecure-listen", "nocolon"), "--insecure-listen"},
		{sim("--state-dir", dir, "--listen", "127.0.0.1:7", "--insecure-listen", "127.0.0.1:7"), "name the same address"},
		{sim("--state-dir", dir, "--max-download", "lots"), `"lots" is not a size`},
		{sim("--state-dir", dir, "--root", filepath.Join(dir, "missing")), "not a directory"},
		{sim("--state-dir", dir, "--sim-boot-delay", "-1s"), "sim_boot_delay"},
		{sim("--state-dir", dir, "--boot", "uboot"), "need --board linux"},
		{sim("--state-dir", dir, "--boot", "grub"), "need --board linux"},
		{sim("--state-dir", dir, "--boot", "lilo"), "want sim, uboot or grub"},
		{sim("--state-dir", dir, "--trust-key", filepath.Join(dir, "missing.pub")), "--trust-key: open " + filepath.Join(dir, "missing.pub")},
		{sim("--state-dir", dir, "--trust-key", dir), "not a regular file"},
		{sim("--state-dir", dir, "--health-check", " "), "--health-check: an empty command"},
		{sim("--state-dir", dir, "--health-timeout", "0s"), "health_timeout must be positive"},
	}
	for _, tc := range tests {
		err := run(context.Background(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}
