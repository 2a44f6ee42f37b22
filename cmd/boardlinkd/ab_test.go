package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestSimTrialBoots drives the real boardlinkd's A/B boot loader through
// the boot environment, as the OTA state machine will through
// board.BootControl: a trial boots once, falls back after a reboot or a
// power cut without commit, and stays after a commit.
func TestSimTrialBoots(t *testing.T) {
	bin := buildAgent(t)
	state := filepath.Join(t.TempDir(), "state")
	b := startBoard(t, bin, "--state-dir", state, "--listen", "127.0.0.1:0")
	url := b.addr(t)
	c, _ := dialBoot(t, url, b.opts(), "")
	defer func() { c.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()

	boot := 1
	// booted waits for boot n to report its slots.
	booted := func(slot, active, trial string) {
		t.Helper()
		const line = `msg="boardlinkd started" version=`
		want := fmt.Sprintf(`boot=%d slot=%s active=%s trial=%s`, boot, slot, active, trial)
		testenv.Eventually(t, "boot "+want, func() bool {
			for l := range strings.Lines(b.logs.String()) {
				if strings.Contains(l, line) && strings.Contains(l, want) {
					return true
				}
			}
			return false
		})
	}
	// control is what the agent of the running boot would use.
	control := func(slot string) *sim.BootControl {
		t.Helper()
		bc, err := sim.NewBootControl(state, slot)
		if err != nil {
			t.Fatal(err)
		}
		return bc
	}
	reboot := func() {
		t.Helper()
		if _, err := c.RebootWait(ctx, dispatcher.WaitOptions{}); err != nil {
			t.Fatalf("reboot after boot %d: %v", boot, err)
		}
		boot++
	}
	fellBack := func(trial string) int {
		return strings.Count(b.logs.String(), `msg="sim: trial boot not committed: falling back" boot=`+fmt.Sprint(boot)+" trial="+trial)
	}

	booted("A", "A", `""`)
	if err := control("A").SetTrial(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	reboot()
	booted("B", "A", "B") // the trial boot
	reboot()              // without commit
	booted("A", "A", `""`)
	if fellBack("B") != 1 {
		t.Errorf("boot %d: no fall back logged", boot)
	}

	if err := control("A").SetTrial(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	reboot()
	booted("B", "A", "B")
	if err := control("B").Commit(ctx); err != nil {
		t.Fatal(err)
	}
	reboot()
	booted("B", "B", `""`)

	// A power cut during the trial boot of A.
	if err := control("B").SetTrial(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	reboot()
	booted("A", "B", "A")
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(agentPID(t, c), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c, _ = dialBoot(t, url, b.opts(), info.BootID)
	boot++
	booted("B", "B", `""`)
	if fellBack("A") != 1 {
		t.Errorf("boot %d: no fall back logged after the power cut", boot)
	}
}
