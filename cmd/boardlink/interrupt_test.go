package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// ptyRun is the built CLI running on a terminal of its own, as a person
// runs it: its output, and Ctrl-C typed on its terminal.
type ptyRun struct {
	cmd    *exec.Cmd
	master *os.File
	out    testenv.Buffer
	read   chan struct{} // closed when the terminal's output ended
}

// startOnPTY runs the built CLI on a terminal of its own, 24x80.
func startOnPTY(t *testing.T, bin string, args ...string) *ptyRun {
	t.Helper()
	return startSized(t, bin, 24, 80, args...)
}

// ctrlC types Ctrl-C: the terminal sends SIGINT to the CLI.
func (r *ptyRun) ctrlC(t *testing.T) {
	t.Helper()
	if _, err := r.master.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
}

// wait returns the exit status and everything the terminal showed.
func (r *ptyRun) wait() (int, string) {
	err := r.cmd.Wait()
	<-r.read
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return code, r.out.String()
}

// readTerminal copies what a pty's master reads into out, until the
// terminal's other side is closed (EIO), then closes done.
func readTerminal(master *os.File, out *testenv.Buffer, done chan<- struct{}) {
	defer close(done)
	_, _ = io.Copy(out, master)
}

// sizeOf is the size of the one file in dir whose name ends in suffix.
func sizeOf(dir, suffix string) int64 {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), suffix) {
			if st, err := e.Info(); err == nil {
				return st.Size()
			}
		}
	}
	return -1
}

// TestCtrlCStopsTransfers types Ctrl-C on the terminal of a push and of a
// pull of 256 MiB once bytes move: each stops at once (the file never lands
// whole), exits 130, says where it stopped and how to resume, and the
// bytes moved stay in the partial file; the same push then resumes.
func TestCtrlCStopsTransfers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and moves up to 256 MiB")
	}
	bin := testenv.GoBuild(t, ".")
	d := startBoard(t)
	const size = 256 << 20
	big := filepath.Join(t.TempDir(), "big.bin")
	sparse(t, big, size)

	t.Run("push", func(t *testing.T) {
		dir := filepath.Join(d.files, "push")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		r := startOnPTY(t, bin, "push", d.ws.URL(), big, dir+"/")
		testenv.Eventually(t, "the board receiving bytes", func() bool { return sizeOf(dir, ".boardlink-partial") > 0 })
		r.ctrlC(t)
		code, out := r.wait()
		if code != 130 || !strings.Contains(out, "interrupted: push of big.bin stopped at ") ||
			!strings.Contains(out, "run the same push again to resume") {
			t.Fatalf("push after Ctrl-C: exit %d, terminal:\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "big.bin")); err == nil {
			t.Fatal("the file landed whole after Ctrl-C")
		}
		kept := sizeOf(dir, ".boardlink-partial")
		if kept <= 0 || kept >= size {
			t.Fatalf("the board's partial file holds %d bytes", kept)
		}
		stdout, stderr, code := cli(t, "", "push", d.ws.URL(), big, dir+"/")
		if code != 0 || !strings.Contains(stdout, "resumed at ") {
			t.Fatalf("push again: exit %d\n%s%s", code, stdout, stderr)
		}
		t.Logf("stopped with %s on the board; then %s", humanBytes(kept), strings.TrimSpace(stdout))
	})

	t.Run("pull", func(t *testing.T) {
		remote := filepath.Join(d.files, "pull.bin")
		sparse(t, remote, size)
		local := t.TempDir()
		r := startOnPTY(t, bin, "pull", d.ws.URL(), remote, local)
		testenv.Eventually(t, "bytes arriving", func() bool { return sizeOf(local, ".boardlink-partial") > 0 })
		r.ctrlC(t)
		code, out := r.wait()
		if code != 130 || !strings.Contains(out, "interrupted: pull of pull.bin stopped at ") ||
			!strings.Contains(out, "run the same pull again to resume") {
			t.Fatalf("pull after Ctrl-C: exit %d, terminal:\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Join(local, "pull.bin")); err == nil {
			t.Fatal("the file landed whole after Ctrl-C")
		}
		if kept := sizeOf(local, ".boardlink-partial"); kept <= 0 || kept >= size {
			t.Fatalf("the local partial file holds %d bytes", kept)
		}
	})
}

// sparse makes a file of size zero bytes that takes no disk.
func sparse(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}
