package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/testenv"
)

// listenIn listens on addr in namespace ns.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	f, err := os.Open(filepath.Join(netnsDir, ns))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln, err := within(f, func() (net.Listener, error) { return net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// needNetns skips t, loudly, without root or ip(8).
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "no ip(8): %v", err)
	}
}

// newNet makes a Net of namespaces names for t, which it closes, or
// skips t without root.
func newNet(t *testing.T, names ...string) *Net {
	t.Helper()
	needNetns(t)
	n, err := New(context.Background(), "t", names...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestNet: a listener in the first namespace is reached over the bridge
// from the hub and from the second namespace; a command runs in a
// namespace with its address; the dials' threads come back; Close
// removes the namespaces.
func TestNet(t *testing.T) {
	needNetns(t)
	ctx := context.Background()
	n, err := New(ctx, "t", "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			n.Close()
		}
	})
	if len(n.Spaces) != 2 || n.Spaces[0].Addr.String() != "10.77.1.1" || n.Spaces[1].Addr.String() != "10.77.1.2" {
		t.Fatalf("%+v", n)
	}
	out, err := Command(n.Spaces[1].Name, "ip", "-o", "-4", "addr", "show", "dev", "v0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.77.1.2/16") {
		t.Fatalf("ip addr in %s: %v\n%s", n.Spaces[1].Name, err, out)
	}

	ln := listenIn(t, n.Spaces[0].Name, "10.77.1.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from a\n")
			c.Close()
		}
	}()
	for _, from := range []string{n.Hub, n.Spaces[1].Name} {
		dial, closeNS, err := Dialer(from)
		if err != nil {
			t.Fatal(err)
		}
		c, err := dial(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial from %s: %v", from, err)
		}
		got, err := io.ReadAll(c)
		c.Close()
		closeNS()
		if err != nil || string(got) != "hello from a\n" {
			t.Fatalf("from %s: %q %v", from, got, err)
		}
	}
	// The dials' threads are back in this process's namespace: no
	// goroutine finds itself in another.
	home, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		elsewhere := make(chan bool)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			fi, err := os.Stat("/proc/thread-self/ns/net")
			elsewhere <- err != nil || !os.SameFile(fi, home)
		}()
		if <-elsewhere {
			t.Fatal("a thread left in another network namespace")
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, ns := range []string{n.Hub, n.Spaces[0].Name, n.Spaces[1].Name} {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); !os.IsNotExist(err) {
			t.Errorf("namespace %s still there after Close: %v", ns, err)
		}
	}
}

// helperEnv makes the test binary run as the maker of a Net that is
// killed (leaver).
const helperEnv = "BOARDLINK_NETLAB_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "leaver" {
		os.Exit(leaver())
	}
	os.Exit(m.Run())
}

// left is what leaver says it made.
type left struct {
	Names []string // the Net's namespaces
	// Held is a Command's process; Loose is a process started in a
	// namespace without the parent-death signal, as a daemon that forks
	// away from its starter would be.
	Held, Loose int
}

// leaver builds a Net, starts a process in each of its two namespaces,
// says what it made on stdout (left, in JSON), and waits until stdin
// closes: it is meant to be killed first.
func leaver() int {
	n, err := New(context.Background(), "leaver", "a", "b")
	if err != nil {
		fmt.Fprintln(os.Stderr, "leaver:", err)
		return 3
	}
	held := Command(n.Spaces[0].Name, "sleep", "infinity")
	loose := exec.Command("ip", "netns", "exec", n.Spaces[1].Name, "sleep", "infinity")
	for _, cmd := range []*exec.Cmd{held, loose} {
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "leaver:", err)
			return 3
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(left{Names: []string{n.Hub, n.Spaces[0].Name, n.Spaces[1].Name},
		Held: held.Process.Pid, Loose: loose.Process.Pid}); err != nil {
		return 3
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// pidfd is a handle on process pid, closed when t ends.
func pidfd(t *testing.T, pid int) int {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd of %d: %v", pid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// ended reports whether the process of pidfd fd has exited.
func ended(t *testing.T, fd int) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil && !errors.Is(err, unix.EINTR) {
		t.Fatal(err)
	}
	return n > 0
}

// netnsList is what ip netns list says.
func netnsList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	return string(out)
}

// TestNewSweepsAfterSIGKILL: a process that made a Net and is killed
// with SIGKILL leaves its namespaces, and in them a process not started
// by Command (Command's die with their maker). The next New removes
// both; it leaves alone the namespaces of a live maker (this process's)
// and one netlab did not name.
func TestNewSweepsAfterSIGKILL(t *testing.T) {
	mine := newNet(t, "a")
	foreign := fmt.Sprintf("nl%d-not-netlabs", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", foreign).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", foreign, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", foreign).Run() })

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), helperEnv+"=leaver")
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var l left
	if err := json.NewDecoder(stdout).Decode(&l); err != nil {
		child.Process.Kill()
		child.Wait()
		t.Fatalf("the leaver said: %v", err)
	}
	held, loose := pidfd(t, l.Held), pidfd(t, l.Loose)
	t.Cleanup(func() { unix.PidfdSendSignal(loose, unix.SIGKILL, nil, 0) })
	// Checked while the leaver lives: once it is dead, a New of another
	// test binary may sweep them at any time.
	for _, ns := range l.Names {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err != nil {
			t.Fatalf("the leaver's namespace %s: %v", ns, err)
		}
	}
	if ended(t, held) || ended(t, loose) {
		t.Fatal("the leaver's processes ended before it")
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	testenv.Eventually(t, "the leaver's Command to die with it", func() bool { return ended(t, held) })

	next := newNet(t, "b")
	list := netnsList(t)
	for _, ns := range l.Names {
		if strings.Contains(list, ns) {
			t.Errorf("the leaver's namespace %s still there after New:\n%s", ns, list)
		}
	}
	for _, ns := range []string{mine.Hub, mine.Spaces[0].Name, foreign, next.Hub, next.Spaces[0].Name} {
		if !strings.Contains(list, ns) {
			t.Errorf("namespace %s gone after New:\n%s", ns, list)
		}
	}
	testenv.Eventually(t, "the process left in the leaver's namespace to be killed", func() bool { return ended(t, loose) })
	// The earlier Net still works.
	out, err := Command(mine.Spaces[0].Name, "ip", "-o", "-4", "addr", "show", "dev", "v0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.77.1.1/16") {
		t.Fatalf("ip addr in %s: %v\n%s", mine.Spaces[0].Name, err, out)
	}
}

// TestNewRefusesNames: a label or name that is no plain word, or a name
// that is the hub's, is refused before anything is made.
func TestNewRefusesNames(t *testing.T) {
	for _, c := range []struct {
		label string
		names []string
	}{
		{"", []string{"a"}},
		{"t", []string{"br"}},
		{"t", []string{"a/b"}},
		{"../t", []string{"a"}},
		{"t", []string{strings.Repeat("a", 33)}},
	} {
		if _, err := New(context.Background(), c.label, c.names...); !errors.Is(err, ErrName) {
			t.Errorf("New(%q, %q): %v, want ErrName", c.label, c.names, err)
		}
	}
}

// TestDialsKeepCommands: dials from a namespace end no thread, so a
// Command started from a thread of its own that then went back to the
// pool keeps running (its parent-death signal comes when that thread
// ends) however many dials follow.
func TestDialsKeepCommands(t *testing.T) {
	n := newNet(t, "a")
	ns := n.Spaces[0].Name
	ln := listenIn(t, ns, "10.77.1.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cmd := Command(ns, "sleep", "infinity")
	var startErr error
	tid := testenv.OnPooledThread(func() { startErr = cmd.Start() })
	if startErr != nil {
		t.Fatal(startErr)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	dial, closeNS, err := Dialer(n.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer closeNS()
	for range 100 {
		c, err := dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid)); err != nil {
		t.Fatalf("the thread that started the Command ended: %v", err)
	}
	if ended(t, pidfd(t, cmd.Process.Pid)) {
		t.Fatal("the Command ended")
	}
}
