package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/qemuboard"
)

// TestQEMUBootstrap: a board whose ttyS1 has only busybox's root shell,
// no agent. boardlink bootstrap finds its architecture, sends the agent
// through the shell (gzipped, base64, chunks checked by sha256 with
// busybox's tools), starts it on ttyS1 in place of the shell, and exec
// works at once, through the CLI as people use it.
func TestQEMUBootstrap(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testCtx(t)
	agent, err := lab.cache.Agent(ctx, "..")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(bin)
	want := hex.EncodeToString(h[:])

	// The board, powered on: no beacon to wait for, but /init's word
	// that the shell is there.
	b := buildBoard(ctx, t, qemuboard.Spec{ID: "qemu-shell", Serial: "ttyS1", ShellOnly: true,
		SlotA: slotImage(ctx, t, "1.0.0", "pass")})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b.waitConsole(ctx, b.ShellReady())

	r := b.cliOK(ctx, "bootstrap", b.AgentAddr(), "--agent", agent, "--id", b.Disk.Spec.ID, "--model", model,
		"--listen", "2s", "--start-timeout", "5m")
	t.Logf("bootstrap: %s", strings.TrimSpace(r.stdout))
	if !strings.Contains(r.stdout, "x86_64") || !strings.Contains(r.stdout, "gzip, base64") {
		t.Errorf("bootstrap says %q: want the board's x86_64 and a gzipped base64 upload", r.stdout)
	}

	// A second bootstrap hears the agent's beacon and types nothing.
	if r := b.cli(ctx, "bootstrap", b.AgentAddr(), "--agent", agent); r.code != 1 || !strings.Contains(r.stderr, "already") {
		t.Errorf("bootstrap on a line with an agent: exit %d, %q; want 1 and that an agent is there", r.code, r.stderr)
	}

	// exec at once, through the agent bootstrap started on the shell's line.
	out := b.cliOK(ctx, "exec", b.AgentAddr(), "--", "sha256sum", "/tmp/boardlink/boardlinkd")
	if !strings.HasPrefix(out.stdout, want) {
		t.Errorf("the agent on the board: %q, want sha256 %s", out.stdout, want)
	}
	if out := b.cliOK(ctx, "exec", b.AgentAddr(), "--", "uname", "-m"); out.stdout != "x86_64\n" {
		t.Errorf("uname -m through the bootstrapped agent: %q", out.stdout)
	}

	// After the exec calls a line mux may hold the line (then bootstrap
	// sees the line taken), or the agent beacons again: either way
	// bootstrap types nothing.
	if r := b.cli(ctx, "bootstrap", b.AgentAddr(), "--agent", agent); r.code != 1 ||
		!strings.Contains(r.stderr, "in use") && !strings.Contains(r.stderr, "already") {
		t.Errorf("bootstrap after exec: exit %d, %q; want 1 and that the line is in use or an agent is there", r.code, r.stderr)
	}
}
