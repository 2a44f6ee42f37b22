package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// TestOpsCLI: `boardlink --server URL` push, pull (of files and, with
// -r, of trees), reboot, ota and rollout go through the service; while bob's lease holds a board,
// alice's push, pull, reboot and ota of it are refused (exit 1) with his
// name.
func TestOpsCLI(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	o := startOTALab(t, 2, false)
	ctx := context.Background()
	home := t.TempDir()
	run := cliRunner(t, cli, "--server", o.srv.URL, "BOARDLINK_TOKEN="+o.tokens["alice"], "BOARDLINK_LEASE=",
		"XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home, "XDG_STATE_HOME="+home)
	sb := o.sim.Boards[0]
	data := make([]byte, 200<<10)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run("push", sb.ID, local, sb.Dir()+"/"); code != 0 || !strings.Contains(out, "pushed") {
		t.Fatalf("push: %d %s %s", code, out, errOut)
	}
	if got, err := os.ReadFile(filepath.Join(sb.Dir(), "data.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the board holds %d bytes (%v)", len(got), err)
	}
	into := t.TempDir()
	if out, errOut, code := run("pull", sb.ID, filepath.Join(sb.Dir(), "data.bin"), into, "--json"); code != 0 {
		t.Fatalf("pull: %d %s %s", code, out, errOut)
	}
	got, err := os.ReadFile(filepath.Join(into, "data.bin"))
	if st, _ := os.Stat(filepath.Join(into, "data.bin")); err != nil || !bytes.Equal(got, data) || st.Mode().Perm() != 0o600 {
		t.Fatalf("pulled %d bytes (%v), mode %v", len(got), err, st)
	}
	if out, _, code := run("pull", sb.ID, filepath.Join(sb.Dir(), "data.bin"), "-"); code != 0 || out != string(data) {
		t.Fatalf("pull to stdout: %d, %d bytes", code, len(out))
	}
	if _, errOut, code := run("pull", sb.ID, filepath.Join(sb.Dir(), "missing"), into); code != 1 {
		t.Fatalf("pull of a missing file: %d %s", code, errOut)
	}
	// A tree each way: into the board's directory under its own name, and
	// back into a new local directory; a file with -r is pulled as one.
	tree := filepath.Join(t.TempDir(), "suite")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "data.bin"), data, 0o640); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run("push", "-r", sb.ID, tree, sb.Dir()); code != 0 || !strings.Contains(out, "pushed") {
		t.Fatalf("push -r: %d %s %s", code, out, errOut)
	}
	if got, err := os.ReadFile(filepath.Join(sb.Dir(), "suite", "sub", "data.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("push -r: the board holds %d bytes (%v)", len(got), err)
	}
	back := filepath.Join(t.TempDir(), "back")
	if out, errOut, code := run("pull", "-r", sb.ID, filepath.Join(sb.Dir(), "suite"), back); code != 0 || !strings.Contains(out, "pulled") {
		t.Fatalf("pull -r: %d %s %s", code, out, errOut)
	}
	if got, err := os.ReadFile(filepath.Join(back, "sub", "data.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("pull -r: %d bytes (%v)", len(got), err)
	}
	if out, errOut, code := run("pull", "-r", sb.ID, filepath.Join(sb.Dir(), "data.bin"), filepath.Join(back, "one.bin")); code != 0 {
		t.Fatalf("pull -r of a file: %d %s %s", code, out, errOut)
	}

	out, errOut, code := run("reboot", sb.ID, "--wait", "--json")
	var rb dispatcher.Rebooted
	if err := json.Unmarshal([]byte(out), &rb); code != 0 || err != nil || rb.NewBootID == rb.OldBootID || rb.NewBootID != sb.BootID() {
		t.Fatalf("reboot: %d %s %s", code, out, errOut)
	}
	o.waitIdle()
	out, errOut, code = run("ota", sb.ID, o.img, "--json")
	var rep dispatcher.OTAReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Update == nil || rep.Update.Result != proto.ResultCommitted {
		t.Fatalf("ota: %d %s %s", code, out, errOut)
	}
	o.waitIdle()
	// The other board takes the image in a rollout run by the service; the
	// first already runs it.
	out, errOut, code = run("rollout", o.img, "--select", "model=sim", "-C", "1", "--gate", "exec: true")
	if code != 0 || !strings.Contains(out, "1 committed, 1 current") || o.commitsOf(o.sim.Boards[1].ID) != 1 {
		t.Fatalf("rollout: %d %s %s", code, out, errOut)
	}

	l, err := acquire(ctx, o.clients["bob"], AcquireRequest{Boards: []string{sb.ID}, TTLMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"push", sb.ID, local, sb.Dir() + "/"},
		{"pull", sb.ID, filepath.Join(sb.Dir(), "data.bin"), into},
		{"reboot", sb.ID},
		{"ota", sb.ID, o.image("3.0.0")},
	} {
		if _, errOut, code := run(args...); code != 1 || !strings.Contains(errOut, "bob") || !strings.Contains(errOut, l.ID) {
			t.Errorf("%s under bob's lease: %d %s", args[0], code, errOut)
		}
	}
}

// cliRunner returns a function that runs the CLI cli with flags before
// its arguments (--server URL) and env added to this process's, and
// returns its stdout, its stderr and its exit status.
func cliRunner(t *testing.T, cli, flag, value string, env ...string) func(args ...string) (string, string, int) {
	return func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(cli, append([]string{flag, value}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}
}
