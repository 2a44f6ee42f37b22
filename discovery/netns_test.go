package discovery

// A lab of Linux network namespaces for mDNS tests, and the helper
// processes that run inside it. Nothing here touches the machine's own
// interfaces: every address lives on veth pairs between namespaces this
// file creates, joined by a bridge in a namespace of its own, and all of
// it is deleted in t.Cleanup.
//
//	  <p>-br: bridge br0 (multicast snooping off)
//	   |-- p0 ==veth== mdns0 in <p>-host    10.77.0.1/16 fd77::1/64
//	   |-- p1 ==veth== mdns0 in <p>-b1      10.77.0.2/16 fd77::2/64
//	   `-- p2 ==veth== mdns0 in <p>-b2      ...
//
// Code runs in a namespace as a process: the test binary re-executes
// itself with `ip netns exec NS TESTBIN -test.run=^TestHelperProcess$ --
// MODE ARGS`, and helperEnv set (see TestHelperProcess for the modes).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// labIface is the name of every lab node's interface inside its namespace.
const labIface = "mdns0"

const helperEnv = "BOARDLINK_DISCOVERY_HELPER"

var labSeq atomic.Int32

// lab is a set of namespaces on one bridge.
type lab struct {
	t      testing.TB
	prefix string
	bridge string // the bridge namespace
	nodes  []*node
}

// node is a namespace with one interface (labIface) on the lab's bridge.
type node struct {
	NS   string
	IPv4 netip.Addr // invalid when the node is IPv6-only
	IPv6 netip.Addr // a ULA, fd77::/64
}

// run runs a command and fails the test with its output on error.
func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// requireNetns skips loudly (fails under BOARDLINK_E2E=1) unless network
// namespaces can be made here.
func requireNetns(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "network namespaces need root (uid %d)", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "no `ip` command (Debian package iproute2): %v", err)
	}
	name := fmt.Sprintf("bl%dprobe%d", os.Getpid(), labSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		testenv.SkipOrFail(t, "`ip netns add` does not work here: %v: %s", err, out)
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
}

// newLab makes the bridge namespace. Add nodes with addNode.
func newLab(t testing.TB) *lab {
	t.Helper()
	requireNetns(t)
	l := &lab{t: t, prefix: fmt.Sprintf("bl%d-%d", os.Getpid(), labSeq.Add(1))}
	l.bridge = l.addNS("br")
	run(t, "ip", "-n", l.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	run(t, "ip", "-n", l.bridge, "link", "set", "br0", "up")
	return l
}

func (l *lab) addNS(suffix string) string {
	l.t.Helper()
	ns := l.prefix + "-" + suffix
	run(l.t, "ip", "netns", "add", ns)
	l.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.t.Errorf("cleanup: ip netns del %s: %v: %s", ns, err, out)
		}
	})
	run(l.t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

type nodeOpts struct {
	noIPv4 bool
}

// addNode makes a namespace on the bridge, with labIface up, 10.77.0.N/16
// (unless noIPv4), fd77::N/64 and its link-local address, IPv6 duplicate
// address detection off so addresses work at once.
func (l *lab) addNode(name string, o nodeOpts) *node {
	l.t.Helper()
	n := len(l.nodes) + 1
	nd := &node{NS: l.addNS(name)}
	port := fmt.Sprintf("p%d", n)
	setDAD := func(conf string) { // /proc/sys/net is the reader's namespace's
		run(l.t, "ip", "netns", "exec", nd.NS, "sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/"+conf+"/accept_dad")
	}
	setDAD("all")
	setDAD("default")
	run(l.t, "ip", "-n", l.bridge, "link", "add", port, "type", "veth", "peer", "name", labIface, "netns", nd.NS)
	run(l.t, "ip", "-n", l.bridge, "link", "set", port, "master", "br0", "up")
	setDAD(labIface)
	if !o.noIPv4 {
		nd.IPv4 = netip.AddrFrom4([4]byte{10, 77, byte(n >> 8), byte(n)})
		run(l.t, "ip", "-n", nd.NS, "addr", "add", nd.IPv4.String()+"/16", "dev", labIface)
	}
	nd.IPv6 = netip.MustParseAddr(fmt.Sprintf("fd77::%x", n))
	run(l.t, "ip", "-n", nd.NS, "addr", "add", nd.IPv6.String()+"/64", "dev", labIface, "nodad")
	run(l.t, "ip", "-n", nd.NS, "link", "set", labIface, "multicast", "on", "up")
	if !o.noIPv4 {
		run(l.t, "ip", "-n", nd.NS, "route", "add", "224.0.0.0/4", "dev", labIface)
	}
	l.nodes = append(l.nodes, nd)
	return nd
}

// proc is a process in a lab namespace whose stdout is read line by line.
type proc struct {
	t     testing.TB
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	exit  chan struct{}
	errs  *testenv.Buffer
}

// start runs argv in namespace ns; the process is killed in t.Cleanup.
func start(t testing.TB, name, ns string, env []string, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{t: t, name: name, cmd: cmd, lines: make(chan string, 1024), exit: make(chan struct{}), errs: &testenv.Buffer{}}
	cmd.Stderr = p.errs
	cmd.WaitDelay = 5 * time.Second // should a grandchild keep the pipes open
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		_ = cmd.Wait()
		close(p.lines)
		close(p.exit)
	}()
	t.Cleanup(func() {
		p.kill()
		timeout := time.After(10 * time.Second)
	drain:
		for {
			select {
			case _, ok := <-p.lines:
				if !ok {
					break drain
				}
			case <-timeout:
				t.Errorf("%s: still running 10 s after SIGKILL", name)
				break drain
			}
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, p.errs.String())
		}
	})
	return p
}

// helper starts the test binary in helper mode in namespace ns.
func helper(t testing.TB, name, ns string, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{exe, "-test.run=^TestHelperProcess$", "--"}, args...)
	return start(t, name, ns, []string{helperEnv + "=1"}, argv...)
}

func (p *proc) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
}

// close closes stdin and waits (up to 10 s) for the process to exit.
func (p *proc) close(t testing.TB) {
	t.Helper()
	_ = p.stdin.Close()
	select {
	case <-p.exit:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not exit on stdin EOF", p.name)
	}
}

func (p *proc) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("%s: write %q: %v", p.name, line, err)
	}
}

// expect waits for a line starting with prefix and returns it.
func (p *proc) expect(prefix string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("%s exited while waiting for %q; stderr:\n%s", p.name, prefix, p.errs.String())
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		case <-deadline:
			p.t.Fatalf("%s: no %q within %v; stderr:\n%s", p.name, prefix, timeout, p.errs.String())
		}
	}
}

// ---------------------------------------------------------- helper modes

// helperEvent is what the browse helper prints per event.
type helperEvent struct {
	Event
	At int64 `json:"at"` // wall clock, unix nanoseconds
}

// TestHelperProcess is not a test: it is the body of the processes the
// lab tests start inside namespaces. Modes (after "--"):
//
//	advertise IFACE ID PORT BOOT [COUNT]
//	    run COUNT (default 1) Advertisers (ids ID, or ID-00..ID-NN) and
//	    print "ready"; stdin "update BOOT" updates them ("updated"),
//	    "stop" stops them ("stopped") and exits; "reboot" announces a
//	    reboot ("rebooting") and exits; EOF is "stop".
//	browse IFACE NETWORK [EXPIRY]
//	    run a Browser, print "ready" and then each event as a JSON
//	    helperEvent line; exits on stdin EOF.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process body; run by the lab tests")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	var err error
	switch args[0] {
	case "advertise":
		err = helperAdvertise(args[1:])
	case "browse":
		err = helperBrowse(args[1:])
	default:
		err = fmt.Errorf("unknown helper mode %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helperLogger logs to stderr (shown when a test fails); debug level with
// BOARDLINK_MDNS_DEBUG=1.
func helperLogger() *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("BOARDLINK_MDNS_DEBUG") == "1" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func testRecord(id string, port int, boot string) Record {
	return Record{
		ID: id, Model: "sim", Protocol: 1, Capabilities: []string{"exec", "file", "ota"},
		Version: "0.1.0", BootID: boot, Slot: "a", Labels: map[string]string{"rack": "r1", "lab": "netns"},
		Port: port,
	}
}

func helperAdvertise(args []string) error {
	if len(args) < 4 {
		return fmt.Errorf("advertise IFACE ID PORT BOOT [COUNT|on-go]")
	}
	iface, id, boot := args[0], args[1], args[3]
	port, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(os.Stdin)
	count := 1
	switch {
	case len(args) > 4 && args[4] == "on-go":
		// Started ahead, it advertises when told: a restart is then the
		// goodbye and the new announcement milliseconds apart, as with a
		// service manager, not a process start on a loaded machine apart.
		fmt.Println("waiting")
		if !sc.Scan() || sc.Text() != "go" {
			return fmt.Errorf("on-go: got %q", sc.Text())
		}
	case len(args) > 4:
		if count, err = strconv.Atoi(args[4]); err != nil {
			return err
		}
	}
	ctx := context.Background()
	var ads []*Advertiser
	ids := []string{id}
	if count > 1 {
		ids = nil
		for i := range count {
			ids = append(ids, fmt.Sprintf("%s-%02d", id, i))
		}
	}
	for i, id := range ids {
		a := NewAdvertiser(AdvertiseConfig{Ifaces: []string{iface}, Logger: helperLogger()})
		if err := a.Start(ctx, testRecord(id, port+i, boot)); err != nil {
			return err
		}
		ads = append(ads, a)
	}
	fmt.Println("ready")
	stop := func() error {
		var wg sync.WaitGroup
		errs := make([]error, len(ads))
		for i, a := range ads {
			wg.Go(func() { errs[i] = a.Stop(ctx) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		fmt.Println("stopped")
		return nil
	}
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "update":
			for i, a := range ads {
				if err := a.Update(ctx, testRecord(ids[i], port+i, f[1])); err != nil {
					return err
				}
			}
			fmt.Println("updated")
		case len(f) == 1 && f[0] == "stop":
			return stop()
		case len(f) == 1 && f[0] == "reboot":
			for _, a := range ads {
				if err := a.Reboot(ctx, 0); err != nil {
					return err
				}
			}
			fmt.Println("rebooting")
			return nil
		default:
			return fmt.Errorf("unknown command %q", sc.Text())
		}
	}
	return stop()
}

func helperBrowse(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("browse IFACE NETWORK [EXPIRY]")
	}
	cfg := BrowseConfig{Ifaces: []string{args[0]}, Network: args[1], Logger: helperLogger()}
	if len(args) > 2 {
		d, err := time.ParseDuration(args[2])
		if err != nil {
			return err
		}
		cfg.Expiry = d
	}
	b := NewBrowser(cfg)
	if err := b.Start(context.Background()); err != nil {
		return err
	}
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		enc := json.NewEncoder(os.Stdout)
		for ev := range b.Events() {
			mu.Lock()
			_ = enc.Encode(helperEvent{Event: ev, At: time.Now().UnixNano()})
			mu.Unlock()
		}
	}()
	fmt.Println("ready")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	eof := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(eof) }()
	select {
	case <-eof:
	case <-sigs:
	}
	err := b.Stop()
	<-done
	return err
}

// events turns a browse helper's lines into events.
type eventStream struct {
	p *proc
}

// next returns the next event, failing the test after timeout.
func (s eventStream) next(timeout time.Duration) helperEvent {
	s.p.t.Helper()
	line := s.p.expect("{", timeout)
	var ev helperEvent
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		s.p.t.Fatalf("bad event line %q: %v", line, err)
	}
	return ev
}

// nextNews returns the next event that changes what a board announces,
// or adds or removes one. An Updated that announces what shown holds for
// the board already (an address learned later, as a link-local IPv6 one
// after the IPv4 one) is logged and skipped. shown follows the events.
func (s eventStream) nextNews(timeout time.Duration, shown map[string]Record) helperEvent {
	s.p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			s.p.t.Fatalf("no news within %v", timeout)
		}
		ev := s.next(left)
		was, ok := shown[ev.Record.ID]
		shown[ev.Record.ID] = ev.Record
		if ev.Op == Updated && ok && ev.Record.SameAnnouncement(was) {
			s.p.t.Logf("%s updated with the same announcement: addresses %v", ev.Record.ID, ev.Record.Addrs)
			continue
		}
		return ev
	}
}

// waitFor returns the first event with op for id, skipping others.
func (s eventStream) waitFor(op Op, id string, timeout time.Duration) helperEvent {
	s.p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			s.p.t.Fatalf("no %s event for %s within %v", op, id, timeout)
		}
		ev := s.next(left)
		s.p.t.Logf("event %s %s boot=%s addr=%s", ev.Op, ev.Record.ID, ev.Record.BootID, ev.Record.Address)
		if ev.Op == op && ev.Record.ID == id {
			return ev
		}
	}
}
