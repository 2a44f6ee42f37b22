package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
)

// benchExec times `true` on a persistent connection: boardlink's client
// on each link, a local fork/exec, and a persistent ssh shell.
func benchExec(ctx context.Context, e *benchEnv) ([]row, error) {
	fmt.Fprintf(e.out, "exec true on a persistent connection, %d rounds\n", e.cfg.execs)
	var vs []variant
	for _, l := range links {
		c, err := e.dial(ctx, l)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", e.urls[l], err)
		}
		defer c.Close()
		vs = append(vs, variant{name: "client " + l, run: func(ctx context.Context) error {
			res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}})
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit code %d", res.ExitCode)
			}
			return err
		}})
	}
	sh, err := startShell(ctx, e)
	if err != nil {
		return nil, err
	}
	defer sh.stop()
	vs = append(vs,
		variant{name: "fork/exec /bin/true", run: func(ctx context.Context) error {
			return exec.CommandContext(ctx, "/bin/true").Run()
		}},
		variant{name: "ssh shell /bin/true", run: sh.run})
	return measure(ctx, e.cfg.execs, true, "`true`, persistent connection", vs, 2, 0)
}

// shell is one ssh session running sh, fed commands on its stdin.
type shell struct {
	*group
	in  io.WriteCloser
	out *bufio.Reader
}

// endMark ends every command's output, with its exit status after it.
const endMark = "__boardlink_bench_end_"

func startShell(ctx context.Context, e *benchEnv) (*shell, error) {
	cmd := exec.Command(e.tools.SSH, e.sshArgs([]string{"-T"}, "/bin/sh")...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	g, err := startGroup(cmd)
	if err != nil {
		return nil, err
	}
	s := &shell{group: g, in: in, out: bufio.NewReader(out)}
	if err := s.run(ctx); err != nil {
		s.stop()
		return nil, fmt.Errorf("ssh shell: %w", err)
	}
	return s, nil
}

// run runs /bin/true in the shell and reads up to its end mark.
func (s *shell) run(context.Context) error { return typeTrue(s.in, s.out, "ssh shell") }

// typeTrue types /bin/true to a shell on in and reads its output from out
// up to the end mark; who names the shell in errors.
func typeTrue(in io.Writer, out *bufio.Reader, who string) error {
	if _, err := io.WriteString(in, "/bin/true; echo "+endMark+"$?\n"); err != nil {
		return err
	}
	for {
		line, err := out.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		if status, ok := strings.CutPrefix(strings.TrimSpace(line), endMark); ok {
			if status != "0" {
				return fmt.Errorf("%s: /bin/true exited %s", who, status)
			}
			return nil
		}
	}
}

func (s *shell) stop() {
	s.in.Close()
	s.group.stop()
}

// benchCLI times `true` by a fresh process: the boardlink CLI on each
// link, a fresh ssh, and ssh through a ControlMaster that is up.
func benchCLI(ctx context.Context, e *benchEnv) ([]row, error) {
	fmt.Fprintf(e.out, "true by a fresh CLI process, %d rounds\n", e.cfg.cli)
	ctl := filepath.Join(e.dirs["ssh"], "ctl")
	master, err := startGroup(exec.Command(e.tools.SSH, e.sshArgs([]string{"-M", "-S", ctl, "-N", "-o", "ControlPersist=no"})...))
	if err != nil {
		return nil, err
	}
	defer master.stop()
	if err := waitMaster(ctx, e, ctl, master); err != nil {
		return nil, err
	}
	var vs []variant
	for _, l := range links {
		vs = append(vs, variant{name: "boardlink exec " + l, run: func(ctx context.Context) error { return e.cliExec(ctx, l) }})
	}
	// What the process costs before it dials: start-up, package init, flags.
	vs = append(vs, variant{name: "boardlink --version", run: func(ctx context.Context) error { return e.runCLI(ctx, "--version") }})
	for _, also := range e.cfg.cliAlso {
		name, bin, ok := strings.Cut(also, "=")
		if !ok {
			return nil, fmt.Errorf("-cli-also %q: want NAME=PATH", also)
		}
		vs = append(vs, variant{name: name + " exec ws", run: func(ctx context.Context) error {
			return e.runBin(ctx, bin, "exec", e.urls["ws"], "--token-file", e.token, "--", "true")
		}})
	}
	vs = append(vs,
		variant{name: "ssh host true", run: func(ctx context.Context) error { return e.runSSH(ctx, nil, nil, nil, "true") }},
		variant{name: "ssh -S ctl host true", run: func(ctx context.Context) error {
			return e.runSSH(ctx, []string{"-S", ctl}, nil, nil, "true")
		}})
	return measure(ctx, e.cfg.cli, true, "`true`, a fresh CLI process", vs, len(links)+1+len(e.cfg.cliAlso), 0)
}

// waitMaster waits until the ControlMaster at ctl answers.
func waitMaster(ctx context.Context, e *benchEnv, ctl string, master *group) error {
	var last error
	for range 100 {
		if last = e.runSSH(ctx, []string{"-S", ctl, "-O", "check"}, nil, nil); last == nil {
			return nil
		}
		select {
		case <-master.done:
			return fmt.Errorf("ssh ControlMaster exited: %v", master.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("ssh ControlMaster did not come up: %w", last)
}

// benchTransfer times push and pull of a file of cfg.size random bytes:
// the boardlink CLI on each link, scp, and ssh with cat. It runs twice:
// on disk (the board's agent fsyncs what it receives, cat does not), and
// with every file of both ends on a tmpfs, where the protocols are
// compared without the disk.
func benchTransfer(ctx context.Context, e *benchEnv) ([]row, error) {
	fmt.Fprintf(e.out, "push and pull of %s, %d rounds, on disk\n", benchkit.Human(e.cfg.size), e.cfg.runs)
	rows, err := transferRows(ctx, e, "", transferDirs{local: e.dirs["local"], board: e.dirs["root"], ssh: e.dirs["sshfiles"]}, e.urls)
	if err != nil {
		return nil, err
	}
	shm, err := tmpfsDir()
	if err != nil {
		fmt.Fprintf(e.out, "transfers on tmpfs: NOT MEASURED: %v\n", err)
		return rows, nil
	}
	defer os.RemoveAll(shm)
	fmt.Fprintf(e.out, "push and pull of %s, %d rounds, on a tmpfs (%s)\n", benchkit.Human(e.cfg.size), e.cfg.runs, shm)
	d := transferDirs{local: filepath.Join(shm, "local"), board: filepath.Join(shm, "root"), ssh: filepath.Join(shm, "sshfiles")}
	for _, dir := range []string{d.local, d.board, d.ssh, filepath.Join(shm, "state")} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, err
		}
	}
	urls, stop, err := startShmAgent(ctx, e, shm, d.board)
	if err != nil {
		return nil, err
	}
	defer stop()
	more, err := transferRows(ctx, e, ", tmpfs", d, urls)
	return append(rows, more...), err
}

// transferDirs are where a transfer case keeps its files: the local side,
// the board's side, and the ssh peers' side.
type transferDirs struct{ local, board, ssh string }

// tmpfsDir makes a temporary directory on /dev/shm, if that is a tmpfs.
func tmpfsDir() (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil {
		return "", fmt.Errorf("/dev/shm: %w", err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		return "", errors.New("/dev/shm is not a tmpfs")
	}
	return os.MkdirTemp("/dev/shm", "boardlink-bench-peers-")
}

// startShmAgent starts a second sim board whose state and file root are
// under dir (a tmpfs), and pins its key for the CLI; stop ends it.
func startShmAgent(ctx context.Context, e *benchEnv, dir, root string) (map[string]string, func(), error) {
	urls := map[string]string{}
	var listen []string
	for _, l := range links {
		port, err := benchkit.FreePort()
		if err != nil {
			return nil, nil, err
		}
		urls[l] = fmt.Sprintf("%s://127.0.0.1:%d", l, port)
		flag := map[string]string{"wss": "--listen", "ws": "--insecure-listen"}[l]
		listen = append(listen, flag, "127.0.0.1:"+strconv.Itoa(port))
	}
	a, err := startAgent(ctx, nil, e.agentd, append([]string{"--board", "sim", "--state-dir", filepath.Join(dir, "state"),
		"--no-mdns", "--token-file", e.token, "--root", root}, listen...)...)
	if err != nil {
		return nil, nil, err
	}
	for _, l := range links {
		if err := e.runCLI(ctx, "exec", urls[l], "--token-file", e.token, "--", "true"); err != nil {
			a.stop()
			return nil, nil, fmt.Errorf("pinning the tmpfs board's key: %w", err)
		}
	}
	return urls, a.stop, nil
}

// transferRows times push and pull between the dirs of d through the
// agent at urls; every copy is checked against the file's sha256 after
// its timed run, and removed before the next. where ends the rows' names.
func transferRows(ctx context.Context, e *benchEnv, where string, d transferDirs, urls map[string]string) ([]row, error) {
	size := e.cfg.size
	src := filepath.Join(d.local, "source.bin")
	sum, err := benchkit.WriteRandomSum(src, size)
	if err != nil {
		return nil, err
	}
	// Every pull reads this copy, already on disk, as a board's file is.
	served := filepath.Join(d.board, "served.bin")
	if err := benchkit.CopyFile(src, served); err != nil {
		return nil, err
	}
	if err := benchkit.Fsync(served); err != nil {
		return nil, err
	}
	ssh := func(p string) string { return "127.0.0.1:" + p }
	scp := func(ctx context.Context, from, to string) error {
		args := append(append([]string{"-q", "-P", fmt.Sprint(e.sshd.Port)}, e.sshd.ClientOptions()...), from, to)
		if out, err := exec.CommandContext(ctx, e.tools.SCP, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("scp: %w: %s", err, out)
		}
		return nil
	}
	// checked is a variant that writes dst: removed before its timed run,
	// its sha256 checked after it.
	checked := func(name, dst string, run func(ctx context.Context) error) variant {
		return variant{name: name, run: run,
			prep:  func(context.Context) error { return benchkit.RemoveWithPartials(dst) },
			check: func(context.Context) error { return checkCopy(dst, sum) }}
	}
	var push, pull []variant
	for _, l := range links {
		up, down := filepath.Join(d.board, "pushed-"+l+".bin"), filepath.Join(d.local, "pulled-"+l+".bin")
		push = append(push, checked("boardlink push "+l, up, func(ctx context.Context) error {
			return e.runCLI(ctx, "push", "--token-file", e.token, urls[l], src, up)
		}))
		pull = append(pull, checked("boardlink pull "+l, down, func(ctx context.Context) error {
			return e.runCLI(ctx, "pull", "--token-file", e.token, urls[l], served, down)
		}))
	}
	up, down := filepath.Join(d.ssh, "scp-up.bin"), filepath.Join(d.local, "scp-down.bin")
	push = append(push, checked("scp upload", up, func(ctx context.Context) error { return scp(ctx, src, ssh(up)) }))
	pull = append(pull, checked("scp download", down, func(ctx context.Context) error { return scp(ctx, ssh(served), down) }))
	catUp, catDown := filepath.Join(d.ssh, "cat-up.bin"), filepath.Join(d.local, "cat-down.bin")
	push = append(push, checked("ssh 'cat > f'", catUp, func(ctx context.Context) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		return e.runSSH(ctx, nil, f, nil, "cat > "+catUp)
	}))
	pull = append(pull, checked("ssh 'cat f'", catDown, func(ctx context.Context) error {
		f, err := os.Create(catDown)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := e.runSSH(ctx, nil, nil, f, "cat "+served); err != nil {
			return err
		}
		return f.Close()
	}))
	rows, err := measure(ctx, e.cfg.runs, false, "push "+benchkit.Human(size)+where, push, 2, size)
	if err != nil {
		return nil, err
	}
	more, err := measure(ctx, e.cfg.runs, false, "pull "+benchkit.Human(size)+where, pull, 2, size)
	return append(rows, more...), err
}

// measure times n rounds of vs, after an untimed warm-up round if warm
// (first calls pay for page faults and caches), and pairs each of the
// first nbl variants (boardlink's) with each of the others (the peers');
// size is the bytes each run moves, for a transfer. A transfer's rows are
// followed by the same pairs of the CPU the whole machine spent per run
// (both ends, the kernel's work included): far steadier than its wall
// time on a machine whose two cores both ends share.
func measure(ctx context.Context, n int, warm bool, what string, vs []variant, nbl int, size int64) ([]row, error) {
	if warm {
		if _, err := interleave(ctx, 1, vs...); err != nil {
			return nil, err
		}
	}
	times, err := interleave(ctx, n, vs...)
	if err != nil {
		return nil, err
	}
	var rows, cpu []row
	for _, peer := range vs[nbl:] {
		for _, bl := range vs[:nbl] {
			rows = append(rows, pair(what, bl.name, peer.name, times.wall, size))
			if size > 0 && len(times.cpu[bl.name]) == n && len(times.cpu[peer.name]) == n {
				r := pair(what+cpuWhat, bl.name, peer.name, times.cpu, 0)
				r.cpu = true
				cpu = append(cpu, r)
			}
		}
	}
	return append(rows, cpu...), nil
}

// checkCopy fails unless the file at path hashes to sum.
func checkCopy(path, sum string) error {
	got, err := benchkit.HashFile(path)
	if err != nil {
		return err
	}
	if got != sum {
		return fmt.Errorf("%s hashes %s, want %s", path, got, sum)
	}
	return nil
}
