package dispatcher_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
)

func TestSelector(t *testing.T) {
	sel, err := dispatcher.ParseSelector([]string{"model=imx8", "rack=r1", "empty="})
	if err != nil || sel.String() != "empty= model=imx8 rack=r1" {
		t.Fatalf("%v %v", sel, err)
	}
	for _, tc := range []struct {
		t    dispatcher.Target
		want bool
	}{
		{dispatcher.Target{Model: "imx8", Labels: map[string]string{"rack": "r1", "empty": ""}}, true},
		{dispatcher.Target{Model: "imx8", Labels: map[string]string{"rack": "r1"}}, false}, // a label must be there, even empty
		{dispatcher.Target{Model: "rpi", Labels: map[string]string{"rack": "r1", "empty": ""}}, false},
		{dispatcher.Target{Model: "imx8", Labels: map[string]string{"rack": "r2", "empty": ""}}, false},
	} {
		if got := sel.Match(tc.t); got != tc.want {
			t.Errorf("%v matches %+v: %v", sel, tc.t, got)
		}
	}
	if !(dispatcher.Selector{}).Match(dispatcher.Target{}) {
		t.Error("an empty selector refuses a board")
	}
	for _, bad := range []string{"model", "=x"} {
		if _, err := dispatcher.ParseSelector([]string{bad}); !errors.Is(err, dispatcher.ErrBadSelector) || !strings.Contains(err.Error(), bad) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestReadInventory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inv, err := dispatcher.ReadInventory(write("lab.json", `[{"id": "b1", "address": "wss://10.0.0.1:7207", "model": "imx8", "labels": {"rack": "r1"}}]`))
	if err != nil || len(inv) != 1 || inv[0].Labels["rack"] != "r1" || inv[0].Model != "imx8" {
		t.Fatalf("%+v %v", inv, err)
	}
	for name, body := range map[string]string{"garbage.json": "{", "noaddr.json": `[{"id": "b1"}]`, "noid.json": `[{"address": "ws://x"}]`} {
		if _, err := dispatcher.ReadInventory(write(name, body)); !errors.Is(err, dispatcher.ErrBadInventory) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := dispatcher.ReadInventory(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

// TestTargets: the inventory's boards and those discovery finds, the
// inventory's entry first for an id in both, filtered by the selector;
// discovery failing is an error only with nothing else to go on.
func TestTargets(t *testing.T) {
	ctx := context.Background()
	port := servePTY(t, "uart-board")
	inv := []dispatcher.Target{
		{ID: "rack-b", Address: "ws://10.0.0.2:7207", Model: "sim", Labels: map[string]string{"rack": "r1"}},
		{ID: "rack-a", Address: "ws://10.0.0.1:7207", Model: "imx8", Labels: map[string]string{"rack": "r1"}},
		{ID: "uart-board", Address: "ws://10.0.0.3:7207", Model: "sim"},
	}
	got, _, err := dispatcher.Targets(ctx, nil, inv, dispatcher.Selector{"rack": "r1"})
	if err != nil || len(got) != 2 || got[0].ID != "rack-a" || got[1].ID != "rack-b" {
		t.Fatalf("inventory only: %+v %v", got, err)
	}
	serial := &dispatcher.Resolver{NoMDNS: true, SerialPorts: []string{port}, Timeout: time.Minute}
	got, found, err := dispatcher.Targets(ctx, serial, inv[:2], dispatcher.Selector{"model": "sim"})
	if err != nil || len(got) != 2 || got[0].ID != "rack-b" || got[1].ID != "uart-board" ||
		!strings.HasPrefix(got[1].Address, "serial://") || len(found.Boards) != 1 {
		t.Fatalf("with discovery: %+v %+v %v", got, found, err)
	}
	got, _, err = dispatcher.Targets(ctx, serial, inv, dispatcher.Selector{"model": "sim"})
	if err != nil || len(got) != 2 || got[1].Address != "ws://10.0.0.3:7207" {
		t.Fatalf("the inventory's entry first: %+v %v", got, err)
	}
	broken := &dispatcher.Resolver{Ifaces: []string{"no-such-if0"}, NoSerial: true}
	if _, _, err := dispatcher.Targets(ctx, broken, nil, nil); err == nil || !strings.Contains(err.Error(), "no-such-if0") {
		t.Fatalf("discovery failed, no inventory: %v", err)
	}
	if got, _, err := dispatcher.Targets(ctx, broken, inv, nil); err != nil || len(got) != 3 {
		t.Fatalf("discovery failed, with an inventory: %+v %v", got, err)
	}
}
