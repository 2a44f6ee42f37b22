// Package netlab builds a private network on this machine for tests and
// benchmarks that need services on separate hosts: network namespaces
// made for the purpose, each joined by a veth pair to one bridge in a
// hub namespace, on 10.77.0.0/16. Nothing of the root namespace (its
// interfaces, routes or sysctls) is touched, and nothing multicasts:
// mDNS needs a program that asks for it, run inside a namespace.
//
// It needs root and ip(8) (iproute2). Processes run in a namespace with
// Command; a program's own connections come from one with Dialer. It
// also makes the self-signed certificate a service on such a network
// serves with (SelfSigned).
package netlab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// HubAddr is the hub namespace's address, on its bridge.
var HubAddr = netip.AddrFrom4([4]byte{10, 77, 0, 1})

// Net is a hub namespace with a bridge and the namespaces on it.
type Net struct {
	// Hub is the name of the namespace of the bridge (br0), which has
	// HubAddr on it.
	Hub string
	// Spaces are the namespaces on the bridge, in the order of their
	// names given to New.
	Spaces []Space
}

// Space is a namespace on the bridge: its lo is up, and its veth (v0)
// has Addr/16.
type Space struct {
	Name string
	Addr netip.Addr
}

// maxSpaces bounds the namespaces of a Net: their addresses are
// 10.77.1.1 and on, within one /24.
const maxSpaces = 254

// New makes the hub namespace prefix+"br" with a bridge, and for each
// name a namespace prefix+name on it, the i-th with address 10.77.1.i+1.
// The prefix should be unique to the run (the process id in it, say): the
// names are the machine's. On error, what was made is removed.
func New(ctx context.Context, prefix string, names ...string) (n *Net, err error) {
	if len(names) == 0 || len(names) > maxSpaces {
		return nil, fmt.Errorf("netlab: %d namespaces: want 1 to %d", len(names), maxSpaces)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netlab: no ip(8) (iproute2): %w", err)
	}
	n = &Net{Hub: prefix + "br"}
	made := []string{}
	defer func() {
		if err != nil {
			deleteAll(made)
			n = nil
		}
	}()
	ip := func(args ...string) error {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("netlab: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	for _, ns := range append([]string{n.Hub}, prefixed(prefix, names)...) {
		if err := ip("netns", "add", ns); err != nil {
			return nil, err
		}
		made = append(made, ns)
	}
	for _, args := range [][]string{
		{"-n", n.Hub, "link", "add", "br0", "type", "bridge"},
		{"-n", n.Hub, "addr", "add", HubAddr.String() + "/16", "dev", "br0"},
		{"-n", n.Hub, "link", "set", "br0", "up"},
		{"-n", n.Hub, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			return nil, err
		}
	}
	for i, ns := range prefixed(prefix, names) {
		sp := Space{Name: ns, Addr: netip.AddrFrom4([4]byte{10, 77, 1, byte(i + 1)})}
		end := fmt.Sprintf("v%d-br", i)
		for _, args := range [][]string{
			{"-n", n.Hub, "link", "add", "v0", "type", "veth", "peer", "name", end},
			{"-n", n.Hub, "link", "set", "v0", "netns", ns},
			{"-n", n.Hub, "link", "set", end, "master", "br0", "up"},
			{"-n", ns, "addr", "add", sp.Addr.String() + "/16", "dev", "v0"},
			{"-n", ns, "link", "set", "v0", "up"},
			{"-n", ns, "link", "set", "lo", "up"},
		} {
			if err := ip(args...); err != nil {
				return nil, err
			}
		}
		n.Spaces = append(n.Spaces, sp)
	}
	return n, nil
}

func prefixed(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, name := range names {
		out[i] = prefix + name
	}
	return out
}

// Close deletes the namespaces; their veths and bridge go with them once
// no process is left in them (stop those first).
func (n *Net) Close() error {
	names := []string{n.Hub}
	for _, sp := range n.Spaces {
		names = append(names, sp.Name)
	}
	return deleteAll(names)
}

func deleteAll(names []string) error {
	var errs []error
	for _, ns := range names {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("netlab: ip netns del %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// Command is name run with args in namespace ns (ip netns exec, which
// execs it in place: the process's pid is the command's, and a signal
// to it reaches the command).
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// DialFunc is the dialer of an http.Transport.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dialer returns a dialer whose connections come from namespace ns, and
// the closer of the namespace's handle it keeps. Each dial runs on an OS
// thread of its own moved into ns, which ends with it: the rest of the
// program stays where it is.
func Dialer(ns string) (DialFunc, func() error, error) {
	f, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		return nil, nil, fmt.Errorf("netlab: namespace %s: %w", ns, err)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return within(f, func() (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		})
	}
	return dial, f.Close, nil
}

// within runs fn on an OS thread of its own moved into the namespace of
// handle ns, which ends with it; the sockets fn makes stay in ns.
func within[T any](ns *os.File, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			var zero T
			ch <- result{zero, fmt.Errorf("setns %s: %w", ns.Name(), err)}
			return
		}
		v, err := fn()
		ch <- result{v, err}
	}()
	r := <-ch
	return r.v, r.err
}

// SelfSigned writes a self-signed certificate (ECDSA P-256, valid an
// hour either side of now) for 127.0.0.1 and ips to dir/lab.crt and its
// key to dir/lab.key (0600), and returns their paths and a pool that
// trusts it.
func SelfSigned(dir string, ips ...net.IP) (certFile, keyFile string, roots *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lab"},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certFile, keyFile = filepath.Join(dir, "lab.crt"), filepath.Join(dir, "lab.key")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, err
	}
	roots = x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	return certFile, keyFile, roots, nil
}
