package linemux

import (
	"bufio"
	"context"
	"crypto/ed25519"
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

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

const testToken = "linemux-test-token-0123456789"

// uart is the board's end of a serial line: the agent's frames and the
// console lines a test writes share it, a whole write at a time, as a
// kernel's printk shares a UART with the agent.
type uart struct {
	*os.File
	mu sync.Mutex
}

func (u *uart) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.File.Write(p)
}

// board runs an agent on the board's side of a pty; its line is
// serial://SLAVE.
type board struct {
	addr  string
	uart  *uart
	execs *agent.Execs
}

func startBoard(t *testing.T) *board {
	t.Helper()
	b, err := sim.Open(t.TempDir(), sim.Options{ID: "mux-board"})
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	execs := agent.NewExecs(agent.ExecOptions{})
	a := agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "t", Value: testToken}}},
		Roots: []string{os.TempDir()}})
	master, slave := testenv.RawPTY(t)
	u := &uart{File: master}
	s := agent.NewLineSerialServer(a, "pty", u)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		slave.Close()
		s.Stop(context.Background())
		execs.Shutdown(context.Background())
	})
	return &board{addr: "serial://" + slave.Name(), uart: u, execs: execs}
}

func dialOptions() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: testToken, Trust: dispatcher.NewKnownBoards("")}
}

// runMux starts a mux for the line in dir; the returned channel gives
// Serve's result.
func runMux(t *testing.T, addr, dir string, idle time.Duration, tweak func(*Mux)) (*Mux, <-chan error) {
	t.Helper()
	m, err := Listen(context.Background(), Config{Addr: addr, Dial: dialOptions(), Dir: dir, Idle: idle})
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served, ended := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(ended)
		served <- m.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-ended
	})
	return m, served
}

// muxDir is a runtime directory of the test's own.
func muxDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "run")
	if err := lineshare.EnsureDir(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// muxed starts a board and a mux for its line; it returns the board and
// the mux's directory.
func muxed(t *testing.T) (*board, string) {
	t.Helper()
	testenv.CheckLeaks(t)
	b := startBoard(t)
	dir := muxDir(t)
	runMux(t, b.addr, dir, -1, nil)
	return b, dir
}

// dialVia opens a client of the board through the mux in dir.
func dialVia(t *testing.T, b *board, dir string) *dispatcher.Client {
	t.Helper()
	c, err := dispatcher.Dial(context.Background(), b.addr, shared(dir))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func shared(dir string) dispatcher.DialOptions {
	o := dialOptions()
	o.Lines = &dispatcher.LineShare{Dir: dir}
	return o
}

// TestExecsShareLineWithConsole: ten calls one after the other, each a
// process of its own in effect (a new client: dial, exec, close), go
// through the mux, while a console viewer on the same line sees every
// console line the board printed, in order, between and during them.
func TestExecsShareLineWithConsole(t *testing.T) {
	b, dir := muxed(t)
	share := &dispatcher.LineShare{Dir: dir}

	var console testenv.Buffer
	ctx, stop := context.WithCancel(context.Background())
	viewed := make(chan error, 1)
	go func() { viewed <- dispatcher.ConsoleShared(ctx, b.addr, &console, share) }()

	var want []string
	for i := range 10 {
		line := fmt.Sprintf("[%4d.000000] console line %d\r\n", i, i)
		b.uart.Write([]byte(line))
		want = append(want, line)
		c, err := dispatcher.Dial(context.Background(), b.addr, shared(dir))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		var out strings.Builder
		res, err := c.Exec(context.Background(), dispatcher.ExecRequest{Argv: []string{"echo", fmt.Sprint("call ", i)}, Stdout: &out})
		c.Close()
		if err != nil || res.ExitCode != 0 || out.String() != fmt.Sprintf("call %d\n", i) {
			t.Fatalf("call %d: %+v %q %v", i, res, out.String(), err)
		}
	}
	testenv.Eventually(t, "every console line at the viewer", func() bool {
		return strings.Contains(console.String(), want[len(want)-1])
	})
	stop()
	if err := <-viewed; err != nil {
		t.Fatalf("console: %v", err)
	}
	text := console.String()
	for _, l := range want {
		i := strings.Index(text, l)
		if i < 0 {
			t.Fatalf("console line %q missing or out of order in %q", l, console.String())
		}
		text = text[i+len(l):]
	}
}

// TestStreamsAndProgress: transfers larger than a stream's window go
// both ways through the mux at once from two clients, intact.
func TestStreamsThroughMux(t *testing.T) {
	b, dir := muxed(t)
	local := t.TempDir()
	data := make([]byte, 600<<10)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	src := filepath.Join(local, "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	remoteDir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			c, err := dispatcher.Dial(context.Background(), b.addr, shared(dir))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			remote := filepath.Join(remoteDir, fmt.Sprint("f", i))
			if _, err := c.Push(context.Background(), src, remote, dispatcher.TransferOptions{}); err != nil {
				t.Errorf("push %d: %v", i, err)
				return
			}
			back := filepath.Join(local, fmt.Sprint("back", i))
			if _, err := c.Pull(context.Background(), remote, back, dispatcher.TransferOptions{}); err != nil {
				t.Errorf("pull %d: %v", i, err)
				return
			}
			if got, err := os.ReadFile(back); err != nil || string(got) != string(data) {
				t.Errorf("client %d: the file came back changed (%d bytes, %v)", i, len(got), err)
			}
		})
	}
	wg.Wait()
}

// ready cancels (or calls f) once the command printed "ready": it runs.
func whenReady(f func()) io.WriteCloser {
	pr, pw := io.Pipe()
	go func() {
		line, _ := bufio.NewReader(pr).ReadString('\n')
		if line == "ready\n" {
			f()
		}
		io.Copy(io.Discard, pr)
	}()
	return pw
}

// TestInterruptedClientStopsItsCommand: Ctrl-C in a client (its context
// canceled) ends its command on the board with TERM, through the mux.
func TestInterruptedClientStopsItsCommand(t *testing.T) {
	b, dir := muxed(t)
	c := dialVia(t, b, dir)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := whenReady(cancel)
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo ready; exec sleep 1000"}, Stdout: out})
	out.Close()
	if err != nil || !res.Canceled || res.Signal != "TERM" {
		t.Fatalf("exec: %+v %v, want canceled by TERM", res, err)
	}
}

// TestClientGoneEndsItsCommand: a client that vanishes (killed: its
// connection just ends) leaves no command of its own running; the mux
// sends TERM, as the agent does for a session that ends.
func TestClientGoneEndsItsCommand(t *testing.T) {
	b, dir := muxed(t)
	c := dialVia(t, b, dir)
	started := make(chan string, 1)
	go func() {
		var st proto.ExecStartResult
		err := c.Conn().Call(context.Background(), proto.MethodExecStart,
			proto.ExecStartParams{Argv: []string{"sleep", "1000"}}, &st)
		if err != nil {
			t.Error(err)
		}
		started <- st.ID
	}()
	id := <-started
	c.Close() // gone, without exec.cancel

	other := dialVia(t, b, dir)
	defer other.Close()
	var res proto.ExecResult
	err := other.Conn().Call(context.Background(), proto.MethodExecWait, proto.ExecWaitParams{ID: id}, &res)
	if err != nil && !proto.IsReason(err, proto.ReasonNotFound) { // collected by the mux already
		t.Fatal(err)
	}
	if err == nil && (!res.Canceled || res.Signal != "TERM") {
		t.Fatalf("the gone client's command: %+v, want canceled by TERM", res)
	}
	log, err := other.ExecLog(context.Background(), 1)
	if err != nil || len(log) != 1 || log[0].Running || log[0].Signal != "TERM" || !log[0].Canceled {
		t.Fatalf("exec log %+v %v", log, err)
	}
}

// TestOtherUserRefused: the mux serves only its own uid (SO_PEERCRED).
// The peer here is this test's uid, which the mux is told is not its own.
func TestOtherUserRefused(t *testing.T) {
	testenv.CheckLeaks(t)
	b := startBoard(t)
	dir := muxDir(t)
	runMux(t, b.addr, dir, -1, func(m *Mux) { m.uid = os.Getuid() + 1 })
	_, err := dispatcher.Dial(context.Background(), b.addr, shared(dir))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("uid %d, only uid %d may share this line", os.Getuid(), os.Getuid()+1)) {
		t.Fatalf("another uid: %v", err)
	}
}

// TestLineLocked: while a mux holds a serial port, a second opener (a
// mux of another runtime directory, a direct dial) is told who holds it.
func TestLineLocked(t *testing.T) {
	testenv.CheckLeaks(t)
	b := startBoard(t)
	runMux(t, b.addr, muxDir(t), -1, nil)
	_, err := Listen(context.Background(), Config{Addr: b.addr, Dial: dialOptions(), Dir: muxDir(t)})
	var be *lineshare.BusyError
	if !errors.As(err, &be) || be.PID != os.Getpid() || !strings.Contains(err.Error(), fmt.Sprintf("in use by pid %d", os.Getpid())) {
		t.Fatalf("a second mux: %v", err)
	}
	_, err = dispatcher.Dial(context.Background(), b.addr, dialOptions())
	if !errors.As(err, &be) || be.PID != os.Getpid() {
		t.Fatalf("a direct dial: %v", err)
	}
	t.Log(err)
}

// TestIdleExit: once its last client left, the mux ends after its idle
// time and its socket is gone; a later call starts a new one.
func TestIdleExit(t *testing.T) {
	testenv.CheckLeaks(t)
	b := startBoard(t)
	dir := muxDir(t)
	m, served := runMux(t, b.addr, dir, 50*time.Millisecond, nil)
	c, err := dispatcher.Dial(context.Background(), b.addr, shared(dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := os.Stat(m.Socket()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after the mux ended: %v", err)
	}
	// The next call, with a way to start a mux, starts one.
	opts := shared(dir)
	var next <-chan error
	opts.Lines.Start = func(ctx context.Context, addr string) error {
		_, next = runMux(t, addr, dir, 50*time.Millisecond, nil)
		return nil
	}
	c, err = dispatcher.Dial(context.Background(), b.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-next; err != nil {
		t.Fatalf("the second mux: %v", err)
	}
}

// TestOtherUserProcessRefused: a process of another user cannot reach the
// mux at all (its directory is this user's alone); SO_PEERCRED would
// refuse it next (TestOtherUserRefused). It needs root, to run the other
// user's process.
func TestOtherUserProcessRefused(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.SkipOrFail(t, "running a process as another user needs root")
	}
	const py = "/usr/bin/python3" // any user may run it
	if _, err := os.Stat(py); err != nil {
		testenv.SkipOrFail(t, "%s (the other user's client) is not installed: %v", py, err)
	}
	b, dir := muxed(t)
	sock, err := lineshare.Socket(dir, b.addr)
	if err != nil {
		t.Fatal(err)
	}
	connect := exec.Command(py, "-c", "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])", sock)
	connect.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := connect.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("uid 65534 connecting to the mux: %v\n%s", err, out)
	}
	// The mux still serves its own user.
	c := dialVia(t, b, dir)
	defer c.Close()
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestFindAsksTheMux: a serial port a line mux holds is not probed (the
// mux has it locked), but a search for boards still lists the board on
// it, as its mux answers for it, with the port's address.
func TestFindAsksTheMux(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	b := startBoard(t)
	dir, err := lineshare.Dir()
	if err != nil {
		t.Fatal(err)
	}
	runMux(t, b.addr, dir, -1, nil)
	dev := strings.TrimPrefix(b.addr, "serial://")
	r := &dispatcher.Resolver{NoMDNS: true, SerialPorts: []string{dev}}
	f, err := r.Find(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Boards) != 1 || f.Boards[0].ID != "mux-board" || f.Boards[0].Address != b.addr || f.Boards[0].FP == "" {
		t.Fatalf("found %+v, skipped %+v: want mux-board at %s", f.Boards, f.SkippedPorts, b.addr)
	}
	for _, p := range f.SkippedPorts {
		if p.Port == dev {
			t.Fatalf("the port is still reported skipped: %+v", p)
		}
	}
}

// TestShellLineFreed: on a line with a shell and no agent, a call through
// the mux is told to run boardlink bootstrap, and the mux ends as soon as
// no client is left, so that the line is free for it.
func TestShellLineFreed(t *testing.T) {
	master, slave := testenv.RawPTY(t)
	if _, err := master.WriteString("\r\nboard login: "); err != nil {
		t.Fatal(err)
	}
	addr := "serial://" + slave.Name()
	dir := muxDir(t)
	_, served := runMux(t, addr, dir, time.Hour, nil)
	_, err := dispatcher.Dial(context.Background(), addr, shared(dir))
	if err == nil || !strings.Contains(err.Error(), "boardlink bootstrap") {
		t.Fatalf("a call on a line with only a login prompt: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("the mux ended with %v", err)
	}
	if _, err := os.Stat(mustSocket(t, dir, addr)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the mux's socket after it ended: %v", err)
	}
}

func mustSocket(t *testing.T, dir, addr string) string {
	t.Helper()
	sock, err := lineshare.Socket(dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	return sock
}
