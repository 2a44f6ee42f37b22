package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// TestLsAndBoardIDs: boards announced over mDNS on lo are listed, and a
// board id (or a unique prefix) works wherever BOARD is taken.
func TestLsAndBoardIDs(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	d := startBoard(t)
	port := d.ws.Addr().(*net.TCPAddr).Port
	ctx := context.Background()
	for _, id := range []string{"demo-board", "demo-other"} {
		a := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: []string{"lo"}})
		rec := discovery.Record{ID: id, Model: "sim", Protocol: proto.Version, Capabilities: []string{"exec"}, Version: "agent-9.9",
			BootID: "boot-" + id, Slot: "b", SlotVersion: "image-" + id, Labels: map[string]string{"lab": "demo"}, Port: port, TLS: true,
			FP: d.agent.Fingerprint().Short()}
		if err := a.Start(ctx, rec); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Stop(context.Background()) })
	}
	stdout, stderr, code := cli(t, "", "ls", "--iface", "lo", "--no-serial", "--json")
	var recs []discovery.Record
	if err := json.Unmarshal([]byte(stdout), &recs); err != nil || code != 0 {
		t.Fatalf("ls: %d %v %s %s", code, err, stdout, stderr)
	}
	if len(recs) != 2 || recs[0].ID != "demo-board" || recs[0].Labels["lab"] != "demo" ||
		recs[0].SlotVersion != "image-demo-board" || recs[0].Version != "agent-9.9" ||
		!strings.HasSuffix(recs[0].Address, ":"+strconv.Itoa(port)) {
		t.Fatalf("ls found %+v", recs)
	}
	// What ls saw completes a board argument, before any session with it.
	if stdout, _, _ := cli(t, "", "__complete", "exec", "demo-o"); !strings.HasPrefix(stdout, "demo-other\n") {
		t.Fatalf("exec demo-o<TAB> after ls: %q", stdout)
	}
	stdout, stderr, _ = cli(t, "", "ls", "--iface", "lo", "--no-serial")
	lines := strings.Split(stdout, "\n")
	if !regexp.MustCompile(`^ID +MODEL +VERSION +SLOT +AGENT +ADDRESS +AGE$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^demo-other +sim +image-demo-other +b +agent-9.9 +wss://`).MatchString(lines[2]) ||
		!strings.Contains(stderr, "2 boards answered within 2s (mDNS on lo)") {
		t.Fatalf("table:\n%s\nstderr: %s", stdout, stderr)
	}
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"exec", "--iface", "lo", "demo-board", "--", "echo", "by id"}, 0, "by id\n", ""},
		{[]string{"exec", "--iface", "lo", "demo-b", "--", "echo", "by prefix"}, 0, "by prefix\n", ""},
		{[]string{"exec", "--iface", "lo", "demo-board", "--", "echo", "cached"}, 0, "cached\n", ""},
		{[]string{"exec", "--iface", "lo", "demo", "--", "true"}, 2, "", "ambiguous"},
		{[]string{"exec", "--iface", "lo", "nope", "--", "true"}, 2, "", "boards seen: demo-board, demo-other"},
	}
	for _, tc := range tests {
		stdout, stderr, code := cli(t, "", tc.args...)
		if code != tc.code || stdout != tc.stdout || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("%v: got %d %q %q, want %d %q %q", tc.args, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
}

// TestLsWithoutInterface: without --iface, mDNS leaves lo out, and with
// no other interface it hears nothing: ls and a board id say so rather
// than answer nothing without a word.
func TestLsWithoutInterface(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	const warning = "boardlink: warning: mDNS had no usable network interface, so no board on the network could answer (lo: loopback, used only when named); name one with --iface (--iface lo for boards on this host)\n"
	stdout, stderr, code := cli(t, "", "ls", "--no-serial", "--json")
	if code != 0 || strings.TrimSpace(stdout) != "[]" || stderr != warning {
		t.Fatalf("ls --json: %d %q %q", code, stdout, stderr)
	}
	stdout, stderr, code = cli(t, "", "ls", "--no-serial")
	if code != 0 || !strings.HasPrefix(stdout, "ID ") || stderr != warning+"0 boards answered within 2s (mDNS on no usable interface)\n" {
		t.Fatalf("ls: %d %q %q", code, stdout, stderr)
	}
	_, stderr, code = cli(t, "", "info", "lab-7")
	if code != 2 || !strings.Contains(stderr, `unknown board "lab-7": no board answered within 2s (mDNS on no usable interface, and serial ports; check --iface`) {
		t.Fatalf("info lab-7: %d %q", code, stderr)
	}
}

// TestLsWatch: --watch --json prints one event per line as boards come,
// change and go.
func TestLsWatch(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, w := io.Pipe()
	var stderr testenv.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runWithStdin(ctx, strings.NewReader(""), []string{"ls", "--watch", "--json", "--iface", "lo", "--no-serial"}, w, &stderr)
		w.Close()
	}()
	lines := bufio.NewScanner(out)
	next := func(op discovery.Op, boot string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("the watch ended: %v %s", lines.Err(), stderr.String())
		}
		var ev discovery.Event
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", lines.Bytes(), err)
		}
		if ev.Op != op || ev.Record.ID != "watched" || boot != "" && ev.Record.BootID != boot {
			t.Fatalf("got %+v, want %s %s", ev, op, boot)
		}
	}
	a := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: []string{"lo"}})
	rec := discovery.Record{ID: "watched", Model: "sim", Protocol: 1, Version: "test", BootID: "boot-1", Port: 7207}
	if err := a.Start(ctx, rec); err != nil {
		t.Fatal(err)
	}
	next(discovery.Added, "boot-1")
	rec.BootID = "boot-2" // as after a reboot
	if err := a.Update(ctx, rec); err != nil {
		t.Fatal(err)
	}
	next(discovery.Updated, "boot-2")
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	next(discovery.Removed, "")
	go io.Copy(io.Discard, out) // whatever else comes, until the watch ends
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
