package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// The in-process CLI tests cannot start this test binary as a line mux:
// they open lines directly, as with BOARDLINK_LINE_MUX=off. The shared
// line is tested through the built binary (TestLineMuxCLI).
func init() { lineMuxOff = true }

// TestLineMuxCLI: the first call on a serial line starts a line mux that
// later calls share; Ctrl-C on a call through it ends its command on the
// board; the mux ends once its last client has been gone for
// BOARDLINK_PERSIST.
func TestLineMuxCLI(t *testing.T) {
	d := startBoard(t)
	bin := testenv.GoBuild(t, ".")
	rt := t.TempDir()
	env := append(os.Environ(), "XDG_RUNTIME_DIR="+rt, "BOARDLINK_PERSIST=300ms")
	line := "unix://" + d.sock
	cli := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"--known-boards", knownBoards(t)}, args...)...)
		cmd.Env = env
		return cmd
	}
	for _, word := range []string{"one", "two"} {
		var stderr bytes.Buffer
		cmd := cli("exec", line, "--", "echo", word)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || string(out) != word+"\n" {
			t.Fatalf("exec %s: %q %v\n%s", word, out, err, stderr.String())
		}
	}
	socks, _ := filepath.Glob(filepath.Join(rt, "boardlink", "line-*.sock"))
	if len(socks) != 1 {
		t.Fatalf("line mux sockets: %v", socks)
	}

	cmd := cli("exec", line, "--", "sh", "-c", "echo ready; exec sleep 1000")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if l, _ := bufio.NewReader(stdout).ReadString('\n'); l != "ready\n" {
		t.Fatalf("first line %q", l)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err = cmd.Wait()
	if cmd.ProcessState.ExitCode() != 130 {
		t.Fatalf("exec after Ctrl-C: %v, stderr %q", err, stderr.String())
	}
	testenv.Eventually(t, "the command ended on the board", func() bool { return d.execs.Running() == 0 })

	testenv.Eventually(t, "the line mux gone once idle", func() bool {
		_, err := os.Stat(socks[0])
		return os.IsNotExist(err)
	})
}
