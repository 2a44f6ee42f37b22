package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAddressesCLI: HOST:PORT is a WebSocket address, a malformed address
// and a directory pushed without -r are usage errors (2) found before
// anything is dialed, and a session without a token says that none was
// given, naming where one goes.
func TestAddressesCLI(t *testing.T) {
	d := startBoard(t)
	hostPort := strings.TrimPrefix(d.ws.URL(), "wss://")
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		token string
		args  []string
		code  int
		want  string
	}{
		{"host:port", testToken, []string{"exec", hostPort, "--", "echo", "hi"}, 0, ""},
		{"port out of range", testToken, []string{"exec", "ws://127.0.0.1:99999", "--", "true"}, 2, "99999"},
		{"ws:// without a host", testToken, []string{"exec", "ws://", "--", "true"}, 2, "ws://"},
		{"[v6]:port out of range", testToken, []string{"info", "[::1]:70000"}, 2, "70000"},
		{"a directory without -r", testToken, []string{"push", hostPort, dir, d.files + "/"}, 2, "give -r"},
		{"no token", "", []string{"info", hostPort}, 255, "no token given"},
		{"a wrong token", "not-the-token", []string{"info", hostPort}, 255, "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BOARDLINK_TOKEN", tc.token)
			stdout, stderr, code := cli(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
			}
			if tc.code == 0 && stdout != "hi\n" {
				t.Fatalf("%v: stdout %q", tc.args, stdout)
			}
			if tc.name == "a wrong token" && strings.Contains(stderr, "no token given") {
				t.Fatalf("a wrong token reported as none: %q", stderr)
			}
		})
	}
}

// TestBoardsFile: a name from boards.yaml stands for its board's address,
// with the token file and the key fingerprint given there; a key the file
// does not name is refused with the keys it knows, not a Go type.
func TestBoardsFile(t *testing.T) {
	d := startBoard(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "bench.token")
	if err := os.WriteFile(token, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(body string) string {
		p := filepath.Join(dir, "boards.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("BOARDLINK_TOKEN", "") // the file's token file, or none
	good := write("boards:\n  bench:\n    address: " + strings.TrimPrefix(d.ws.URL(), "wss://") +
		"\n    token_file: bench.token\n    fingerprint: " + d.agent.Fingerprint().String() + "\n")
	stdout, stderr, code := cli(t, "", "--boards-file", good, "exec", "bench", "--", "echo", "via the alias")
	if code != 0 || stdout != "via the alias\n" {
		t.Fatalf("exec through the alias: exit %d %q %s", code, stdout, stderr)
	}

	other := write("boards:\n  bench:\n    address: " + d.ws.URL() +
		"\n    token_file: bench.token\n    fingerprint: SHA256:" + strings.Repeat("B", 42) + "A\n")
	if _, stderr, code := cli(t, "", "--boards-file", other, "info", "bench"); code != 255 {
		t.Fatalf("a board whose key is not the file's fingerprint: exit %d %s", code, stderr)
	}

	typo := write("boards:\n  bench:\n    adress: 127.0.0.1\n")
	_, stderr, code = cli(t, "", "--boards-file", typo, "info", "bench")
	if code != 2 || !strings.Contains(stderr, "unknown key adress") || !strings.Contains(stderr, "known keys: address, fingerprint, token_file") ||
		strings.Contains(stderr, "main.") {
		t.Fatalf("a typo in boards.yaml: exit %d %q", code, stderr)
	}
}

// TestVerbose: -v logs the dial and the session it opened, on stderr.
func TestVerbose(t *testing.T) {
	d := startBoard(t)
	_, stderr, code := cli(t, "", "-v", "info", d.ws.URL())
	if code != 0 || !strings.Contains(stderr, "msg=dial") || !strings.Contains(stderr, `msg="session open" board=demo-board`) ||
		!strings.Contains(stderr, "msg=call method=board.info took=") {
		t.Fatalf("-v info: exit %d, stderr:\n%s", code, stderr)
	}
}
