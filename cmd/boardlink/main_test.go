package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// startBoard runs the demo's in-process board for a test.
func startBoard(t *testing.T) *demoBoard {
	t.Helper()
	d, err := startDemoBoard(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.stop)
	// The test knows the board: no "trusting on first use" in its output.
	if err := dispatcher.NewKnownBoards(knownBoards(t)).Pin(context.Background(), "demo-board", d.agent.Fingerprint(), false); err != nil {
		t.Fatal(err)
	}
	return d
}

// cli runs the CLI in-process and returns stdout, stderr and exit status.
// Each test pins board keys in a known-boards file of its own: the tests'
// boards share ids (sim-000, demo-board), not keys.
func cli(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append([]string{"--known-boards", knownBoards(t)}, args...)
	err := runWithStdin(context.Background(), strings.NewReader(stdin), args, &stdout, &stderr)
	code := exitStatus(err, &stderr)
	return stdout.String(), stderr.String(), code
}

// knownBoards is the known-boards file of t's top-level test, shared by
// its subtests, under the test run's config directory (TestMain).
func knownBoards(t *testing.T) string {
	top, _, _ := strings.Cut(t.Name(), "/")
	return filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "known", top+".json")
}

var labs atomic.Int64

// labPrefix names the boards of a test's lab apart from every other lab's:
// boards of two labs never share an id, as boards of one lab never do.
func labPrefix() string { return fmt.Sprintf("lab%d", labs.Add(1)) }

func TestExecExitStatus(t *testing.T) {
	d := startBoard(t)
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		tests := []struct {
			name           string
			args           []string
			stdin          string
			stdout, stderr string
			code           int
		}{
			{"ok", []string{"--", "echo", "hi"}, "", "hi\n", "", 0},
			{"exit 1", []string{"--", "false"}, "", "", "", 1},
			{"exit 42 with both streams", []string{"--shell", "--", "echo out; echo err >&2; exit 42"}, "", "out\n", "err\n", 42},
			{"signal", []string{"--", "sh", "-c", "kill -TERM $$"}, "", "", "boardlink: command killed by signal TERM\n", 128 + 15},
			{"timeout", []string{"--timeout", "100ms", "--", "sleep", "100"}, "", "", "boardlink: command timed out after 100ms and was killed\n", 124},
			{"stdin", []string{"--", "tr", "a-z", "A-Z"}, "abc", "ABC", "", 0},
			{"no stdin", []string{"-n", "--", "cat"}, "abc", "", "", 0},
			{"env and cwd", []string{"-e", "X=1", "--cwd", "/tmp", "--shell", "--", "echo $X $(pwd)"}, "", "1 /tmp\n", "", 0},
			{"not found", []string{"--", "/no/such/cmd"}, "", "", "", 127},
		}
		for _, tc := range tests {
			t.Run(board[:4]+"/"+tc.name, func(t *testing.T) {
				args := append([]string{"exec", board}, tc.args...)
				stdout, stderr, code := cli(t, tc.stdin, args...)
				if code != tc.code || stdout != tc.stdout || (tc.stderr != "" || code == 0) && stderr != tc.stderr {
					t.Fatalf("got %d %q %q, want %d %q %q", code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
				}
			})
		}
	}
}

func TestCLIErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"link down", []string{"exec", "ws://" + closed, "--", "true"}, 255, "connection refused"},
		{"serial link down", []string{"info", "tcp://" + closed}, 255, "connection refused"},
		{"unknown scheme", []string{"info", "http://x"}, 2, "unknown scheme"},
		{"unknown board id", []string{"info", "--iface", "lo", "no-such-board"}, 2, "no-such-board"},
		{"missing command", []string{"exec", "ws://" + closed}, 2, "command after --"},
		{"two boards", []string{"exec", "a", "b", "--", "true"}, 2, "one BOARD"},
		{"bad flag", []string{"exec", "--frobnicate", "x", "--", "true"}, 2, "unknown flag"},
		{"bad env", []string{"exec", "ws://" + closed, "-e", "NOEQ", "--", "true"}, 2, "KEY=VALUE"},
		{"info arity", []string{"info"}, 2, "takes 1 argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := cli(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("got %d %q, want %d and %q", code, stderr, tc.code, tc.msg)
			}
		})
	}
}

func TestInfo(t *testing.T) {
	d := startBoard(t)
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		stdout, _, code := cli(t, "", "info", board, "--json")
		var info proto.BoardInfo
		if err := json.Unmarshal([]byte(stdout), &info); err != nil || code != 0 {
			t.Fatalf("%s: %v %d %q", board, err, code, stdout)
		}
		if info.ID != "demo-board" || info.BootID == "" || info.Protocol != proto.Version {
			t.Fatalf("%+v", info)
		}
		stdout, _, _ = cli(t, "", "info", board)
		for _, want := range []string{"demo-board", info.BootID, "lab=demo", "exec"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("table lacks %q:\n%s", want, stdout)
			}
		}
	}
}

func TestHelpIsComplete(t *testing.T) {
	for _, verb := range []string{"", "info", "exec", "push", "pull", "download", "reboot", "console", "image", "ota", "rollout", "history", "demo"} {
		args := []string{"--help"}
		if verb != "" {
			args = []string{verb, "--help"}
		}
		stdout, _, code := cli(t, "", args...)
		if code != 0 || !strings.Contains(stdout, "Usage:") {
			t.Fatalf("%s --help: %d\n%s", verb, code, stdout)
		}
	}
	stdout, _, _ := cli(t, "", "exec", "--help")
	for _, want := range []string{"128+N", "124", "255", "--timeout", "--env", "--cwd", "Examples:"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("exec --help lacks %q", want)
		}
	}
}
