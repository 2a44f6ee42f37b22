package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// TestAgentLogs: a real boardlinkd logs at start what it serves (its id,
// state dir, roots, how hosts get in), and then, each line with the board
// id, every session with its peer and authentication, every push and pull
// with bytes and sha256, and every refused login.
func TestAgentLogs(t *testing.T) {
	b := startSimBoard(t, 200*time.Millisecond)
	local := filepath.Join(t.TempDir(), "log.bin")
	if err := os.WriteFile(local, []byte("logged transfer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := cli(t, "", "push", b.ws, local, b.files+"/"); code != 0 {
		t.Fatalf("push: %d %s", code, stderr)
	}
	if _, stderr, code := cli(t, "", "pull", b.ws, b.files+"/log.bin", t.TempDir()); code != 0 {
		t.Fatalf("pull: %d %s", code, stderr)
	}
	t.Setenv("BOARDLINK_TOKEN", "not-the-token")
	if _, _, code := cli(t, "", "info", b.ws); code != exitLink {
		t.Fatalf("a wrong token: exit %d", code)
	}
	testenv.Eventually(t, "the refused login in the log", func() bool {
		return strings.Contains(b.stderr.String(), `msg="authentication failed"`)
	})
	logs := b.stderr.String()
	for _, want := range []string{
		`msg="boardlinkd started" .*id=sim-\w+ state_dir=` + regexp.QuoteMeta(b.state) + ` roots=\[` + regexp.QuoteMeta(b.files),
		`msg=access fingerprint=SHA256:\S+ tokens=1 .*image_keys=0`,
		`msg=session board=sim-\w+ peer=127\.0\.0\.1:\d+ link=\S+ auth=token`,
		`msg="session ended" board=sim-\w+ peer=\S+ .*duration=`,
		`msg=push board=sim-\w+ path=` + regexp.QuoteMeta(b.files+"/log.bin") + ` .*bytes=16 .*sha256=[0-9a-f]{64}`,
		`msg=pull board=sim-\w+ path=` + regexp.QuoteMeta(b.files+"/log.bin") + ` .*duration=`,
		`level=WARN msg="authentication failed" board=sim-\w+ peer=127\.0\.0\.1`,
	} {
		if !regexp.MustCompile(want).MatchString(logs) {
			t.Fatalf("no line matching %s in boardlinkd's log:\n%s", want, logs)
		}
	}
}

// TestAgentConfigUnknownKey: a typo in boardlinkd's config file is named
// with the keys it could have been, not a Go type.
func TestAgentConfigUnknownKey(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the real boardlinkd")
	}
	bin := testenv.GoBuild(t, "../boardlinkd")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "boardlinkd.yaml")
	if err := os.WriteFile(cfg, []byte("board: sim\nrootz: [/tmp]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--state-dir", filepath.Join(dir, "state"), "--config", cfg, "--no-mdns").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "line 2: unknown key rootz; known keys: board, state_dir,") ||
		!strings.Contains(string(out), " roots,") || strings.Contains(string(out), "main.Config") {
		t.Fatalf("boardlinkd with a typo in its config: %v\n%s", err, out)
	}
}
