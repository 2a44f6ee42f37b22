package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/internal/testenv"
)

// needSSH skips (or fails under BOARDLINK_E2E=1) without OpenSSH, and
// points the run's temporary files into a directory of the test's, which
// it returns.
func needSSH(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: builds the binaries and runs every case")
	}
	if _, missing := benchkit.FindSSH(); missing != "" {
		testenv.SkipOrFail(t, "%s not found; install with: %s", missing, benchkit.SSHInstall)
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// leftBehind names what a run left in tmp: files, and processes whose
// command line names tmp (boardlinkd's state dir, sshd's config, the ssh
// control socket).
func leftBehind(t *testing.T, tmp string) []string {
	t.Helper()
	var left []string
	entries, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		left = append(left, "file "+e.Name())
	}
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(tmp)) {
			left = append(left, "process "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return left
}

// The smoke mode runs every case and prints every row of both tables;
// it says nothing about speed. It removes what it made.
func TestSmoke(t *testing.T) {
	tmp := needSSH(t)
	var out bytes.Buffer
	if err := run(context.Background(), smokeConfig(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	t.Log(s)
	rows := regexp.MustCompile(`(?m)^\| ([^|]+) \| (client|boardlink) [^|]+ \| [^|]+ \| ([^|]+) \| [^|]+ \| [0-9.]+ \(([0-9.]+)× (faster|slower)\) \| (\d+) \|$`).FindAllStringSubmatch(s, -1)
	want := map[string]int{ // case: rows, each boardlink variant (a link; the CLI also --version) against each peer
		"`true`, persistent connection": 4, "`true`, a fresh CLI process": 6, "push 1 MiB": 4, "pull 1 MiB": 4,
		"`true` over a serial line (115200 baud)": 1,
	}
	cfg := smokeConfig()
	n := map[string]string{"`true`, persistent connection": "3", "`true`, a fresh CLI process": "2", "push 1 MiB": "1", "pull 1 MiB": "1",
		"`true` over a serial line (115200 baud)": "2"}
	if cfg.execs != 3 || cfg.cli != 2 || cfg.runs != 1 || cfg.serial != 2 || cfg.size != 1<<20 {
		t.Fatalf("smokeConfig changed (%+v): update this test", cfg)
	}
	if dir, err := tmpfsDir(); err == nil { // the transfers run on a tmpfs too
		os.Remove(dir)
		want["push 1 MiB, tmpfs"], want["pull 1 MiB, tmpfs"] = 4, 4
		n["push 1 MiB, tmpfs"], n["pull 1 MiB, tmpfs"] = "1", "1"
	}
	for _, c := range lineCases() { // the serial transfers against ZMODEM (zmodem.go)
		want[c.what(cfg)], n[c.what(cfg)] = 1, "1"
	}
	peers := map[string]bool{}
	for _, r := range rows {
		want[r[1]]--
		peers[strings.TrimSpace(r[3])] = true
		if r[6] != n[r[1]] {
			t.Errorf("row %q: %s runs, want %s", r[0], r[6], n[r[1]])
		}
	}
	for c, left := range want {
		if left != 0 {
			t.Errorf("case %q: %d rows missing (negative: too many)", c, left)
		}
	}
	// Each transfer's pairs again, of the machine's CPU per run: a ratio,
	// or none where a 1 MiB run took less than a tick.
	cpuWant := map[string]int{}
	for _, c := range []string{"push 1 MiB", "pull 1 MiB", "push 1 MiB, tmpfs", "pull 1 MiB, tmpfs"} {
		if _, ok := want[c]; ok {
			cpuWant[c] = 4
		}
	}
	cpuRows := regexp.MustCompile(`(?m)^\| ([^|]+)`+regexp.QuoteMeta(cpuWhat)+` \| boardlink [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| `+
		`([0-9.]+ \([0-9.]+× (more|less)\)|none \(under the 10ms tick\)) \| 1 \|$`).FindAllStringSubmatch(s, -1)
	for _, r := range cpuRows {
		cpuWant[r[1]]--
	}
	for c, left := range cpuWant {
		if left != 0 {
			t.Errorf("case %q: %d rows of CPU missing (negative: too many)", c, left)
		}
	}
	for _, p := range []string{"fork/exec /bin/true", "ssh shell /bin/true", "ssh host true", "ssh -S ctl host true",
		"scp upload", "scp download", "ssh 'cat > f'", "ssh 'cat f'", "sh on a serial line"} {
		if !peers[p] {
			t.Errorf("no row against %q", p)
		}
	}
	for _, line := range []string{
		"| boardlinkd --no-mdns | ",
		"| boardlinkd --no-mdns, after a session (one ws and one wss exec) | ",
		"| boardlinkd, mDNS on lo (own netns) | ",
		"| linux/" + runtime.GOARCH + " | ",
		"machine: ",
	} {
		if !strings.Contains(s, line) {
			t.Errorf("no line with %q", line)
		}
	}
	if left := leftBehind(t, tmp); len(left) > 0 {
		t.Errorf("left behind:\n%s", strings.Join(left, "\n"))
	}
}

// cancelAt is an output that cancels the run once it printed marker.
type cancelAt struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (c *cancelAt) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if strings.Contains(c.buf.String(), c.marker) {
		c.cancel()
	}
	return len(p), nil
}

// A run cancelled (as Ctrl-C does) while everything is up stops what it
// started and removes what it wrote.
func TestInterruptCleansUp(t *testing.T) {
	tmp := needSSH(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &cancelAt{marker: "true by a fresh CLI process", cancel: cancel}
	err := run(ctx, smokeConfig(), out)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run cancelled during the CLI case: %v, want context.Canceled\n%s", err, out.buf.String())
	}
	if left := leftBehind(t, tmp); len(left) > 0 {
		t.Errorf("left behind:\n%s", strings.Join(left, "\n"))
	}
}
