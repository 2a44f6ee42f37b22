package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// hangGuard bounds waits that only a broken build would make long.
const hangGuard = 2 * time.Minute

func buildAgent(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the agent binary")
	}
	return testenv.GoBuild(t, "github.com/boardlink/boardlink/cmd/boardlinkd")
}

// simBoard is a boardlinkd process: a sim board's supervisor.
type simBoard struct {
	cmd   *exec.Cmd
	logs  *testenv.Buffer // its stderr, and its boots'
	done  chan struct{}
	err   error // Wait's, once done is closed
	token string
	known *dispatcher.KnownBoards
}

// opts are the dial options of a host that holds the board's token.
func (b *simBoard) opts() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: b.token, Trust: b.known}
}

// writeToken writes a token file as a lab provisions one (mode 0600).
func writeToken(t *testing.T, tok string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startBoard starts bin as a sim board (args may say otherwise) with a
// fresh state dir and a token, in a process group of its own, as a shell
// starts a job. If the test leaves it running, its power is cut at the
// end.
func startBoard(t *testing.T, bin string, args ...string) *simBoard {
	t.Helper()
	b := &simBoard{logs: &testenv.Buffer{}, done: make(chan struct{}), token: "sim-board-token-" + t.Name(),
		known: dispatcher.NewKnownBoards("")}
	b.cmd = exec.Command(bin, append([]string{"--board", "sim", "--state-dir", filepath.Join(t.TempDir(), "state"), "--no-mdns",
		"--sim-boot-delay", "10ms", "--token-file", writeToken(t, b.token)}, args...)...)
	b.cmd.Stderr = b.logs
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(b.done)
		b.err = b.cmd.Wait()
	}()
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		<-b.done
		if t.Failed() {
			t.Logf("board log:\n%s", b.logs.String())
		}
	})
	return b
}

// addr waits for the first boot to listen and returns its URL.
func (b *simBoard) addr(t *testing.T) string {
	t.Helper()
	return waitAddr(t, b.logs.String, b.done)
}

// wait waits for the board to exit.
func (b *simBoard) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-b.done:
		return b.err
	case <-time.After(hangGuard):
		t.Fatalf("the board did not exit:\n%s", b.logs.String())
		return nil
	}
}

// dialBoot dials addr until a boot other than notBoot answers, riding out
// a reboot, and returns the client and what the boot says of itself.
func dialBoot(t *testing.T, addr string, opts dispatcher.DialOptions, notBoot string) (*dispatcher.Client, proto.BoardInfo) {
	t.Helper()
	var (
		c    *dispatcher.Client
		info proto.BoardInfo
		last error
	)
	testenv.Eventually(t, fmt.Sprintf("a boot other than %q answers at %s", notBoot, addr), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if c, last = dispatcher.Dial(ctx, addr, opts); last != nil {
			return false
		}
		if info, last = c.Info(ctx); last == nil && info.BootID != notBoot {
			return true
		}
		c.Close()
		return false
	})
	return c, info
}

// agentPID returns the pid of the agent serving c: the parent of the
// commands it runs.
func agentPID(t *testing.T, c *dispatcher.Client) int {
	t.Helper()
	var out testenv.Buffer
	res, err := c.Exec(context.Background(), dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo $PPID"}, Stdout: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %+v %v", res, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// parentPID reads a process's parent from /proc.
func parentPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			ppid, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return ppid
		}
	}
	t.Fatalf("no PPid in /proc/%d/status", pid)
	return 0
}

// startDetached starts argv as a detached command and returns its pid.
func startDetached(t *testing.T, c *dispatcher.Client, argv ...string) int {
	t.Helper()
	var res proto.ExecStartResult
	if err := c.Conn().Call(context.Background(), proto.MethodExecStart, proto.ExecStartParams{Argv: argv, Detach: true}, &res); err != nil {
		t.Fatal(err)
	}
	return res.PID
}

func mustGone(t *testing.T, what string, pid int) {
	t.Helper()
	if !proctest.Gone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("%s (pid %d) is still running", what, pid)
	}
}

func TestSimRebootOverWebSocket(t *testing.T) {
	bin := buildAgent(t)
	b := startBoard(t, bin, "--listen", "127.0.0.1:0")
	url := b.addr(t) // port 0 is chosen once and kept across boots
	c, info := dialBoot(t, url, b.opts(), "")
	seen := map[string]bool{info.BootID: true}
	for i := range 3 {
		agent := agentPID(t, c)
		if got := parentPID(t, agent); got != b.cmd.Process.Pid {
			t.Fatalf("boot %d: the agent's parent is %d, not the supervisor %d", i+1, got, b.cmd.Process.Pid)
		}
		// One command that dies with the connection, one that ignores TERM
		// and would outlive it: the reboot ends both.
		hanging := make(chan error, 1)
		go func() {
			_, err := c.Exec(context.Background(), dispatcher.ExecRequest{Argv: []string{"sleep", "1000"}})
			hanging <- err
		}()
		sleeper := startSleeper(t, c)
		testenv.Eventually(t, "both commands run", func() bool {
			var log proto.ExecLogResult
			err := c.Conn().Call(context.Background(), proto.MethodExecLog, proto.ExecLogParams{}, &log)
			running := 0
			for _, e := range log.Entries {
				if e.Running {
					running++
				}
			}
			return err == nil && running == 2
		})

		var res proto.RebootResult
		if err := c.Conn().Call(context.Background(), proto.MethodSystemReboot, proto.RebootParams{}, &res); err != nil {
			t.Fatalf("boot %d: reboot: %v", i+1, err)
		}
		if res.BootID != info.BootID || res.Commands != 2 {
			t.Errorf("boot %d: reboot answered %+v, want boot %s with 2 commands", i+1, res, info.BootID)
		}
		if err := <-hanging; err == nil {
			t.Errorf("boot %d: the hanging exec returned no error across the reboot", i+1)
		}
		c.Close()
		c, info = dialBoot(t, url, b.opts(), res.BootID)
		if seen[info.BootID] {
			t.Errorf("boot id %s came back", info.BootID)
		}
		seen[info.BootID] = true
		mustGone(t, "the TERM-ignoring command", sleeper)
		mustGone(t, "the agent of the previous boot", agent)
	}
	c.Close()
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("the supervisor is gone: %v", err)
	}
	if err := b.wait(t); err != nil {
		t.Fatalf("supervisor exit: %v", err)
	}
	if n := strings.Count(b.logs.String(), `msg="sim: reboot"`); n != 3 {
		t.Errorf("%d reboots logged, want 3", n)
	}
}

func TestSimRebootOverSerialSocket(t *testing.T) {
	bin := buildAgent(t)
	sock := filepath.Join(t.TempDir(), "uart.sock")
	b := startBoard(t, bin, "--listen", "", "--serial", "unix:"+sock)
	url := "unix://" + sock

	var console1 testenv.Buffer
	c1, info1 := dialBoot(t, url, withConsole(b.opts(), &console1), "")
	defer c1.Close()
	var res proto.RebootResult
	if err := c1.Conn().Call(context.Background(), proto.MethodSystemReboot, proto.RebootParams{}, &res); err != nil {
		t.Fatal(err)
	}
	// The host stays on the line through the reboot and sees it on the
	// console: the kernel's goodbye, the bootloader, the new agent's log.
	for _, want := range []string{"reboot: Restarting system\r\n", "sim-boot: boot 2, booting boardlinkd\r\n", "boardlinkd started"} {
		testenv.Eventually(t, "the console shows "+strconv.Quote(want), func() bool { return strings.Contains(console1.String(), want) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if _, err := c1.Info(ctx); err == nil {
		t.Fatal("the session of the old boot still answers")
	}

	// A new connection replaces the old one on the socket.
	c2, info2 := dialBoot(t, url, b.opts(), res.BootID)
	defer c2.Close()
	if info2.ID != info1.ID {
		t.Errorf("board id changed from %s to %s", info1.ID, info2.ID)
	}
	// The same connection rides out the next reboot.
	back, err := c2.RebootWait(ctx, dispatcher.WaitOptions{})
	if err != nil || back.OldBootID != info2.BootID || back.NewBootID == info2.BootID {
		t.Fatalf("RebootWait = %+v, %v", back, err)
	}
	if info, err := c2.Info(ctx); err != nil || info.BootID != back.NewBootID {
		t.Fatalf("after RebootWait: %+v, %v", info, err)
	}
	c2.Close()
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.wait(t); err != nil {
		t.Fatalf("supervisor exit: %v", err)
	}
}

func TestSimPowerCuts(t *testing.T) {
	bin := buildAgent(t)
	b := startBoard(t, bin, "--listen", "127.0.0.1:0")
	url := b.addr(t)
	c, info := dialBoot(t, url, b.opts(), "")
	agent := agentPID(t, c)
	sleeper := startDetached(t, c, "sleep", "1000")

	// The agent's power is cut (or a watchdog fired): the board boots again.
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c, _ = dialBoot(t, url, b.opts(), info.BootID)
	defer c.Close()
	if !strings.Contains(b.logs.String(), "sim: power cut") {
		t.Errorf("the supervisor did not see a power cut")
	}
	testenv.Eventually(t, "the command dies with its agent", func() bool { return proctest.Gone(sleeper) })

	// The supervisor's power is cut: nothing of the board is left.
	agent = agentPID(t, c)
	sleeper = startDetached(t, c, "sleep", "1000")
	if err := b.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	b.wait(t)
	testenv.Eventually(t, "the agent dies with its supervisor", func() bool { return proctest.Gone(agent) })
	testenv.Eventually(t, "the command dies with its agent", func() bool { return proctest.Gone(sleeper) })
}

func TestSimBootThatFailsPowersOff(t *testing.T) {
	bin := buildAgent(t)
	dir := t.TempDir()
	// An identity the board cannot read: only the boot (sim.Open) finds out.
	if err := os.WriteFile(filepath.Join(dir, "identity.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := startBoard(t, bin, "--state-dir", dir, "--listen", "127.0.0.1:0")
	err := b.wait(t)
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 {
		t.Fatalf("supervisor exit: %v, want status 2", err)
	}
	logs := b.logs.String()
	if n := strings.Count(logs, `msg="sim: boot"`); n != 1 {
		t.Errorf("%d boots, want 1", n)
	}
	for _, want := range []string{"identity", "boot 1 exited with status 2"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func withConsole(o dispatcher.DialOptions, w io.Writer) dispatcher.DialOptions {
	o.Console = w
	return o
}
