package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/internal/testenv"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"board-1":            "board-1",
		"Bänk 1 ✓":           "Bänk 1 ✓",
		"\x1b[31mRED\x1b[0m": `\x1b[31mRED\x1b[0m`,
		"a\nb\rc\td":         `a\nb\rc\td`,
		"raw\xff\xfe":        `raw\xff\xfe`,
		`back\slash`:         `back\\slash`,
		"zero\u200bwidth":    `zero\u200bwidth`,
		"\u009bC1":           `\u009bC1`,
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// A rollout's log for a board goes to BOARD.log in --log-dir, and a board
// id that is not a plain name (from an inventory, say: discovery refuses
// it) to a name made from its hash, never out of the directory.
func TestLogDirKeepsHostileIDsIn(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "logs")
	d := newRolloutDisplay(io.Discard, io.Discard, rolloutOptions{logDir: dir})
	for _, id := range []string{"lab-7", "../../escape", "/etc/passwd", "..", "a/../../b", ""} {
		d.logf(id, "hello from %q", id)
	}
	var names []string
	err := filepath.WalkDir(base, func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			names = append(names, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 6 {
		t.Fatalf("files %q, want 6 in %s", names, dir)
	}
	for _, n := range names {
		if strings.Contains(n, "..") || strings.Contains(n, "/") {
			t.Errorf("a log left the directory: %q", n)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "lab-7.log")); err != nil || !strings.Contains(string(b), `hello from "lab-7"`) {
		t.Errorf("lab-7.log: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rollout.log")); err != nil {
		t.Errorf("the rollout's own log: %v", err)
	}
}

// ls prints what a board announced with its control characters escaped
// in the table, and as they are in JSON.
func TestLsEscapes(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	ctx := context.Background()
	a := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: []string{"lo"}})
	rec := discovery.Record{ID: "painted", Model: "x\x1b[31mRED", Protocol: 4, Version: "v\n1", BootID: "b", Slot: "a\rb", Port: 7207}
	if err := a.Start(ctx, rec); err != nil {
		t.Fatal(err)
	}
	defer a.Stop(ctx)
	stdout, stderr, code := cli(t, "", "ls", "--iface", "lo", "--no-serial")
	if code != 0 || strings.ContainsAny(stdout, "\x1b\r") || !strings.Contains(stdout, `x\x1b[31mRED`) ||
		!strings.Contains(stdout, `a\rb`) || !strings.Contains(stdout, `v\n1`) {
		t.Fatalf("table: %d %q %q", code, stdout, stderr)
	}
	stdout, _, _ = cli(t, "", "ls", "--iface", "lo", "--no-serial", "--json")
	var recs []discovery.Record
	if err := json.Unmarshal([]byte(stdout), &recs); err != nil || len(recs) != 1 || recs[0].Model != rec.Model ||
		recs[0].Slot != rec.Slot || recs[0].Version != rec.Version {
		t.Fatalf("json: %v %+v", err, recs)
	}
}
