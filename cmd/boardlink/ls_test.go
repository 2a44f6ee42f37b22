package main

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/internal/testenv"
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
		rec := discovery.Record{ID: id, Model: "sim", Protocol: 1, Capabilities: []string{"exec"}, Version: "test",
			BootID: "boot-" + id, Labels: map[string]string{"lab": "demo"}, Port: port}
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
