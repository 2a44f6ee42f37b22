package discovery

// The real `boardlink ls` in the lab: on a loaded host, against other
// mDNS stacks (Debian's avahi-daemon, python3-zeroconf), and against
// records that lie.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// cliRun runs `boardlink ARGS` in namespace ns and returns its stdout and
// stderr.
func cliRun(t *testing.T, cli, ns string, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, cli}, args...)...)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("boardlink %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// lsIDs runs one `boardlink ls --json` and returns the boards by id.
func lsIDs(t *testing.T, cli, ns string) (map[string]Record, string) {
	t.Helper()
	out, errs := cliRun(t, cli, ns, "ls", "--json", "--no-serial", "--iface", labIface)
	var recs []Record
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	byID := map[string]Record{}
	for _, r := range recs {
		byID[r.ID] = r
	}
	return byID, errs
}

// 60 agents, each its own process, on a host whose CPUs are kept busy:
// 20 one-shot `boardlink ls` in a row, with the default --timeout, each
// list every board.
func TestLabLoadedLs(t *testing.T) {
	testenv.Long(t)
	const boards, runs = 60, 20
	l := newLab(t)
	host, nd := l.addNode("host", nodeOpts{}), l.addNode("boards", nodeOpts{})
	cli := testenv.GoBuild(t, "../cmd/boardlink")
	var ads []*proc
	for i := range boards {
		ads = append(ads, helper(t, fmt.Sprintf("agent %d", i), nd.NS, "advertise", labIface, fmt.Sprintf("loaded-%02d", i), fmt.Sprint(7000+i), "boot-1"))
	}
	for _, a := range ads {
		a.expect("ready", 30*time.Second)
	}
	for i := range 2 { // one hog per CPU of the test machine, where the agents are
		start(t, fmt.Sprintf("hog %d", i), nd.NS, nil, "sh", "-c", "while :; do :; done")
	}
	for run := range runs {
		got, _ := lsIDs(t, cli, host.NS)
		var missing []string
		for i := range boards {
			id := fmt.Sprintf("loaded-%02d", i)
			if r, ok := got[id]; !ok || r.Address != fmt.Sprintf("ws://%s:%d", nd.IPv4, 7000+i) {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			t.Fatalf("run %d of %d: %d of %d boards listed; missing %v", run+1, runs, len(got), boards, missing)
		}
	}
	t.Logf("%d runs of ls listed all %d boards", runs, boards)
}

// avahi runs Debian's avahi-daemon in a namespace, on a D-Bus of its own
// (and a /run of its own, where it keeps its pid file), and returns the
// environment that avahi-publish needs to reach it.
func avahi(t testing.TB, nd *node) []string {
	t.Helper()
	for _, bin := range []string{"avahi-daemon", "avahi-publish", "dbus-daemon"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.SkipOrFail(t, "no %s (Debian packages avahi-daemon, avahi-utils, dbus-daemon): %v", bin, err)
		}
	}
	dir := t.TempDir()
	bus := filepath.Join(dir, "bus")
	conf := `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=` + bus + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`
	daemon := `[server]
allow-interfaces=` + labIface + `
use-ipv4=yes
use-ipv6=yes
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
`
	for name, body := range map[string]string{"dbus.conf": conf, "avahi-daemon.conf": daemon} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start(t, "dbus-daemon", nd.NS, nil, "dbus-daemon", "--nofork", "--config-file", filepath.Join(dir, "dbus.conf"))
	testenv.Eventually(t, "the private D-Bus socket", func() bool { _, err := os.Stat(bus); return err == nil })
	env := []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + bus}
	d := start(t, "avahi-daemon", nd.NS, env, "sh", "-c",
		`mount -t tmpfs tmpfs /run && mkdir -p /run/avahi-daemon && exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$0"`,
		filepath.Join(dir, "avahi-daemon.conf"))
	testenv.Eventually(t, "avahi-daemon's startup", func() bool {
		select {
		case <-d.exit:
			t.Fatalf("avahi-daemon exited: %s", d.errs.String())
		default:
		}
		return strings.Contains(d.errs.String(), "Server startup complete")
	})
	return env
}

// avahiPublish publishes a service with avahi-publish and waits until
// avahi says it is established (probed and announced).
func avahiPublish(t testing.TB, nd *node, env []string, name string, port int, txt ...string) *proc {
	t.Helper()
	p := start(t, "avahi-publish "+name, nd.NS, env, append([]string{"avahi-publish", "-s", name, Service, fmt.Sprint(port)}, txt...)...)
	testenv.Eventually(t, "avahi-publish "+name+" to say Established (on stderr)", func() bool {
		select {
		case <-p.exit:
			t.Fatalf("avahi-publish %s exited: %s", name, p.errs.String())
		default:
		}
		return strings.Contains(p.errs.String(), "Established")
	})
	return p
}

// Services that Debian's avahi-daemon publishes right before a one-shot
// `boardlink ls` are listed every time; a burst of 8 at once shows up in
// `ls --watch` with an address on every "added"; an impostor (an
// instance name its TXT id does not match) and a hostile id are refused
// and said so, the real board keeps its row; control characters in a
// TXT value are escaped in the table and kept as they are in JSON.
func TestLabAvahi(t *testing.T) {
	testenv.Long(t)
	l := newLab(t)
	host, pub, other := l.addNode("host", nodeOpts{}), l.addNode("avahi", nodeOpts{}), l.addNode("real", nodeOpts{})
	cli := testenv.GoBuild(t, "../cmd/boardlink")
	env := avahi(t, pub)
	txt := func(id string) []string {
		return []string{"id=" + id, "model=avahi", "proto=4", "caps=exec", "ver=1", "boot=b-" + id}
	}

	t.Run("published right before ls", func(t *testing.T) {
		for i := range 5 {
			id := fmt.Sprintf("av-%d", i)
			p := avahiPublish(t, pub, env, id, 9000+i, txt(id)...)
			got, _ := lsIDs(t, cli, host.NS)
			if r, ok := got[id]; !ok || r.Address != fmt.Sprintf("ws://%s:%d", pub.IPv4, 9000+i) {
				t.Fatalf("run %d: %s not listed right after avahi published it: %+v", i, id, got)
			}
			p.kill()
		}
	})

	t.Run("a burst of 8", func(t *testing.T) {
		w := start(t, "ls --watch", host.NS, []string{"XDG_CACHE_HOME=" + t.TempDir()}, cli, "ls", "--watch", "--json", "--no-serial", "--iface", labIface)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				id := fmt.Sprintf("burst-%d", i)
				start(t, "avahi-publish "+id, pub.NS, env, append([]string{"avahi-publish", "-s", id, Service, fmt.Sprint(9100 + i)}, txt(id)...)...)
			})
		}
		wg.Wait()
		seen := map[string]bool{}
		for len(seen) < 8 {
			line := w.expect("{", 20*time.Second)
			var ev Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if ev.Op == Added && ev.Record.Address == "" {
				t.Fatalf("added without an address: %s", line)
			}
			if ev.Op == Added && strings.HasPrefix(ev.Record.ID, "burst-") {
				seen[ev.Record.ID] = true
			}
		}
	})

	t.Run("impostor, hostile id, control characters", func(t *testing.T) {
		adv := helper(t, "advertise board-2", other.NS, "advertise", labIface, "board-2", "7207", "boot-1")
		adv.expect("ready", 10*time.Second)
		avahiPublish(t, pub, env, "pub-mismatch", 17454, "id=board-2", "model=impostor", "proto=3")
		avahiPublish(t, pub, env, "../../escape", 17455, "id=../../escape", "model=x", "proto=4")
		avahiPublish(t, pub, env, "painted", 17456, "id=painted", "model=x\x1b[31mRED", "proto=4", "slot=a\nb")
		got, stderr := lsIDs(t, cli, host.NS)
		if r := got["board-2"]; r.Address != fmt.Sprintf("ws://%s:7207", other.IPv4) || r.Model != "sim" || len(r.Conflict) != 0 {
			t.Errorf("board-2 = %+v", r)
		}
		if _, ok := got["../../escape"]; ok {
			t.Error("the hostile id was listed")
		}
		if got["painted"].Model != "x\x1b[31mRED" || got["painted"].Slot != "a\nb" {
			t.Errorf("JSON changed the TXT values: %+v", got["painted"])
		}
		for _, want := range []string{`ignored an mDNS record "pub-mismatch" from ` + pub.IPv4.String() + `: its TXT claims id "board-2"`,
			`ignored an mDNS record "../../escape"`} {
			if !strings.Contains(stderr, want) {
				t.Errorf("ls does not say %q:\n%s", want, stderr)
			}
		}
		table, _ := cliRun(t, cli, host.NS, "ls", "--no-serial", "--iface", labIface)
		if strings.ContainsAny(table, "\x1b\r") || !strings.Contains(table, `x\x1b[31mRED`) || !strings.Contains(table, `a\nb`) {
			t.Errorf("the table does not escape control characters:\n%q", table)
		}
		if n := strings.Count(table, "\nboard-2 "); n != 1 {
			t.Errorf("board-2 has %d rows:\n%s", n, table)
		}
	})
}

// Two boards announcing one id (cloned images) are one row marked as a
// conflict, with both addresses, and a warning; JSON has both addresses.
func TestLabDuplicateID(t *testing.T) {
	testenv.Long(t)
	l := newLab(t)
	host, b1, b2 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{}), l.addNode("b2", nodeOpts{})
	cli := testenv.GoBuild(t, "../cmd/boardlink")
	for _, nd := range []*node{b1, b2} {
		helper(t, "advertise twin", nd.NS, "advertise", labIface, "twin", "7300", "boot-1").expect("ready", 10*time.Second)
	}
	want := []string{fmt.Sprintf("ws://%s:7300", b1.IPv4), fmt.Sprintf("ws://%s:7300", b2.IPv4)}
	got, stderr := lsIDs(t, cli, host.NS)
	if !slices.Equal(got["twin"].Conflict, want) {
		t.Errorf("twin = %+v, want a conflict between %v", got["twin"], want)
	}
	if warn := "2 boards announce the id twin: " + strings.Join(want, ", "); !strings.Contains(stderr, warn) {
		t.Errorf("ls does not say %q:\n%s", warn, stderr)
	}
	table, _ := cliRun(t, cli, host.NS, "ls", "--no-serial", "--iface", labIface)
	if strings.Count(table, "\ntwin ") != 1 || !strings.Contains(table, "(conflict: 2 boards)") {
		t.Errorf("the table does not mark the conflict:\n%s", table)
	}
}

// A service that python-zeroconf registers right before a one-shot
// `boardlink ls` is listed every time.
func TestLabPythonBeforeLs(t *testing.T) {
	testenv.Long(t)
	requirePythonZeroconf(t)
	l := newLab(t)
	host, b1 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{})
	cli := testenv.GoBuild(t, "../cmd/boardlink")
	for i := range 5 {
		id := fmt.Sprintf("py-%d", i)
		py := start(t, "python register "+id, b1.NS, nil, debianPython, "-c", pyRegister, b1.IPv4.String(), id, fmt.Sprint(9000+i),
			"id="+id, "model=py", "proto=4", "caps=exec", "ver=1", "boot=b")
		py.expect("ready", 15*time.Second)
		got, errs := lsIDs(t, cli, host.NS)
		if r, ok := got[id]; !ok || r.Address != fmt.Sprintf("ws://%s:%d", b1.IPv4, 9000+i) {
			t.Fatalf("run %d: %s not listed right after python registered it: %v\n%s", i, id, slices.Collect(maps.Keys(got)), errs)
		}
		py.close(t)
	}
}
