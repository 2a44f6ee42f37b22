package bootstrap_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/bootstrap"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// hangGuard bounds a whole bootstrap (megabytes typed into a shell on a
// pty) so that a hang fails the test instead of the run: a guard, not a
// speed bound. Under -race on a loaded machine one took 5 minutes.
const hangGuard = 15 * time.Minute

// loginScript is a console's login, as getty and login give one: it asks
// for a user (again after an empty line) and a password (echo off), says
// "Login incorrect" and asks again when they are wrong, and execs an interactive /bin/sh when they
// are right.
const loginScript = `#!/bin/sh
while :; do
	printf 'board login: '
	read -r user || exit 0
	[ -n "$user" ] || continue
	stty -echo
	printf 'Password: '
	read -r pw
	stty echo
	echo
	if [ "$user" = root ] && [ "$pw" = "$LOGIN_PASSWORD" ]; then
		echo 'Welcome to the test board.'
		exec /bin/sh -i
	fi
	echo 'Login incorrect'
	echo
done
`

const (
	password = "s3cret pass"
	token    = "0123456789abcdef0123456789abcdef"
)

// agentBin is a stripped static agent built once for the package.
var agentBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "bootstrap-agent-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "boardlinkd")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, "../../cmd/boardlinkd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := agentBin(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

func agent(t *testing.T) string {
	t.Helper()
	bin, err := agentBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// board is a pty whose slave end has the login script on it: the
// master is the host's end of the line.
type board struct {
	master, slave *os.File
	dir           string // the board's files
	proc          *exec.Cmd
}

func newBoard(t *testing.T) *board {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		testenv.SkipOrFail(t, "no pty: %v", err)
	}
	b := &board{master: pollable(t, master), slave: slave, dir: t.TempDir()}
	login := filepath.Join(b.dir, "login")
	if err := os.WriteFile(login, []byte(loginScript), 0o755); err != nil {
		t.Fatal(err)
	}
	b.proc = exec.Command(login)
	b.proc.Stdin, b.proc.Stdout, b.proc.Stderr = slave, slave, slave
	b.proc.Env = append(os.Environ(), "LOGIN_PASSWORD="+password, "PS1=# ", "ENV=")
	b.proc.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := b.proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The login, its shell, or the agent that replaced them.
		_ = b.proc.Process.Kill()
		_ = b.proc.Wait()
		b.master.Close()
		slave.Close()
	})
	return b
}

// pollable is an end of a pty that reads can be cut short on, so that
// bootstrap hands the line over to a client with nothing lost, and a
// Close ends a blocked read (pty.Open leaves both ends in blocking mode).
// Both close when the test ends.
func pollable(t *testing.T, master *os.File) *os.File {
	t.Helper()
	fd, err := unix.Dup(int(master.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), master.Name())
	t.Cleanup(func() {
		f.Close()
		master.Close()
	})
	return f
}

func (b *board) options(t *testing.T) bootstrap.Options {
	o := bootstrap.Options{Agent: agent(t), User: "root", Password: password, Token: token,
		Dir: filepath.Join(b.dir, "bl"), ID: "pty-board", Model: "pty-test", Listen: 1500 * time.Millisecond}
	if testing.Verbose() {
		o.Trace = &tailWriter{t: t}
	}
	return o
}

// tailWriter logs the trace, each line cut short.
type tailWriter struct{ t *testing.T }

func (w *tailWriter) Write(p []byte) (int, error) {
	s := strings.TrimRight(string(p), "\n")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	w.t.Log(s)
	return len(p), nil
}

// traceFunc is a trace writer that calls f with each line.
type traceFunc func(line string)

func (f traceFunc) Write(p []byte) (int, error) {
	f(string(p))
	return len(p), nil
}

// noise writes kernel-style lines onto the board's console until stop is
// closed, as a kernel does on a console the shell shares.
func (b *board) noise(stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(3 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				fmt.Fprintf(b.slave, "[%5d.%06d] usb 1-1: kernel noise %d\r\n", i/1000, i%1000, i)
			}
		}
	}()
	return done
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// execOn runs argv through the normal client on the line and returns
// its stdout.
func execOn(ctx context.Context, t *testing.T, line io.ReadWriteCloser, argv ...string) string {
	t.Helper()
	c, err := dispatcher.DialLine(ctx, line, dispatcher.DialOptions{Token: token,
		Trust: dispatcher.NewKnownBoards(filepath.Join(t.TempDir(), "known.json"))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stdout, stderr bytes.Buffer
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: argv, Stdout: &stdout, Stderr: &stderr})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec %q: %+v, %v; stderr %q", argv, res, err, stderr.String())
	}
	return stdout.String()
}

// TestBootstrapLoginShell: a board with a login prompt and a shell,
// kernel noise on its console all along: the agent arrives intact
// (base64, gzipped, in chunks), is installed under a root of the test's,
// starts in place of the shell, and exec through the normal client works.
func TestBootstrapLoginShell(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	b := newBoard(t)
	o := b.options(t)
	o.ChunkSize, o.Encoding = 256<<10, "base64"
	o.Install, o.InstallRoot = true, filepath.Join(b.dir, "root")
	if err := os.MkdirAll(filepath.Join(o.InstallRoot, "etc", "init.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	var chunks int
	o.Progress = func(p bootstrap.Progress) { chunks++ }
	stop := make(chan struct{})
	noiseDone := b.noise(stop)
	res, err := bootstrap.Run(ctx, b.master, o)
	close(stop)
	<-noiseDone
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if !res.Compressed || res.Encoding != "base64" || res.Sent != res.Chunks || chunks != res.Chunks || res.Chunks < 2 {
		t.Errorf("result %+v, %d progress events: want a gzipped base64 upload of several chunks, all sent", res, chunks)
	}
	want := sha(t, o.Agent)
	if got := sha(t, res.Remote); got != want {
		t.Fatalf("the agent on the board has sha256 %s, want %s", got, want)
	}
	if !strings.HasPrefix(res.Tty, b.slave.Name()) {
		t.Errorf("the agent serves %q, want the shell's tty %s", res.Tty, b.slave.Name())
	}

	// exec through the normal client, on the line the shell had.
	out := execOn(ctx, t, b.master, "sha256sum", res.Remote)
	if !strings.HasPrefix(out, want) {
		t.Errorf("sha256sum on the board says %q, want %s", out, want)
	}

	// --install: the binary, its config, its token and an init script.
	root := o.InstallRoot
	for _, f := range res.Installed {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed %s: %v", f, err)
		}
	}
	var bin string
	for _, d := range []string{"usr/local/bin", "usr/sbin"} {
		if p := filepath.Join(root, d, "boardlinkd"); fileExists(p) && sha(t, p) == want {
			bin = p
		}
	}
	if bin == "" {
		t.Errorf("no installed agent with the right hash; installed %q", res.Installed)
	}
	cfg, _ := os.ReadFile(filepath.Join(root, "etc/boardlink/boardlinkd.yaml"))
	if !bytes.Contains(cfg, []byte(`serial: "`+res.Tty+`"`)) || !bytes.Contains(cfg, []byte(`model: "pty-test"`)) {
		t.Errorf("installed config:\n%s", cfg)
	}
	if tok, _ := os.ReadFile(filepath.Join(root, "etc/boardlink/tokens")); strings.TrimSpace(string(tok)) != token {
		t.Errorf("installed token %q", tok)
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/boardlink/tokens")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("installed token file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	// An init script where the host runs no systemd, else a unit.
	start := filepath.Join(root, "etc/init.d/boardlinkd")
	if fileExists("/run/systemd/system") {
		start = filepath.Join(root, "etc/systemd/system/boardlinkd.service")
	}
	if s, err := os.ReadFile(start); err != nil || !bytes.Contains(s, []byte(" --config /etc/boardlink/boardlinkd.yaml")) {
		t.Errorf("%s: %v\n%s", start, err, s)
	}
}

// TestBootstrapResumes: an upload interrupted in the middle of its
// fourth chunk (the shell inside a here-document, part of the chunk
// typed) leaves the three before on the board, says so, and the next run
// gets the shell back and sends only the rest, then starts the agent.
func TestBootstrapResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	b := newBoard(t)
	o := b.options(t)
	o.ChunkSize = 1 << 20
	o.Encoding = "base64"
	run, stopRun := context.WithCancel(ctx)
	trace := o.Trace
	o.Trace = traceFunc(func(line string) {
		if trace != nil {
			_, _ = io.WriteString(trace, line)
		}
		if strings.Contains(line, "(chunk 3,") {
			stopRun() // as the chunk's lines are about to be typed
		}
	})
	_, err := bootstrap.Run(run, b.master, o)
	var ie *bootstrap.InterruptedError
	if !errors.As(err, &ie) || !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted bootstrap: %v, want an InterruptedError", err)
	}
	if ie.Chunks != 3 || ie.OnBoard != 3*int64(o.ChunkSize) || ie.Of <= 3 {
		t.Fatalf("interrupted: %+v, want 3 chunks (%d bytes) on the board", ie, 3*o.ChunkSize)
	}
	t.Logf("interrupted: %v", err)

	o.Trace = trace
	var first = -1
	o.Progress = func(p bootstrap.Progress) {
		if first < 0 {
			first = p.Chunk
		}
	}
	res, err := bootstrap.Run(ctx, b.master, o)
	if err != nil {
		t.Fatalf("resumed bootstrap: %v", err)
	}
	if res.Sent != ie.Of-3 || first != 3 || res.Chunks != ie.Of {
		t.Errorf("resumed: sent %d of %d chunks, the first chunk %d; want %d, starting at 3", res.Sent, res.Chunks, first, ie.Of-3)
	}
	if got, want := sha(t, res.Remote), sha(t, o.Agent); got != want {
		t.Fatalf("the agent on the board has sha256 %s, want %s", got, want)
	}
	if out := execOn(ctx, t, b.master, "echo", "resumed"); out != "resumed\n" {
		t.Errorf("exec after the resumed bootstrap: %q", out)
	}
}

// TestBootstrapZmodem: with rz on the board and sz on the host the
// chunks go by ZMODEM, kernel noise on the console all along; the agent
// arrives intact, starts, and exec works.
func TestBootstrapZmodem(t *testing.T) {
	for _, tool := range []string{"sz", "rz"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.SkipOrFail(t, "ZMODEM needs %s (Debian package lrzsz): %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	b := newBoard(t)
	o := b.options(t)
	o.ChunkSize = 512 << 10
	stop := make(chan struct{})
	noiseDone := b.noise(stop)
	res, err := bootstrap.Run(ctx, b.master, o)
	close(stop)
	<-noiseDone
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if res.Encoding != "zmodem" || !res.Compressed || res.Sent != res.Chunks {
		t.Errorf("result %+v: want every chunk sent gzipped by ZMODEM", res)
	}
	want := sha(t, o.Agent)
	if got := sha(t, res.Remote); got != want {
		t.Fatalf("the agent on the board has sha256 %s, want %s", got, want)
	}
	if out := execOn(ctx, t, b.master, "echo", "zmodem"); out != "zmodem\n" {
		t.Errorf("exec after a ZMODEM bootstrap: %q", out)
	}
}

// TestBootstrapPrintfFallback sends with printf octal escapes and no
// compression, as to a board without base64 and gzip; the bytes arrive
// intact, NULs and all.
func TestBootstrapPrintfFallback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	b := newBoard(t)
	o := b.options(t)
	o.Encoding, o.NoCompress, o.ChunkSize = "printf", true, 64<<10
	// A small ELF executable of the board's own: what matters is the
	// bytes; started in place of the shell, it sends no beacon.
	small, err := exec.LookPath("true")
	if err != nil {
		t.Skip(err)
	}
	o.Agent, o.StartTimeout = small, time.Second
	res, err := bootstrap.Run(ctx, b.master, o)
	if res == nil || res.Encoding != "printf" || res.Compressed || res.Sent != res.Chunks {
		t.Fatalf("result %+v, %v", res, err)
	}
	if got, want := sha(t, res.Remote), sha(t, small); got != want {
		t.Fatalf("the file on the board has sha256 %s, want %s", got, want)
	}
	if !errors.Is(err, bootstrap.ErrNoStart) {
		t.Errorf("starting a binary that is no agent: %v, want ErrNoStart", err)
	}
}

// TestBootstrapWrongPassword: the board refuses the password, and
// bootstrap says so.
func TestBootstrapWrongPassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := newBoard(t)
	o := b.options(t)
	o.Password = "wrong"
	_, err := bootstrap.Run(ctx, b.master, o)
	if !errors.Is(err, bootstrap.ErrLogin) || !strings.Contains(err.Error(), "wrong user or password") {
		t.Fatalf("wrong password: %v, want ErrLogin saying so", err)
	}
	o.User = ""
	if _, err := bootstrap.Run(ctx, b.master, o); !errors.Is(err, bootstrap.ErrLogin) || !strings.Contains(err.Error(), "--user") {
		t.Fatalf("no user: %v, want ErrLogin asking for --user", err)
	}
}

// TestBootstrapRefusesAnAgent: a line where an agent beacons gets not a
// byte: bootstrap says an agent is there.
func TestBootstrapRefusesAnAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw, rawSlave := testenv.RawPTY(t)
	master, slave := pollable(t, raw), pollable(t, rawSlave)
	ep := seriallink.NewEndpoint(slave, seriallink.Config{BeaconInterval: 50 * time.Millisecond,
		Beacon: func() []byte { return []byte(`{"id":"already"}`) }})
	accepted := make(chan error, 1)
	acceptCtx, stopAccept := context.WithCancel(ctx)
	go func() {
		_, err := ep.Accept(acceptCtx)
		accepted <- err
	}()
	_, err := bootstrap.Run(ctx, master, bootstrap.Options{Token: token, Agent: "/nonexistent"})
	var ae *bootstrap.AgentPresentError
	if !errors.As(err, &ae) || !errors.Is(err, bootstrap.ErrAgentPresent) || !bytes.Contains(ae.Beacon, []byte("already")) {
		t.Fatalf("bootstrap on an agent's line: %v, want AgentPresentError", err)
	}
	stopAccept()
	<-accepted
	ep.Close()
	if typed, _ := io.ReadAll(ep.Console()); len(typed) != 0 {
		t.Errorf("bootstrap typed %q on a line with an agent", typed)
	}
}
