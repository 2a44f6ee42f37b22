package discovery

// Interoperability with an mDNS stack nobody here wrote: Debian's
// python3-zeroconf, run by /usr/bin/python3 inside the lab namespaces and
// pinned to the namespace's address (Zeroconf(interfaces=[ip])).

import (
	"encoding/json"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// The Debian interpreter: the python3 first on PATH may be another one
// without python3-zeroconf.
const debianPython = "/usr/bin/python3"

// pyBrowse prints one JSON line per change of _boardlink._tcp services:
// {"op": "added"|"updated"|"removed", "name", "port", "addrs", "txt"}.
const pyBrowse = `
import json, sys, threading
from zeroconf import Zeroconf, ServiceBrowser, ServiceInfo, ServiceStateChange

TYPE = "_boardlink._tcp.local."
zc = Zeroconf(interfaces=[sys.argv[1]])
lock = threading.Lock()

def out(d):
    with lock:
        print(json.dumps(d), flush=True)

def on_change(zeroconf, service_type, name, state_change):
    op = {ServiceStateChange.Added: "added", ServiceStateChange.Updated: "updated",
          ServiceStateChange.Removed: "removed"}[state_change]
    d = {"op": op, "name": name}
    if op != "removed":
        info = ServiceInfo(service_type, name)
        if info.request(zeroconf, 3000):
            d["port"] = info.port
            d["addrs"] = info.parsed_addresses()
            d["txt"] = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    out(d)

browser = ServiceBrowser(zc, TYPE, handlers=[on_change])
print("ready", flush=True)
sys.stdin.read()
browser.cancel()
zc.close()
`

// pyRegister registers NAME at IP:PORT with TXT k=v arguments, prints
// "ready", and unregisters (goodbye) on stdin EOF.
const pyRegister = `
import socket, sys
from zeroconf import Zeroconf, ServiceInfo

ip, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
props = dict(a.split("=", 1) for a in sys.argv[4:])
zc = Zeroconf(interfaces=[ip])
info = ServiceInfo("_boardlink._tcp.local.", name + "._boardlink._tcp.local.",
                   addresses=[socket.inet_aton(ip)], port=port, properties=props,
                   server="py-" + name + ".local.")
zc.register_service(info)
print("ready", flush=True)
sys.stdin.read()
zc.unregister_service(info)
zc.close()
`

func requirePythonZeroconf(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(debianPython, "-c", "import zeroconf").CombinedOutput(); err != nil {
		testenv.SkipOrFail(t, "%s cannot import zeroconf (Debian package python3-zeroconf): %v: %s", debianPython, err, out)
	}
}

type pyEvent struct {
	Op    string            `json:"op"`
	Name  string            `json:"name"`
	Port  int               `json:"port"`
	Addrs []string          `json:"addrs"`
	TXT   map[string]string `json:"txt"`
}

func nextPy(t *testing.T, p *proc, timeout time.Duration) pyEvent {
	t.Helper()
	line := p.expect("{", timeout)
	var ev pyEvent
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("bad python line %q: %v", line, err)
	}
	t.Logf("python-zeroconf: %s", line)
	return ev
}

func txtMap(r Record) map[string]string {
	m := map[string]string{}
	for _, kv := range r.TXT() {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// python-zeroconf browses and resolves our board with the right TXT, and
// sees Update as an update (no removal) and Stop as a removal.
func TestInteropPythonBrowsesUs(t *testing.T) {
	t.Parallel()
	requirePythonZeroconf(t)
	l := newLab(t)
	host, b1 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{})

	py := start(t, "python browse", host.NS, nil, debianPython, "-c", pyBrowse, host.IPv4.String())
	py.expect("ready", 10*time.Second)
	adv := helper(t, "advertise board1", b1.NS, "advertise", labIface, "board1", "7207", "boot-1")
	adv.expect("ready", 10*time.Second)

	const name = "board1._boardlink._tcp.local."
	ev := nextPy(t, py, 10*time.Second)
	if ev.Op != "added" || ev.Name != name {
		t.Fatalf("python saw %+v, want added %s", ev, name)
	}
	if want := txtMap(testRecord("board1", 7207, "boot-1")); !maps.Equal(ev.TXT, want) {
		t.Errorf("python TXT = %v, want %v", ev.TXT, want)
	}
	if ev.Port != 7207 || !slices.Contains(ev.Addrs, b1.IPv4.String()) {
		t.Errorf("python resolved port %d addrs %v, want 7207 and %s", ev.Port, ev.Addrs, b1.IPv4)
	}

	adv.send("update boot-2")
	adv.expect("updated", 5*time.Second)
	for {
		ev = nextPy(t, py, 10*time.Second)
		if ev.Op == "removed" {
			t.Fatalf("python saw a removal on Update: %+v", ev)
		}
		if ev.Op == "updated" && ev.TXT["boot"] == "boot-2" {
			break
		}
	}
	if want := txtMap(testRecord("board1", 7207, "boot-2")); !maps.Equal(ev.TXT, want) {
		t.Errorf("python TXT after update = %v, want %v", ev.TXT, want)
	}

	adv.send("stop")
	t0 := time.Now()
	adv.expect("stopped", 5*time.Second)
	for ev.Op != "removed" {
		ev = nextPy(t, py, 5*time.Second)
	}
	t.Logf("python-zeroconf saw the goodbye after %v", time.Since(t0).Round(time.Millisecond))
}

// Our browser sees a _boardlink._tcp service python-zeroconf registers,
// and its removal when python unregisters it.
func TestInteropWeBrowsePython(t *testing.T) {
	t.Parallel()
	requirePythonZeroconf(t)
	l := newLab(t)
	host, b1 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{})

	br := helper(t, "browse", host.NS, "browse", labIface, "udp")
	br.expect("ready", 10*time.Second)
	events := eventStream{br}

	txt := []string{"id=py1", "model=pyboard", "proto=1", "caps=exec,file", "ver=9.9", "boot=pyboot", "slot=b", "l.owner=python"}
	py := start(t, "python register", b1.NS, nil, append([]string{debianPython, "-c", pyRegister, b1.IPv4.String(), "py1", "9000"}, txt...)...)
	py.expect("ready", 15*time.Second)

	ev := events.waitFor(Added, "py1", 10*time.Second)
	want, err := ParseTXT(txt)
	if err != nil {
		t.Fatal(err)
	}
	got := ev.Record
	if !slices.Equal(got.TXT(), want.TXT()) {
		t.Errorf("TXT = %v, want %v", got.TXT(), want.TXT())
	}
	if wantAddr := fmt.Sprintf("ws://%s:9000", b1.IPv4); got.Address != wantAddr || got.Source != "mdns" || got.Port != 9000 {
		t.Errorf("address %q source %q port %d, want %s mdns 9000", got.Address, got.Source, got.Port, wantAddr)
	}

	_ = py.stdin.Close() // python unregisters: goodbye
	t0 := time.Now()
	ev = events.waitFor(Removed, "py1", 5*time.Second)
	t.Logf("removed %v after python's unregister", time.Unix(0, ev.At).Sub(t0).Round(time.Millisecond))
}
