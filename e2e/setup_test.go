package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/qemuboard"
	"github.com/boardlink/boardlink/internal/testenv"
)

// Model is the model of every test board, which images must name.
const model = "qemu-x86_64"

// binDir holds the CLI built for this run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "boardlink-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lab is what every board of the run shares, made once.
var lab struct {
	once   sync.Once
	cache  *qemuboard.Cache
	assets *qemuboard.Assets
	cli    string // the boardlink binary
	err    error
}

// setup skips a long test unless BOARDLINK_E2E=1, makes the lab once (the
// CLI, the agent, the kernel, the initramfs, GRUB and OVMF, in the cache),
// and skips (or fails, under BOARDLINK_E2E=1) when a tool or a download is
// missing.
func setup(t *testing.T) {
	t.Helper()
	testenv.Long(t)
	lab.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		dir, err := qemuboard.DefaultCacheDir()
		if err != nil {
			lab.err = err
			return
		}
		lab.cache = &qemuboard.Cache{Dir: dir, Logf: t.Logf}
		start := time.Now()
		lab.cli = filepath.Join(binDir, "boardlink")
		if out, err := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", lab.cli, "../cmd/boardlink").CombinedOutput(); err != nil {
			lab.err = fmt.Errorf("go build ../cmd/boardlink: %w\n%s", err, out)
			return
		}
		agent, err := lab.cache.Agent(ctx, "..")
		if err != nil {
			lab.err = err
			return
		}
		if lab.assets, lab.err = lab.cache.Prepare(ctx, agent); lab.err == nil {
			t.Logf("lab ready in %v, cache %s: kernel %s", time.Since(start).Round(time.Millisecond), dir, lab.assets.KernelRelease)
		}
	})
	switch {
	case errors.Is(lab.err, qemuboard.ErrUnavailable):
		testenv.SkipOrFail(t, "%v", lab.err)
	case lab.err != nil:
		t.Fatal(lab.err)
	}
}

// testCtx bounds a test: QEMU is killed when it ends, whatever happens.
func testCtx(t *testing.T) context.Context {
	deadline, ok := t.Deadline()
	if !ok {
		deadline = time.Now().Add(15 * time.Minute)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(-15*time.Second))
	t.Cleanup(cancel)
	return ctx
}

// running counts the boards whose QEMU runs, for the figures.
var running atomic.Int32

// board is a QEMU board under test and a host to drive it.
type board struct {
	*qemuboard.Board
	t       *testing.T
	host    string // the host's XDG directories: known boards, console logs
	token   string // the token file
	tokenV  string
	booted  time.Time     // when QEMU was last started
	beacon  time.Duration // from then to the agent's first beacon
	started int           // offset in the console log where the last start began
	// rebootTook is how long the last reboot --wait said the board took to
	// come back; rebootCLI how long that command ran.
	rebootTook, rebootCLI time.Duration
}

// newBoard builds a board of spec (its slots as given, a token of its
// own) and powers it on, waiting for the agent's first beacon. QEMU is
// killed when the test ends.
func newBoard(ctx context.Context, t *testing.T, spec qemuboard.Spec) *board {
	t.Helper()
	b := buildBoard(ctx, t, spec)
	b.powerOn(ctx)
	return b
}

// buildBoard builds a board of spec, with a token of its own and the
// grub.cfg of docs/boot.md, powered off; QEMU, once started, is killed
// when the test ends.
func buildBoard(ctx context.Context, t *testing.T, spec qemuboard.Spec) *board {
	t.Helper()
	dir := t.TempDir()
	b := &board{t: t, host: filepath.Join(dir, "host"), token: filepath.Join(dir, "token")}
	raw := make([]byte, 16)
	_, _ = rand.Read(raw)
	b.tokenV = hex.EncodeToString(raw)
	if err := os.WriteFile(b.token, []byte(b.tokenV+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/boot.md")
	if err != nil {
		t.Fatal(err)
	}
	if spec.GrubCfg, err = qemuboard.GrubConfig(doc); err != nil {
		t.Fatal(err)
	}
	spec.Model, spec.Token = model, b.tokenV
	disk, err := lab.cache.Build(ctx, lab.assets, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	b.Board = qemuboard.NewBoard(lab.assets, disk, dir)
	t.Cleanup(func() {
		b.Kill()
		if t.Failed() {
			t.Logf("the console of %s (%s), last lines:\n%s", spec.ID, b.ConsoleLog(), qemuboard.Tail(b.Console(), 120))
		}
	})
	return b
}

// powerOn starts QEMU and waits for the agent's first beacon.
func (b *board) powerOn(ctx context.Context) {
	b.t.Helper()
	b.started = len(b.Console())
	b.booted = time.Now()
	if err := b.Start(ctx); err != nil {
		b.t.Fatal(err)
	}
	running.Add(1)
	go func(done <-chan struct{}) {
		<-done
		running.Add(-1)
	}(b.Done())
	if _, err := b.WaitBeacon(ctx); err != nil {
		b.t.Fatal(err)
	}
	b.beacon = time.Since(b.booted)
	b.t.Logf("%s: QEMU started, first beacon after %v", b.Disk.Spec.ID, b.beacon.Round(time.Millisecond))
}

// cliResult is how one run of boardlink ended.
type cliResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
	err            error // it did not exit by itself
}

// cli runs the boardlink binary with the board's token and the host's own
// XDG directories (so its known boards, console logs and caches are the
// test's), and returns how it ended.
func (b *board) cli(ctx context.Context, args ...string) cliResult {
	b.t.Helper()
	run := b.start(ctx, args...)
	r := run.wait()
	if r.err != nil {
		b.t.Fatalf("boardlink %s: %v", strings.Join(args, " "), r.err)
	}
	return r
}

// cliRun is a run of boardlink under way.
type cliRun struct {
	t              *testing.T
	args           []string // as logged
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	start          time.Time
}

// start starts boardlink as cli does, without waiting for it: ctx's end
// kills it.
func (b *board) start(ctx context.Context, args ...string) *cliRun {
	b.t.Helper()
	r := startCLI(ctx, b.t, append([]string{"--token-file", b.token}, args...),
		"XDG_CONFIG_HOME="+filepath.Join(b.host, "config"),
		"XDG_STATE_HOME="+filepath.Join(b.host, "state"),
		"XDG_CACHE_HOME="+filepath.Join(b.host, "cache"))
	r.args = args
	return r
}

// startCLI starts boardlink with args, its environment this process's
// with no token and env added.
func startCLI(ctx context.Context, t *testing.T, args []string, env ...string) *cliRun {
	t.Helper()
	r := &cliRun{t: t, args: args}
	r.cmd = exec.CommandContext(ctx, lab.cli, args...)
	r.cmd.Env = append(append(os.Environ(), "BOARDLINK_TOKEN="), env...)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	r.start = time.Now()
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("boardlink %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// wait waits for the run to end and returns how it ended; err is set only
// when it did not exit by itself (killed).
func (r *cliRun) wait() cliResult {
	r.t.Helper()
	err := r.cmd.Wait()
	res := cliResult{stdout: r.stdout.String(), stderr: r.stderr.String(), took: time.Since(r.start)}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		res.code = ee.ExitCode()
	} else {
		res.err = err
	}
	how := fmt.Sprintf("exit %d", res.code)
	if res.err != nil {
		how = res.err.Error()
	}
	r.t.Logf("boardlink %s: %s in %v%s", strings.Join(r.args, " "), how, res.took.Round(time.Millisecond), indent(res.stderr))
	return res
}

// cliOK runs boardlink and fails the test unless it exits 0.
func (b *board) cliOK(ctx context.Context, args ...string) cliResult {
	b.t.Helper()
	r := b.cli(ctx, args...)
	if r.code != 0 {
		b.t.Fatalf("boardlink %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// cliJSON runs boardlink with --json and decodes its output into v.
func (b *board) cliJSON(ctx context.Context, v any, args ...string) cliResult {
	b.t.Helper()
	r := b.cli(ctx, append(args, "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		b.t.Fatalf("boardlink %s --json: exit %d, %v: %q (stderr %q)", strings.Join(args, " "), r.code, err, r.stdout, r.stderr)
	}
	return r
}

// dial opens a dispatcher client on the board's line, pinning its key in
// the host's known boards as the CLI does; console text seen while it is
// connected goes to console.
func (b *board) dial(ctx context.Context, console *testenv.Buffer) *dispatcher.Client {
	b.t.Helper()
	opts := dispatcher.DialOptions{Token: b.tokenV,
		Trust: dispatcher.NewKnownBoards(filepath.Join(b.host, "config", "boardlink", "known_boards.json"))}
	if console != nil {
		opts.Console = console
	}
	c, err := dispatcher.Dial(ctx, b.AgentAddr(), opts)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { c.Close() })
	return c
}

// waitConsole waits for text on ttyS0 since the last power on.
func (b *board) waitConsole(ctx context.Context, text string) {
	b.t.Helper()
	if _, err := b.WaitConsole(ctx, b.started, text); err != nil {
		b.t.Fatal(err)
	}
}

func indent(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return "\n\t" + strings.ReplaceAll(s, "\n", "\n\t")
}
