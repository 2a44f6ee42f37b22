package discovery

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/proto"
)

// buildBinaries builds boardlinkd and boardlink for the lab, once per test.
func buildBinaries(t *testing.T) (agent, cli string) {
	t.Helper()
	return testenv.GoBuild(t, "../cmd/boardlinkd"), testenv.GoBuild(t, "../cmd/boardlink")
}

// The real agent in board namespaces, the browser in the host namespace:
// added with the right TXT, reachable by id with the real CLI, updated
// after an agent restart (a new boot id), updated once after a `boardlink
// reboot` it announced, removed after a clean stop and after SIGKILL (the
// times are logged). TestLabAddUpdateRemove
// walks the same events with helper processes in every run.
func TestLabRealAgents(t *testing.T) {
	testenv.Long(t) // builds and runs the real binaries
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	l := newLab(t)
	host, b1, b2 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{}), l.addNode("b2", nodeOpts{})
	agentBin, cliBin := buildBinaries(t)
	br := helper(t, "browse", host.NS, "browse", labIface, "udp")
	br.expect("ready", 10*time.Second)
	events := eventStream{br}

	state := map[string]string{"board1": t.TempDir(), "board2": t.TempDir()}
	const token = "the-lab-token-0123456789"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	startAgent := func(id string, nd *node) *proc {
		return start(t, "agent "+id, nd.NS, nil, agentBin, "--board", "sim", "--state-dir", state[id], "--listen", nd.IPv4.String()+":7207",
			"--token-file", tokenFile, "--root", root,
			"--iface", labIface, "--id", id, "--model", "imx8", "--label", "rack="+id[len(id)-1:])
	}
	a1, a2 := startAgent("board1", b1), startAgent("board2", b2)
	added := collectAdded(t, events, 15*time.Second, "board1", "board2")
	for id, nd := range map[string]*node{"board1": b1, "board2": b2} {
		r := added[id].Record
		want := Record{ID: id, Model: "imx8", Protocol: proto.Version,
			Capabilities: []string{proto.CapExec, proto.CapExecDetach, proto.CapTCP, proto.CapFile, proto.CapDownload, proto.CapFrames, proto.CapReboot, proto.CapOTA, proto.CapPair},
			Version:      version.Version, BootID: r.BootID, Slot: "A", Labels: map[string]string{"rack": id[len(id)-1:]}, Port: 7207,
			FP: r.FP, TLS: true}
		checkBoard(t, r, want, fmt.Sprintf("wss://%s:7207", nd.IPv4))
		if _, err := auth.ParseFingerprint(r.FP); err != nil {
			t.Errorf("%s announced fp %q: %v", id, r.FP, err)
		}
		if r.BootID == "" {
			t.Errorf("%s announced no boot id", id)
		}
	}

	// Zero configuration: the CLI in the host namespace finds board1 by id.
	cli := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", host.NS, cliBin}, args...)...)
		cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir(), "BOARDLINK_TOKEN="+token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := cli("exec", "--iface", labIface, "board1", "--", "sh", "-c", "echo found by id"); err != nil || !strings.Contains(out, "found by id") {
		t.Fatalf("boardlink exec board1: %v\n%s", err, out)
	}

	// Restart without a goodbye: the new boot is one Updated.
	oldBoot := added["board2"].Record.BootID
	a2.kill()
	<-a2.exit
	a2 = startAgent("board2", b2)
	ev := events.next(15 * time.Second)
	if ev.Op != Updated || ev.Record.ID != "board2" || ev.Record.BootID == oldBoot {
		t.Fatalf("after restart: %s %s boot %s (was %s), want updated with a new boot id", ev.Op, ev.Record.ID, ev.Record.BootID, oldBoot)
	}

	// A reboot: the agent announces it rather than saying goodbye (the
	// sim board's supervisor boots it again at once; TestLabAnnouncedReboot
	// shows a reboot longer than a removal), and the next boot is one
	// Updated.
	oldBoot = added["board1"].Record.BootID
	if out, err := cli("reboot", "--iface", labIface, "board1"); err != nil {
		t.Fatalf("boardlink reboot board1: %v\n%s", err, out)
	}
	ev = events.next(eventGuard)
	if ev.Op != Updated || ev.Record.ID != "board1" || ev.Record.BootID == oldBoot {
		t.Fatalf("after reboot: %s %s boot %s (was %s), want updated with a new boot id", ev.Op, ev.Record.ID, ev.Record.BootID, oldBoot)
	}
	if !strings.Contains(a1.errs.String(), `msg="mdns: announced a reboot"`) {
		t.Errorf("board1 did not announce its reboot:\n%s", a1.errs.String())
	}

	// Clean stop: goodbye.
	t0 := time.Now()
	if err := a1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ev = events.next(eventGuard)
	took := time.Unix(0, ev.At).Sub(t0)
	if ev.Op != Removed || ev.Record.ID != "board1" {
		t.Fatalf("after SIGTERM: %s %s after %v, want removed board1", ev.Op, ev.Record.ID, took)
	}
	t.Logf("board1 removed %v after SIGTERM", took.Round(time.Millisecond))

	// SIGKILL: no goodbye; board2 is asked when its heartbeat is late, and
	// removed.
	t0 = time.Now()
	a2.kill()
	ev = events.next(eventGuard)
	took = time.Unix(0, ev.At).Sub(t0)
	if ev.Op != Removed || ev.Record.ID != "board2" {
		t.Fatalf("after SIGKILL: %s %s after %v, want removed board2", ev.Op, ev.Record.ID, took)
	}
	t.Logf("board2 removed %v after SIGKILL", took.Round(time.Millisecond))
}
