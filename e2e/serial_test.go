package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/qemuboard"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// TestQEMUOwnPort is scenario (a): the agent on a serial port of its own
// (ttyS1), the kernel console on ttyS0. It logs the figures too
// (figures_test.go).
func TestQEMUOwnPort(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testCtx(t)
	b := newBoard(ctx, t, qemuboard.Spec{ID: "qemu-own", Serial: "ttyS1", SlotA: slotImage(ctx, t, "1.0.0", "pass")})
	checkBoard(ctx, t, b)
	// Every boot's console is kept, on the port the agent does not use.
	if n := bytes.Count(b.Console(), []byte("Run /init as init process")); n != 2 {
		t.Errorf("the console log holds %d boots, want 2 (the first and the reboot's)", n)
	}
	figures(ctx, t, b)
}

// TestQEMUSharedConsole is scenario (b): the agent on ttyS0, which is the
// kernel console too (console=ttyS0 loglevel=7), with kernel messages
// written while commands and transfers run: the results are exact, and the
// kernel's text comes out of the console stream, whole and in order.
func TestQEMUSharedConsole(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testCtx(t)
	b := newBoard(ctx, t, qemuboard.Spec{ID: "qemu-shared", Serial: "ttyS0", KernelArgs: "loglevel=7",
		SlotA: slotImage(ctx, t, "1.0.0", "pass")})
	console := new(testenv.Buffer)
	c := b.dial(ctx, console)

	// A command that writes to the kernel log between lines of its output.
	const n = 100
	var stdout, stderr bytes.Buffer
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Shell: true, Stdout: &stdout, Stderr: &stderr, Argv: []string{
		fmt.Sprintf(`for i in $(seq 1 %d); do echo "kmsg-exec $i" > /dev/kmsg; echo "out $i"; echo "err $i" >&2; done`, n)}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %+v, %v", res, err)
	}
	if want := numbered("out", n); stdout.String() != want {
		t.Errorf("stdout with kernel messages on the line:\n%q\nwant\n%q", stdout.String(), want)
	}
	if want := numbered("err", n); stderr.String() != want {
		t.Errorf("stderr with kernel messages on the line:\n%q\nwant\n%q", stderr.String(), want)
	}
	testenv.Eventually(t, "the kernel's messages of the command on the console", func() bool {
		return strings.Contains(console.String(), fmt.Sprintf("kmsg-exec %d\r\n", n))
	})
	checkSequence(t, console.String(), "kmsg-exec", n)

	// A push and a pull while the kernel writes to the console.
	data := randomFile(t, 192<<10)
	kmsg := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, dispatcher.ExecRequest{Shell: true, Argv: []string{
			`i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo "kmsg-xfer $i" > /dev/kmsg; usleep 20000; done; echo "kmsg-xfer-end $i" > /dev/kmsg`}})
		kmsg <- err
	}()
	testenv.Eventually(t, "the kernel writing to the console", func() bool {
		return strings.Contains(console.String(), "kmsg-xfer 3\r\n")
	})
	pushed, err := c.Push(ctx, data, "/data/files/noisy.bin", dispatcher.TransferOptions{})
	if err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "noisy.bin")
	if _, err := c.Pull(ctx, "/data/files/noisy.bin", back, dispatcher.TransferOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"touch", "/tmp/stop"}}); err != nil {
		t.Fatal(err)
	}
	if err := <-kmsg; err != nil {
		t.Fatal(err)
	}
	if want := sha256File(t, data); pushed.SHA256 != want || sha256File(t, back) != want {
		t.Errorf("push sha256 %s, pulled back %s, want %s", pushed.SHA256, sha256File(t, back), want)
	}
	testenv.Eventually(t, "the end of the kernel's messages during the transfers", func() bool {
		return strings.Contains(console.String(), "kmsg-xfer-end ")
	})
	last := regexp.MustCompile(`kmsg-xfer-end (\d+)`).FindStringSubmatch(console.String())
	total, _ := strconv.Atoi(last[1])
	t.Logf("%d kernel messages while %d KiB went each way", total, (192<<10)>>10)
	checkSequence(t, console.String(), "kmsg-xfer", total)
	c.Close()

	checkBoard(ctx, t, b)
}

// checkBoard runs the checks every board passes, through the CLI: info,
// exit codes, stdout and stderr, a signal, a timeout, push and pull with
// their sha256, and reboot --wait with a new kernel boot id and the
// console of the boot.
func checkBoard(ctx context.Context, t *testing.T, b *board) {
	t.Helper()
	addr := b.AgentAddr()
	var info proto.BoardInfo
	b.cliJSON(ctx, &info, "info", addr)
	if info.ID != b.Disk.Spec.ID || info.Model != model || !slices.Contains(info.Capabilities, "ota") {
		t.Errorf("info: %+v", info)
	}
	if kernel := strings.TrimSpace(b.cliOK(ctx, "exec", addr, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout); info.BootID != kernel {
		t.Errorf("info says boot id %s, the kernel %s", info.BootID, kernel)
	}

	for _, c := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{args: []string{"--", "true"}, code: 0},
		{args: []string{"--", "false"}, code: 1},
		{args: []string{"--shell", "--", "echo out; echo err >&2; exit 42"}, code: 42, stdout: "out\n", stderr: "err\n"},
		{args: []string{"--shell", "--", "kill -TERM $$"}, code: 128 + 15},
		{args: []string{"--timeout", "2s", "--", "sleep", "60"}, code: 124},
		{args: []string{"--", "/no/such/command"}, code: 127},
	} {
		r := b.cli(ctx, append([]string{"exec", addr, "-n"}, c.args...)...)
		if r.code != c.code || (c.stdout != "" && r.stdout != c.stdout) || (c.stderr != "" && !strings.HasPrefix(r.stderr, c.stderr)) {
			t.Errorf("exec %q: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr %q",
				c.args, r.code, r.stdout, r.stderr, c.code, c.stdout, c.stderr)
		}
	}

	data := randomFile(t, 160<<10)
	sum := sha256File(t, data)
	var pushed, pulled proto.FileResult
	b.cliJSON(ctx, &pushed, "push", addr, data, "/data/files/blob.bin")
	if onBoard := b.cliOK(ctx, "exec", addr, "--", "sha256sum", "/data/files/blob.bin").stdout; pushed.SHA256 != sum || !strings.HasPrefix(onBoard, sum) {
		t.Errorf("push: sha256 %s, on the board %q, want %s", pushed.SHA256, onBoard, sum)
	}
	back := filepath.Join(t.TempDir(), "blob.bin")
	b.cliJSON(ctx, &pulled, "pull", addr, "/data/files/blob.bin", back)
	if pulled.SHA256 != sum || sha256File(t, back) != sum {
		t.Errorf("pull: sha256 %s, the file %s, want %s", pulled.SHA256, sha256File(t, back), sum)
	}

	var rb struct {
		Old  string `json:"old_boot_id"`
		New  string `json:"new_boot_id"`
		Took int64  `json:"took_ms"`
	}
	log := filepath.Join(t.TempDir(), "reboot-console.log")
	r := b.cliJSON(ctx, &rb, "reboot", addr, "--wait", "--console-log", log)
	b.rebootTook, b.rebootCLI = time.Duration(rb.Took)*time.Millisecond, r.took
	kernel := strings.TrimSpace(b.cliOK(ctx, "exec", addr, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout)
	if rb.Old != info.BootID || rb.New == rb.Old || kernel != rb.New {
		t.Errorf("reboot --wait: boot id %s -> %s, the kernel's now %s (was %s)", rb.Old, rb.New, kernel, info.BootID)
	}
	if b.Disk.Spec.Serial == "ttyS0" {
		// The agent's line is the console: the CLI kept the boot's text.
		boot, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Welcome to GRUB!", "Booting `Linux (slot A)'", "Linux version ", "Run /init as init process", "boardlink-init: starting boardlinkd"} {
			if !bytes.Contains(boot, []byte(want)) {
				t.Errorf("the console log of reboot --wait has no %q:\n%s", want, qemuboard.Tail(boot, 40))
			}
		}
	}
}

// numbered is "PREFIX 1\nPREFIX 2\n...PREFIX n\n".
func numbered(prefix string, n int) string {
	var s strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&s, "%s %d\n", prefix, i)
	}
	return s.String()
}

// checkSequence checks that console holds the kernel's lines "TAG 1" to
// "TAG n", each once, whole, in order.
func checkSequence(t *testing.T, console, tag string, n int) {
	t.Helper()
	re := regexp.MustCompile(`\] ` + tag + ` (\d+)\r\n`)
	var got []int
	for _, m := range re.FindAllStringSubmatch(console, -1) {
		i, _ := strconv.Atoi(m[1])
		got = append(got, i)
	}
	want := make([]int, n)
	for i := range want {
		want[i] = i + 1
	}
	if !slices.Equal(got, want) {
		t.Errorf("the console's %q lines are %v, want 1 to %d in order", tag, got, n)
	}
}

// slotImage makes a slot image of release version with the health check
// health, SlotPayload bytes.
func slotImage(ctx context.Context, t *testing.T, version, health string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "slot-"+version+".img")
	if err := qemuboard.SlotImage(ctx, path, slotPayload, qemuboard.Release{Version: version, Health: health}); err != nil {
		t.Fatal(err)
	}
	return path
}

// slotPayload is the size of a slot image (the slot partitions are
// bigger): an update over the emulated UART sends at most this.
const slotPayload = 1 << 20

func randomFile(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	path := filepath.Join(t.TempDir(), "random.bin")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
