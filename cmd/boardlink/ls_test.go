package main

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

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
		rec := discovery.Record{ID: id, Model: "sim", Protocol: proto.Version, Capabilities: []string{"exec"}, Version: "test",
			BootID: "boot-" + id, Labels: map[string]string{"lab": "demo"}, Port: port, TLS: true, FP: d.agent.Fingerprint().Short()}
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
		!strings.HasSuffix(recs[0].Address, ":"+strconv.Itoa(port)) {
		t.Fatalf("ls found %+v", recs)
	}
	stdout, _, _ = cli(t, "", "ls", "--iface", "lo", "--no-serial")
	if !strings.Contains(stdout, "ADDRESS") || !strings.Contains(stdout, "demo-other") {
		t.Fatalf("table:\n%s", stdout)
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

// TestLsWatch: --watch --json prints one event per line as boards come,
// change and go.
func TestLsWatch(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testenv.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runWithStdin(ctx, strings.NewReader(""), []string{"ls", "--watch", "--json", "--iface", "lo", "--no-serial"}, &out, &out)
	}()
	a := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: []string{"lo"}})
	rec := discovery.Record{ID: "watched", Model: "sim", Protocol: 1, Version: "test", BootID: "boot-1", Port: 7207}
	if err := a.Start(ctx, rec); err != nil {
		t.Fatal(err)
	}
	rec.BootID = "boot-2" // as after a reboot
	waitLines(t, &out, 1)
	if err := a.Update(ctx, rec); err != nil {
		t.Fatal(err)
	}
	waitLines(t, &out, 2)
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	lines := waitLines(t, &out, 3)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []struct {
		op   discovery.Op
		boot string
	}{{discovery.Added, "boot-1"}, {discovery.Updated, "boot-2"}, {discovery.Removed, ""}}
	for i, w := range want {
		var ev discovery.Event
		if err := json.Unmarshal([]byte(lines[i]), &ev); err != nil {
			t.Fatalf("line %d %q: %v", i, lines[i], err)
		}
		if ev.Op != w.op || ev.Record.ID != "watched" || w.boot != "" && ev.Record.BootID != w.boot {
			t.Fatalf("line %d: %+v, want %s %s", i, ev, w.op, w.boot)
		}
	}
}

// waitLines waits until out holds n lines and returns them.
func waitLines(t *testing.T, out *testenv.Buffer, n int) []string {
	t.Helper()
	for {
		if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); out.String() != "" && len(lines) >= n {
			return lines
		}
		time.Sleep(20 * time.Millisecond)
	}
}
