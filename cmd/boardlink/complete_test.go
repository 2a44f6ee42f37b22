package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompleteBoardIDs: `boardlink exec <TAB>` offers the boards this host
// had a session with and the names of boards.yaml; a later argument (a
// local path) completes as a file.
func TestCompleteBoardIDs(t *testing.T) {
	d := startBoard(t)
	if _, stderr, code := cli(t, "", "info", d.ws.URL()); code != 0 {
		t.Fatalf("info: %d %s", code, stderr)
	}
	boards := filepath.Join(t.TempDir(), "boards.yaml")
	if err := os.WriteFile(boards, []byte("boards:\n  bench7:\n    address: 10.0.0.7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := cli(t, "", "--boards-file", boards, "__complete", "exec", "")
	if code != 0 || !strings.Contains(stdout, "demo-board\n") || !strings.Contains(stdout, "bench7\n") || !strings.HasSuffix(stdout, ":4\n") {
		t.Fatalf("exec <TAB>: exit %d %q %s", code, stdout, stderr)
	}
	stdout, _, _ = cli(t, "", "--boards-file", boards, "__complete", "push", "dem")
	if !strings.HasPrefix(stdout, "demo-board\n") || strings.Contains(stdout, "bench7") {
		t.Fatalf("push dem<TAB>: %q", stdout)
	}
	stdout, _, _ = cli(t, "", "__complete", "push", "demo-board", "")
	if !strings.HasSuffix(stdout, ":0\n") {
		t.Fatalf("push BOARD <TAB> does not complete files: %q", stdout)
	}
}
