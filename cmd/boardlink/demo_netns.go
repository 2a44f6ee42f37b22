package main

// The demo's lab advertises over mDNS pinned to lo. The host's lo usually
// cannot multicast (it lacks IFF_MULTICAST), and it is not the demo's to
// change, so the demo re-runs itself in a network namespace of its own,
// whose lo it may set up as it likes: nothing there reaches any other
// interface. Without root, a user namespace comes with it (the current uid
// mapped to 0 there), which unprivileged users may make on most systems.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// demoNetnsEnv marks the demo re-run in its namespace; its value is the
// inode of the parent's network namespace, which the child must not be in.
const demoNetnsEnv = "BOARDLINK_DEMO_NETNS"

// demoNetnsFD is the child's end of the pipe on which it tells its parent
// whether its loopback is ready ("ok") or why not.
const demoNetnsFD = 3

// loCanMulticast reports whether lo in this network namespace is up and
// can multicast.
func loCanMulticast() bool {
	flags, err := loFlags()
	return err == nil && flags&unix.IFF_UP != 0 && flags&unix.IFF_MULTICAST != 0
}

func loFlags() (uint16, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return 0, fmt.Errorf("lo: flags: %w", err)
	}
	return ifr.Uint16(), nil
}

// netnsInode is the inode of this process's network namespace.
func netnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// inDemoNetns reports whether this process is the demo re-run in its own
// namespace.
func inDemoNetns() bool { return os.Getenv(demoNetnsEnv) != "" }

// setupDemoNetns runs first in the re-run demo: it checks that this is a
// namespace of its own, fresh (another namespace than the parent's, with
// lo alone, still down), then brings lo up with IFF_MULTICAST, and tells
// the parent. It never touches an interface of a namespace it did not
// make.
func setupDemoNetns() error {
	err := func() error {
		parent, err := strconv.ParseUint(os.Getenv(demoNetnsEnv), 10, 64)
		if err != nil {
			return fmt.Errorf("%s=%q: not a namespace inode", demoNetnsEnv, os.Getenv(demoNetnsEnv))
		}
		if self, err := netnsInode(); err != nil || self == parent {
			return fmt.Errorf("not in a network namespace of its own (%v)", err)
		}
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		// A fresh namespace has lo, down, and maybe a tunnel module's
		// fallback devices, down too.
		hasLo := false
		for _, ifi := range ifs {
			hasLo = hasLo || ifi.Name == "lo"
			if ifi.Flags&net.FlagUp != 0 {
				return fmt.Errorf("the network namespace is not a fresh one: %s is up", ifi.Name)
			}
		}
		if !hasLo {
			return errors.New("the network namespace has no lo")
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq("lo")
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return fmt.Errorf("lo: flags: %w", err)
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_MULTICAST)
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("lo: bring it up with multicast: %w", err)
		}
		if !loCanMulticast() {
			return errors.New("lo: still cannot multicast")
		}
		return nil
	}()
	// The parent waits for a word on the pipe, then for EOF.
	var st unix.Stat_t
	if unix.Fstat(demoNetnsFD, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
		f := os.NewFile(demoNetnsFD, "demo-netns")
		msg := "ok"
		if err != nil {
			msg = err.Error()
			err = &exitError{code: 1} // the parent says why, and runs the demo without mDNS
		}
		_, _ = io.WriteString(f, msg)
		f.Close()
	} else if err != nil {
		err = &exitError{code: 1, err: fmt.Errorf("demo: private network namespace: %w", err)}
	}
	return err
}

// errNoNetns says why the demo could not re-run itself in a namespace; the
// demo then runs without mDNS.
type errNoNetns struct{ why string }

func (e *errNoNetns) Error() string { return e.why }

// runDemoInNetns re-runs this program (same arguments) in a new network
// namespace and returns once it has ended, with its exit status as an
// *exitError (nil for 0). Ctrl-C reaches the child from the terminal, and
// an interrupt of this process (ctx) is forwarded to it. When no namespace
// can be made, or its lo set up, it returns an *errNoNetns and nothing of
// the demo has run.
func runDemoInNetns(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	if testing.Testing() {
		// os.Executable is the test binary, which would not run the demo.
		return &errNoNetns{"lo cannot multicast here, and a test cannot re-run the demo in a network namespace " +
			"(run it inside testenv.InPrivateLoopback)"}
	}
	exe, err := os.Executable()
	if err != nil {
		return &errNoNetns{fmt.Sprintf("lo here cannot multicast, and the demo cannot re-run itself: %v", err)}
	}
	ino, err := netnsInode()
	if err != nil {
		return &errNoNetns{fmt.Sprintf("lo here cannot multicast, and no private network namespace could be made: %v", err)}
	}
	attempts := []*syscall.SysProcAttr{userNetns()}
	if os.Geteuid() == 0 {
		// Root makes a network namespace alone; in a container without
		// CAP_SYS_ADMIN, a user namespace may still work.
		attempts = []*syscall.SysProcAttr{{Cloneflags: syscall.CLONE_NEWNET}, userNetns()}
	}
	var errs []string
	for _, attr := range attempts {
		attr.Pdeathsig = syscall.SIGTERM // the demo cleans up if this process dies
		err := runChild(ctx, exe, ino, attr, stdin, stdout, stderr)
		var nn *errNoNetns
		if !errors.As(err, &nn) {
			return err
		}
		errs = append(errs, nn.why)
	}
	return &errNoNetns{"lo here cannot multicast, and no private network namespace could be made (" +
		strings.Join(errs, "; ") + ")"}
}

// userNetns asks for a user namespace (this uid and gid mapped to root
// there) with the network namespace.
func userNetns() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		GidMappingsEnableSetgroups: false,
	}
}

func runChild(ctx context.Context, exe string, parentNetns uint64, attr *syscall.SysProcAttr,
	stdin io.Reader, stdout, stderr io.Writer) error {
	what := "network namespace"
	if attr.Cloneflags&syscall.CLONE_NEWUSER != 0 {
		what = "user and network namespace"
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return &errNoNetns{fmt.Sprintf("%s: %v", what, err)}
	}
	defer pr.Close()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", demoNetnsEnv, parentNetns))
	if f, ok := stdin.(*os.File); ok {
		cmd.Stdin = f
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.ExtraFiles = []*os.File{pw} // fd 3 = demoNetnsFD
	cmd.SysProcAttr = attr
	err = cmd.Start()
	pw.Close()
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) { // fork/exec PATH: the reason
			err = pe.Err
		}
		return &errNoNetns{fmt.Sprintf("%s: %v", what, err)}
	}
	word, _ := io.ReadAll(pr) // until the child closes its end, or exits
	if string(word) != "ok" {
		_ = cmd.Wait()
		if len(word) == 0 {
			word = []byte("the demo ended before setting up its loopback")
		}
		return &errNoNetns{fmt.Sprintf("%s: %s", what, word)}
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			// An interrupt from the terminal reached the child too;
			// forward it when it was sent to this process alone. A
			// second one does not hurt: the demo is cleaning up.
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
			}
		case <-done:
		}
	}()
	err = cmd.Wait()
	close(done)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return &exitError{code: 128 + int(ws.Signal())}
		}
		return &exitError{code: ee.ExitCode()}
	}
	return &exitError{code: 1, err: err}
}
