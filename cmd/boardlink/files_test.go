package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

func TestPushPullCLI(t *testing.T) {
	d := startBoard(t)
	local := filepath.Join(t.TempDir(), "payload.bin")
	data := make([]byte, 200<<10)
	rand.Read(data)
	if err := os.WriteFile(local, data, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, board := range []string{"ws://" + d.ws.Addr().String(), "unix://" + d.sock} {
		t.Run(strings.SplitN(board, ":", 2)[0], func(t *testing.T) {
			dir := filepath.Join(d.files, t.Name())
			stdout, stderr, code := cli(t, "", "push", board, local, dir+"/", "--parents", "--json")
			if code != 0 {
				t.Fatalf("push: %d %s", code, stderr)
			}
			var res proto.FileResult
			if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Size != int64(len(data)) {
				t.Fatalf("push --json: %q %v", stdout, err)
			}
			remote := filepath.Join(dir, "payload.bin")
			if res.Path != remote {
				t.Fatalf("pushed to %s, want %s", res.Path, remote)
			}
			back := t.TempDir()
			stdout, stderr, code = cli(t, "", "pull", board, remote, back)
			if code != 0 || !strings.Contains(stdout, "pulled "+remote) || !strings.Contains(stdout, res.SHA256) {
				t.Fatalf("pull: %d %q %s", code, stdout, stderr)
			}
			got, err := os.ReadFile(filepath.Join(back, "payload.bin"))
			if err != nil || string(got) != string(data) {
				t.Fatalf("pulled file differs (%v)", err)
			}
			if st, _ := os.Stat(filepath.Join(back, "payload.bin")); st.Mode().Perm() != 0o750 {
				t.Fatalf("mode %v, want 0750", st.Mode())
			}
		})
	}
	board := "ws://" + d.ws.Addr().String()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"outside the roots", []string{"push", board, local, "/etc/boardlink-test"}, 2, "outside the agent's file roots"},
		{"relative path", []string{"push", board, local, "tmp/x"}, 2, "absolute, clean path"},
		{"missing local", []string{"push", board, "/nonexistent/file", d.files + "/x"}, 1, "no such file"},
		{"missing remote", []string{"pull", board, d.files + "/nope", t.TempDir()}, 1, "no such file"},
		{"bad sha256", []string{"download", board, "http://127.0.0.1:1/x", d.files + "/x", "--sha256", "abc"}, 2, "64 hex digits"},
		{"too few args", []string{"pull", board}, 2, "takes 3 argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := cli(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
			}
		})
	}
}
