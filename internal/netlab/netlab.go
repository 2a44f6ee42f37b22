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
//
// It heals itself: a Net's namespaces are named after the process that
// made it (nlPID-START-N-..., START its start time, so that a reused pid
// is told apart), and New first removes the namespaces of earlier Nets
// whose maker is gone (killed with SIGKILL, say), with every process
// still in them. A namespace of a live process, or one not named so, is
// never touched. The processes Command starts die with their maker
// (the parent-death signal).
package netlab

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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

// validName is what a label and a name given to New may be: they make
// up file names under /var/run/netns.
var validName = regexp.MustCompile(`^[A-Za-z0-9_]{1,32}$`)

// ErrName is the error of New given a label or a name that is not a
// validName, or the hub's.
var ErrName = errors.New("netlab: a label or name must be 1 to 32 of A-Z, a-z, 0-9 and _, and a name not br")

// seq numbers the Nets of this process, which may have several at once.
var seq atomic.Int64

// New makes a hub namespace with a bridge, and for each name a namespace
// on it, the i-th with address 10.77.1.i+1, once it has removed the
// namespaces of earlier Nets whose maker is gone, with the processes
// left in them (sweep). The namespaces are named PREFIX-LABEL-br (the hub) and
// PREFIX-LABEL-NAME, PREFIX being unique to the Net and naming this
// process (nlPID-START-N); label says what they are for. On error, what
// was made is removed.
func New(ctx context.Context, label string, names ...string) (n *Net, err error) {
	if len(names) == 0 || len(names) > maxSpaces {
		return nil, fmt.Errorf("netlab: %d namespaces: want 1 to %d", len(names), maxSpaces)
	}
	if !validName.MatchString(label) {
		return nil, fmt.Errorf("%w: label %q", ErrName, label)
	}
	for _, name := range names {
		if !validName.MatchString(name) || name == "br" {
			return nil, fmt.Errorf("%w: name %q", ErrName, name)
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netlab: no ip(8) (iproute2): %w", err)
	}
	if err := sweep(ctx); err != nil {
		return nil, err
	}
	self, err := makerOf(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("netlab: this process's start time: %w", err)
	}
	prefix := fmt.Sprintf("%s-%d-%s-", self, seq.Add(1), label)
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

// netnsDir is where ip(8) keeps the named namespaces.
const netnsDir = "/var/run/netns"

// owned matches the name of a namespace New made: the maker's pid and
// start time.
var owned = regexp.MustCompile(`^nl([0-9]{1,10})-([0-9]{1,20})-[0-9]+-`)

// makerOf names process pid as New's namespaces do: nlPID-START, START
// its start time (in clock ticks since boot, /proc/PID/stat), which a
// later process given the same pid does not have.
func makerOf(pid int) (string, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name, in parentheses, may hold spaces: the fields
	// that matter follow its last ')'; the start time is the 22nd.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return "", fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	return fmt.Sprintf("nl%d-%s", pid, fields[19]), nil
}

// sweep removes the namespaces of Nets whose maker is gone (no process
// of that pid and start time), killing (SIGKILL) the processes still in
// them. Namespaces of a live maker, and those netlab did not name, are
// left alone. New calls it first.
func sweep(ctx context.Context) error {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	var stale []string
	for _, e := range ents {
		m := owned.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil {
			continue
		}
		if now, err := makerOf(pid); err == nil && strings.HasPrefix(e.Name(), now+"-") {
			continue // its maker lives
		}
		stale = append(stale, e.Name())
	}
	var errs []error
	for _, ns := range stale {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := errors.Join(killIn(ns), deleteAll([]string{ns}))
		if _, serr := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(serr, fs.ErrNotExist) {
			continue // removed, by us or by another process's sweep
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killIn sends SIGKILL to every process in namespace ns (as ip netns pids
// finds them: by the namespace of their main thread), through a pidfd,
// checked again after it is opened, so that no pid reused meanwhile is
// hit.
func killIn(ns string) error {
	want, err := os.Stat(filepath.Join(netnsDir, ns))
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	in := func(pid int) bool {
		fi, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid))
		return err == nil && os.SameFile(fi, want)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	var errs []error
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || !in(pid) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone already
		}
		if in(pid) {
			if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("netlab: kill %d in %s: %w", pid, ns, err))
			}
		}
		unix.Close(fd)
	}
	return errors.Join(errs...)
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
// to it reaches the command). It is killed (SIGKILL) when the thread
// that starts it ends (the parent-death signal is the thread's,
// golang/go#27505), which is when this process dies: Go ends a thread
// only when a goroutine exits locked to it, which netlab never does (see
// Dialer). A program that does must start Commands from a goroutine
// that holds its thread for as long as they run.
func Command(ns, name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// DialFunc is the dialer of an http.Transport.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dialer returns a dialer whose connections come from namespace ns, and
// the closer of the namespace's handle it keeps. Each dial runs on an OS
// thread moved into ns and back: the rest of the program stays where it
// is.
func Dialer(ns string) (DialFunc, func() error, error) {
	f, err := os.Open(filepath.Join(netnsDir, ns))
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

// within runs fn on an OS thread moved into the namespace of handle ns,
// then back where it was; the sockets fn makes stay in ns. The thread
// is not left to end with its goroutine: a process started from it with
// a parent-death signal (a Command, pgtest's postmaster) would get it.
// Only if it cannot be moved back does it end, rather than serve others
// from ns.
func within[T any](ns *os.File, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var zero T
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{zero, fmt.Errorf("netlab: %w", err)}
			return
		}
		defer home.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{zero, fmt.Errorf("setns %s: %w", ns.Name(), err)}
			return
		}
		v, err := fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
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
