package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// debianPython is where Debian's Python packages are installed for.
const debianPython = "/usr/bin/python3"

// TestPythonClient: a client written from the protocol document alone,
// with python3-websockets and python3-cryptography, checks the board's key
// over wss:// (against what boardlinkd fingerprint prints), proves the
// token with the MAC, and uses the Bearer header; a wrong one gets 401.
func TestPythonClient(t *testing.T) {
	if err := exec.Command(debianPython, "-c", "import websockets, cryptography").Run(); err != nil {
		testenv.SkipOrFail(t, "no python3-websockets or python3-cryptography for %s: %v", debianPython, err)
	}
	bin := buildAgent(t)
	b := startBoard(t, bin, "--listen", "127.0.0.1:0")
	url := b.addr(t) + "/v1/ws"
	state := stateDirOf(t, b)
	fp, err := exec.Command(bin, "fingerprint", "--state-dir", state).Output()
	if err != nil {
		t.Fatalf("boardlinkd fingerprint: %v", err)
	}
	out, err := exec.Command(debianPython, filepath.Join("testdata", "client.py"), url, b.token, strings.TrimSpace(string(fp))).CombinedOutput()
	t.Logf("client.py:\n%s", out)
	if err != nil {
		t.Fatalf("client.py: %v", err)
	}
	for _, check := range []string{"board proof", "refused before auth", "token proof", "bearer", "wrong bearer"} {
		if !strings.Contains(string(out), `"check": "`+check+`", "ok": true`) {
			t.Errorf("client.py did not pass %q", check)
		}
	}
}

// stateDirOf is the --state-dir b runs with (the last one given wins).
func stateDirOf(t *testing.T, b *simBoard) string {
	t.Helper()
	dir := ""
	for i, a := range b.cmd.Args {
		if a == "--state-dir" && i+1 < len(b.cmd.Args) {
			dir = b.cmd.Args[i+1]
		}
	}
	if dir == "" {
		t.Fatal("no --state-dir")
	}
	return dir
}
