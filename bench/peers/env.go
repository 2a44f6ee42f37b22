package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
)

// benchEnv is what the cases share: the binaries, a running sim board,
// the private sshd, and a temporary directory.
type benchEnv struct {
	cfg    config
	out    io.Writer
	tmp    string
	dirs   map[string]string
	cli    string // the boardlink binary
	agentd string // the boardlinkd binary
	tools  benchkit.SSHTools
	sshd   *benchkit.SSHD
	agent  *agentProc
	token  string // the token file
	urls   map[string]string
	cliEnv []string // XDG dirs of the temporary directory
}

// links are the ways the cases reach the agent: TLS with the board's key
// (boardlinkd's default) and plain WebSocket (--insecure-listen).
var links = []string{"wss", "ws"}

// stripped are the build flags of a board's binary, as `just cross` makes it.
var stripped = []string{"-trimpath", "-ldflags=-s -w"}

// setUp builds the binaries, starts a sim board and sshd, and pins the
// board's key for the CLI.
func setUp(ctx context.Context, cfg config, tools benchkit.SSHTools, out io.Writer) (_ *benchEnv, err error) {
	tmp, err := os.MkdirTemp("", "boardlink-bench-peers-")
	if err != nil {
		return nil, err
	}
	e := &benchEnv{cfg: cfg, out: out, tmp: tmp, tools: tools, dirs: map[string]string{}, urls: map[string]string{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	for _, d := range []string{"bin", "state", "root", "local", "ssh", "sshfiles", "xdg", "foot"} {
		e.dirs[d] = filepath.Join(tmp, d)
		if err := os.Mkdir(e.dirs[d], 0o700); err != nil {
			return nil, err
		}
	}
	e.cfg.native = runtime.GOARCH
	fmt.Fprintf(out, "building boardlink and boardlinkd (CGO_ENABLED=0 %s)\n", strings.Join(stripped, " "))
	if err := goBuild(ctx, e.dirs["bin"], runtime.GOARCH, "./cmd/boardlink", "./cmd/boardlinkd"); err != nil {
		return nil, err
	}
	e.cli, e.agentd = filepath.Join(e.dirs["bin"], "boardlink"), filepath.Join(e.dirs["bin"], "boardlinkd")

	e.token = filepath.Join(tmp, "token")
	if err := os.WriteFile(e.token, []byte("bench-peers-token-0123456789\n"), 0o600); err != nil {
		return nil, err
	}
	ports := map[string]int{}
	for _, l := range links {
		if ports[l], err = benchkit.FreePort(); err != nil {
			return nil, err
		}
		e.urls[l] = fmt.Sprintf("%s://127.0.0.1:%d", l, ports[l])
	}
	e.agent, err = startAgent(ctx, nil, e.agentd, "--board", "sim", "--state-dir", e.dirs["state"], "--no-mdns",
		"--listen", "127.0.0.1:"+strconv.Itoa(ports["wss"]), "--insecure-listen", "127.0.0.1:"+strconv.Itoa(ports["ws"]),
		"--token-file", e.token, "--root", e.dirs["root"])
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "boardlinkd: sim board on %s and %s (supervisor %d, agent %d)\n", e.urls["wss"], e.urls["ws"], e.agent.supervisor, e.agent.agent)

	e.sshd, err = benchkit.StartSSHD(ctx, tools, e.dirs["ssh"])
	if err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	fmt.Fprintf(out, "sshd: %s on 127.0.0.1:%d (pid %d)\n", tools.SSHD, e.sshd.Port, e.sshd.PID())

	// The CLI keeps its pins, cache and state in the temporary directory;
	// a first call pins the board's key (trust on first use), so that no
	// timed call prompts or writes a pin.
	x := e.dirs["xdg"]
	e.cliEnv = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(x, "config"),
		"XDG_CACHE_HOME="+filepath.Join(x, "cache"), "XDG_STATE_HOME="+filepath.Join(x, "state"))
	for _, l := range links {
		if err := e.cliExec(ctx, l); err != nil {
			return nil, fmt.Errorf("pinning the board's key: %w", err)
		}
	}
	return e, nil
}

// close stops what setUp started and removes the temporary directory.
func (e *benchEnv) close() {
	if e.agent != nil {
		e.agent.stop()
	}
	if e.sshd != nil {
		e.sshd.Stop()
	}
	os.RemoveAll(e.tmp)
}

// goBuild builds the main packages pkgs (relative to the module root) for
// linux/arch into dir, stripped and static as a board's binary is.
func goBuild(ctx context.Context, dir, arch string, pkgs ...string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	args := append(append([]string{"build", "-o", dir + "/"}, stripped...), pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if arch == "arm" {
		cmd.Env = append(cmd.Env, "GOARM=7")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build (GOARCH=%s): %w\n%s", arch, err, out)
	}
	return nil
}

// moduleRoot is the directory of the go.mod of the working directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run it inside the boardlink module (go env GOMOD says %q)", mod)
	}
	return filepath.Dir(mod), nil
}

// dial opens a persistent connection to the sim board on link l.
func (e *benchEnv) dial(ctx context.Context, l string) (*dispatcher.Client, error) {
	tok, err := os.ReadFile(e.token)
	if err != nil {
		return nil, err
	}
	return dispatcher.Dial(ctx, e.urls[l], dispatcher.DialOptions{Token: strings.TrimSpace(string(tok)), Trust: dispatcher.NewKnownBoards("")})
}

// cliExec runs `boardlink exec URL --token-file F -- true`.
func (e *benchEnv) cliExec(ctx context.Context, l string) error {
	return e.runCLI(ctx, "exec", e.urls[l], "--token-file", e.token, "--", "true")
}

// runCLI runs the boardlink binary with the temporary XDG dirs.
func (e *benchEnv) runCLI(ctx context.Context, args ...string) error {
	return e.runBin(ctx, e.cli, args...)
}

// runBin runs bin as runCLI runs the CLI.
func (e *benchEnv) runBin(ctx context.Context, bin string, args ...string) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = e.cliEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("boardlink %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// sshArgs are ssh's arguments to run command on the private sshd, with
// extra options before the host.
func (e *benchEnv) sshArgs(extra []string, command ...string) []string {
	args := append(append([]string{"-q", "-p", strconv.Itoa(e.sshd.Port)}, e.sshd.ClientOptions()...), extra...)
	return append(append(args, "127.0.0.1"), command...)
}

// runSSH runs ssh with sshArgs, stdin and stdout as given (nil: none).
func (e *benchEnv) runSSH(ctx context.Context, extra []string, stdin io.Reader, stdout io.Writer, command ...string) error {
	cmd := exec.CommandContext(ctx, e.tools.SSH, e.sshArgs(extra, command...)...)
	cmd.Stdin, cmd.Stdout = stdin, stdout
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ssh %s: %w: %s", strings.Join(command, " "), err, stderr.String())
	}
	return nil
}
