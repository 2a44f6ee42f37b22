package netlab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// listenIn listens on addr in namespace ns.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	f, err := os.Open(filepath.Join("/var/run/netns", ns))
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

// TestNet: a listener in the first namespace is reached over the bridge
// from the hub and from the second namespace; a command runs in a
// namespace with its address; Close removes the namespaces.
func TestNet(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "no ip(8): %v", err)
	}
	ctx := context.Background()
	n, err := New(ctx, fmt.Sprintf("blt%d", os.Getpid()), "a", "b")
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
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, ns := range []string{n.Hub, n.Spaces[0].Name, n.Spaces[1].Name} {
		if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); !os.IsNotExist(err) {
			t.Errorf("namespace %s still there after Close: %v", ns, err)
		}
	}
}
