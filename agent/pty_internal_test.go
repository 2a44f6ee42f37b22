package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestLoginShell: the user's shell from passwd, by uid; one that refuses
// logins or cannot run gives way to $SHELL, then /bin/sh.
func TestLoginShell(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "myshell")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	uid := strconv.Itoa(os.Getuid())
	other := strconv.Itoa(os.Getuid() + 1)
	entry := func(shell string) string { return "me:x:" + uid + ":0:Me:/home/me:" + shell + "\n" }
	for _, tc := range []struct {
		name, passwd, env, want string
	}{
		{"passwd", "other:x:" + other + ":0::/:/bin/false\n" + entry(exe), "/bin/false", exe},
		{"nologin", entry("/usr/sbin/nologin"), exe, exe},
		{"false", entry("/bin/false"), "", "/bin/sh"},
		{"not executable", entry(filepath.Join(dir, "missing")), "relative/sh", "/bin/sh"},
		{"no entry", "other:x:" + other + ":0::/:" + exe + "\n", exe, exe},
		{"no passwd", "", "", "/bin/sh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "passwd")
			if tc.passwd != "" {
				if err := os.WriteFile(path, []byte(tc.passwd), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("SHELL", tc.env)
			u := loginShell(path)
			if u.shell != tc.want {
				t.Fatalf("shell %q, want %q", u.shell, tc.want)
			}
			if tc.name == "passwd" && (u.name != "me" || u.home != "/home/me") {
				t.Fatalf("user %+v", u)
			}
		})
	}
}
