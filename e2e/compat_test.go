package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// protocol5 is the last commit of main whose agent and CLI speak protocol
// 5: no hello on the upgrade, no file.frames. Its binaries, built from
// the git history, are the old peers of the compatibility tests: what a
// lab runs until every board and host is upgraded.
const protocol5 = "5215fb7387d4ee8b6e7148b4cfa4e819b698d0f0"

// old holds the protocol 5 build, made once.
var old struct {
	once     sync.Once
	cli, bin string // boardlink, boardlinkd
	err      error
}

// oldBuild builds protocol5's boardlink and boardlinkd from the git
// history (git archive, then go build in its own module: the same
// dependencies, offline where the module cache has them).
func oldBuild(t *testing.T) (cli, agent string) {
	t.Helper()
	testenv.Long(t)
	if _, err := exec.LookPath("git"); err != nil {
		testenv.SkipOrFail(t, "git is needed to build protocol 5's binaries: %v", err)
	}
	// A tree without the history (a source tarball, a shallow clone)
	// cannot build the old peers: no tool installs them, so this skips
	// loudly even under BOARDLINK_E2E=1, saying why.
	if err := exec.Command("git", "-C", "..", "cat-file", "-e", protocol5+"^{commit}").Run(); err != nil {
		t.Skipf("SKIPPED: this tree's git history lacks %s, protocol 5's commit (a shallow clone or no repository): %v", protocol5, err)
	}
	old.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		src := filepath.Join(binDir, "protocol5")
		if err := os.MkdirAll(src, 0o755); err != nil {
			old.err = err
			return
		}
		archive := exec.CommandContext(ctx, "sh", "-c", `git -C .. archive "$1" | tar -x -C "$2"`, "sh", protocol5, src)
		if out, err := archive.CombinedOutput(); err != nil {
			old.err = fmt.Errorf("git archive %s (needs the repository's history): %w\n%s", protocol5, err, out)
			return
		}
		build := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", binDir+"/protocol5-bin/", "./cmd/boardlink", "./cmd/boardlinkd")
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			old.err = fmt.Errorf("go build at %s: %w\n%s", protocol5, err, out)
			return
		}
		old.cli, old.bin = filepath.Join(binDir, "protocol5-bin", "boardlink"), filepath.Join(binDir, "protocol5-bin", "boardlinkd")
	})
	if old.err != nil {
		testenv.SkipOrFail(t, "protocol 5's build: %v", old.err)
	}
	return old.cli, old.bin
}

// newAgent builds this tree's boardlinkd once.
var newAgent = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "boardlinkd")
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", bin, "../cmd/boardlinkd").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ../cmd/boardlinkd: %w\n%s", err, out)
	}
	return bin, nil
})

// servingRE is the agent's log line naming the address it serves on.
var servingRE = regexp.MustCompile(`"serving (wss|ws)://[^"]*"[^\n]*? addr=(\S+)`)

// simAgent starts bin as a sim board on loopback (no mDNS) with token,
// its files under root, and returns its URL once it serves.
func simAgent(t *testing.T, bin, token, root string) string {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.Buffer{}
	cmd := exec.Command(bin, "--board", "sim", "--state-dir", filepath.Join(dir, "state"), "--listen", "127.0.0.1:0",
		"--no-mdns", "--token-file", tok, "--sim-boot-delay", "10ms", "--root", root)
	cmd.Stderr = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("%s's log:\n%s", bin, logs)
		}
	})
	var url string
	testenv.Eventually(t, bin+" serving", func() bool {
		select {
		case <-done:
			t.Fatalf("%s exited:\n%s", bin, logs)
		default:
		}
		m := servingRE.FindStringSubmatch(logs.String())
		if m != nil {
			url = m[1] + "://" + m[2]
		}
		return m != nil
	})
	return url
}

// sameFile fails t unless the files at got and want hold the same bytes.
func sameFile(t *testing.T, what, got, want string) {
	t.Helper()
	g, gerr := os.ReadFile(got)
	w, werr := os.ReadFile(want)
	if gerr != nil || werr != nil || !bytes.Equal(g, w) {
		t.Fatalf("%s: %d bytes (%v), want the %d of %s (%v)", what, len(g), gerr, len(w), want, werr)
	}
}

// TestNewHostOldAgent drives a protocol 5 agent with this tree's host:
// the hello goes in-band (the agent ignores the upgrade's header), no
// frame size is asked of an agent that does not announce file.frames,
// and exec, push and pull work as before.
func TestNewHostOldAgent(t *testing.T) {
	_, oldAgent := oldBuild(t)
	root := t.TempDir()
	const token = "compat-token-of-the-old-agent"
	url := simAgent(t, oldAgent, token, root)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := dispatcher.Dial(ctx, url, dispatcher.DialOptions{Token: token,
		Trust: dispatcher.NewKnownBoards(filepath.Join(t.TempDir(), "known_boards.json"))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := c.Hello()
	if h.Protocol != 5 || slices.Contains(h.Capabilities, proto.CapFrames) || !h.Authenticated {
		t.Fatalf("hello %+v: want protocol 5, authenticated, without %s", h, proto.CapFrames)
	}
	var stdout bytes.Buffer
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo old; exit 3"}, Stdout: &stdout})
	if err != nil || res.ExitCode != 3 || stdout.String() != "old\n" {
		t.Fatalf("exec: %+v, %v, stdout %q; want stdout old, exit 3", res, err, stdout.String())
	}
	// 3 MiB and a bit: several of the old agent's 64 KiB frames, and a
	// short last one.
	src := randomFile(t, 3<<20+12345)
	remote := filepath.Join(root, "f.bin")
	if _, err := c.Push(ctx, src, remote, dispatcher.TransferOptions{}); err != nil {
		t.Fatalf("push: %v", err)
	}
	sameFile(t, "the pushed file", remote, src)
	back := filepath.Join(t.TempDir(), "back.bin")
	if _, err := c.Pull(ctx, remote, back, dispatcher.TransferOptions{}); err != nil {
		t.Fatalf("pull: %v", err)
	}
	sameFile(t, "the pulled file", back, src)
}

// TestOldHostNewAgent drives this tree's agent with protocol 5's CLI,
// which sends no hello on the upgrade and asks for no frame size: exec,
// push and pull as its users ran them.
func TestOldHostNewAgent(t *testing.T) {
	oldCLI, _ := oldBuild(t)
	bin, err := newAgent()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	const token = "compat-token-of-the-new-agent"
	url := simAgent(t, bin, token, root)
	home := t.TempDir()
	tok := filepath.Join(home, "token")
	if err := os.WriteFile(tok, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, oldCLI, args...)
		cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, "config"),
			"XDG_CACHE_HOME="+filepath.Join(home, "cache"), "XDG_STATE_HOME="+filepath.Join(home, "state"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("protocol 5's boardlink %q: %v\n%s", args, err, stderr.String())
		}
		return stdout.String()
	}
	if out := cli("exec", "--token-file", tok, url, "--", "echo", "new"); out != "new\n" {
		t.Errorf("exec printed %q, want %q", out, "new\n")
	}
	src := randomFile(t, 3<<20+12345)
	remote := filepath.Join(root, "f.bin")
	cli("push", "--token-file", tok, url, src, remote)
	sameFile(t, "the pushed file", remote, src)
	back := filepath.Join(t.TempDir(), "back.bin")
	cli("pull", "--token-file", tok, url, remote, back)
	sameFile(t, "the pulled file", back, src)
}
