package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/qemuboard"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestServiceQEMURecovery: `boardlink serve` with a QEMU board on its
// serial socket (ttyS0, the kernel console too) and the qemu power
// driver. The board's agent is stopped (SIGSTOP, through the service's
// own exec): the service sees it go silent, resets the machine over QMP,
// and the board comes back with a new boot id. Every step is in the audit
// log, and the console record holds the new boot from GRUB and the
// kernel's first line on.
func TestServiceQEMURecovery(t *testing.T) {
	setup(t)
	ctx := testCtx(t)
	b := newBoard(ctx, t, qemuboard.Spec{ID: "qemu-svc", Serial: "ttyS0", SlotA: slotImage(ctx, t, "1.0.0", "pass")})
	dir := t.TempDir()
	aliceTok := filepath.Join(dir, "alice.token")
	const alice = "token-of-alice-0123456789abcdef"
	if err := os.WriteFile(aliceTok, []byte(alice+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// qemuboard names its sockets after the port, and the monitor qmp.
	cfg := fmt.Sprintf(`heartbeat: 1s
known_boards: %s
recovery: {attempts: 2, wait: 3m}
users:
  - {name: alice, token_sha256: %x}
boards:
  - id: qemu-svc
    address: %q
    token_file: %s
    power: {driver: %s, qmp: %s}
`, filepath.Join(dir, "known_boards.json"), sha256.Sum256([]byte(alice)), b.AgentAddr(), b.token,
		power.DriverQEMU, filepath.Join(b.Dir, "qmp.sock"))
	cfgFile := filepath.Join(dir, "serve.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	url := startServe(ctx, t, dir, cfgFile)
	c, err := service.NewClient(url, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A boot under TCG on a loaded CI host may outlast Eventually's guard:
	// the waits are bounded by the test's deadline, and by QEMU's exit.
	board := func(what string, ok func(service.Board) bool) service.Board {
		t.Helper()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			got, err := c.Board(ctx, "qemu-svc")
			if err == nil && ok(got) {
				return got
			}
			select {
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v; the board: %+v, %v", what, ctx.Err(), got, err)
			case <-b.Done():
				t.Fatalf("QEMU exited while waiting for %s", what)
			case <-tick.C:
			}
		}
	}
	first := board("the board idle in the service", func(b service.Board) bool { return b.State == service.Idle && b.BootID != "" })

	// The agent stops a moment after the command that stops it has
	// answered; /init would start an agent that exited again, not one
	// that hangs.
	stopped := time.Now()
	consoleAt := len(b.Console())
	r := startCLI(ctx, t, []string{"--token-file", aliceTok, "--server", url, "exec", "-n", "qemu-svc", "--shell", "--",
		`setsid sh -c 'sleep 1; kill -STOP $(pidof boardlinkd)' </dev/null >/dev/null 2>&1 &`},
		"XDG_CONFIG_HOME="+filepath.Join(dir, "cli"), "XDG_STATE_HOME="+filepath.Join(dir, "cli"))
	if res := r.wait(); res.err != nil || res.code != 0 {
		t.Fatalf("exec through the service: %+v", res)
	}
	board("the board offline", func(b service.Board) bool { return b.State == service.Offline })
	back := board("the board back with a new boot", func(b service.Board) bool {
		return b.State == service.Idle && b.Online && b.BootID != first.BootID
	})
	t.Logf("recovered in %v: boot %s -> %s", time.Since(stopped).Round(time.Millisecond), first.BootID, back.BootID)

	es, err := c.Audit(ctx, store.AuditFilter{Board: "qemu-svc", Since: stopped})
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	for i := len(es) - 1; i >= 0; i-- { // oldest first
		fmt.Fprintf(&log, "%s %s %s: %s\n", es[i].User, es[i].Action, es[i].Result, es[i].Detail)
	}
	want := []string{
		"alice board.exec ok: ", // the command that stopped the agent
		"board.state ok: idle -> offline",
		"board.recover ok: attempt 1: " + power.StepCycle,
		"board.recover ok: attempt 1: " + power.StepWait,
		"board.recover ok: attempt 1: " + power.StepBack + " " + back.BootID,
		"board.boot ok: new boot id " + back.BootID,
		"board.state ok: offline -> idle",
	}
	at := 0
	for _, w := range want {
		i := strings.Index(log.String()[at:], w)
		if i < 0 {
			t.Fatalf("the audit log has no %q after what came before it:\n%s", w, log.String())
		}
		at += i + len(w)
	}

	// The kernel's first line of the new boot, as QEMU logged ttyS0.
	var kernel string
	sc := bufio.NewScanner(bytes.NewReader(b.Console()[consoleAt:]))
	for sc.Scan() && kernel == "" {
		if i := strings.Index(sc.Text(), "Linux version "); i >= 0 {
			kernel = strings.TrimSpace(sc.Text()[i:])
		}
	}
	if kernel == "" {
		t.Fatalf("no kernel line on ttyS0 after the reset:\n%s", qemuboard.Tail(b.Console()[consoleAt:], 40))
	}
	var rec bytes.Buffer
	if err := c.Console(ctx, "qemu-svc", stopped.Format(time.RFC3339Nano), false, &rec); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Booting `Linux (slot A)'", kernel, "boardlink-init: starting boardlinkd"} {
		if !strings.Contains(rec.String(), w) {
			t.Errorf("the service's console record since the agent stopped has no %q:\n%s", w, qemuboard.Tail(rec.Bytes(), 60))
		}
	}
}

// startServe runs `boardlink serve` on cfg, its database in dir, and
// returns its API's URL; it is killed when the test ends.
func startServe(ctx context.Context, t *testing.T, dir, cfg string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, lab.cli, "serve", "--config", cfg, "--listen", "127.0.0.1:0", "--db", filepath.Join(dir, "lab.db"))
	cmd.Env = append(os.Environ(), "BOARDLINK_TOKEN=", "XDG_CONFIG_HOME="+filepath.Join(dir, "serve"),
		"XDG_STATE_HOME="+filepath.Join(dir, "serve"))
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("boardlink serve's log:\n%s", stderr.String())
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	_, url, ok := strings.Cut(strings.TrimSpace(line), "listening on ")
	if err != nil || !ok {
		t.Fatalf("boardlink serve: %q %v\n%s", line, err, stderr.String())
	}
	return url
}
