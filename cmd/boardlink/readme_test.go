package main

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// tourBlocks are the ```sh blocks of the README's "A short tour", in
// order: the commands it says run as written. Its ```console blocks need
// a person (or hardware) and are not run.
func tourBlocks(t *testing.T, readme string) []string {
	t.Helper()
	start := strings.Index(readme, "\n## A short tour\n")
	if start < 0 {
		t.Fatal(`README.md has no "## A short tour"`)
	}
	section := readme[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?ms)^```sh\n(.*?)^```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) < 5 {
		t.Fatalf("the tour has %d sh blocks", len(blocks))
	}
	return blocks
}

// TestReadmeTour runs the README's tour as written, every ```sh block in
// order as one bash script with set -e, from the top of the repository,
// in a network namespace of its own (its agents take ports 7207 and 7208
// and advertise on its lo). The README begins with the demo and the
// tests.
func TestReadmeTour(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries and runs the tour's agents")
	}
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	if !regexp.MustCompile("^# boardlink\n\n```sh\ngo run ./cmd/boardlink demo +#[^\n]*\ngo test ./\\.\\.\\. +#[^\n]*\n```\n").MatchString(readme) {
		t.Fatalf("README.md must begin with `go run ./cmd/boardlink demo` and `go test ./...`:\n%.200s", readme)
	}
	blocks := tourBlocks(t, readme)
	if !testenv.InPrivateLoopback(t) {
		return
	}
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "the tour serves a file with python3 -m http.server: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-c", strings.Join(blocks, "\n"))
	cmd.Dir = "../.."
	// The agents the tour starts are in the script's process group: a
	// failed step leaves none behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A step that failed (set -e) leaves the agents started before it
	// holding the output open: the tour's end is the script's.
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = append(os.Environ(), "GOCACHE="+goCacheOutsideTest(t), "GOPROXY=off", "BOARDLINK_TOKEN=")
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("the tour failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{"status 42", "status 124", "pushed ", "pulled ", "extracted ", "is back after",
		"committed 1.0.0", "1 committed", "desk-1 "} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("the tour never printed %q:\n%s", want, out.String())
		}
	}
	t.Logf("the tour ran: %d blocks", len(blocks))
}

// goCacheOutsideTest is the build cache of the user, which TestMain hid
// by moving XDG_CACHE_HOME: the tour's go build reuses it.
func goCacheOutsideTest(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "env", "GOCACHE")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XDG_CACHE_HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
