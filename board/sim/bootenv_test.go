package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// TestBootEnvStateMachine drives the boot environment alone: the agent's
// calls and the bootloader's decision at each boot ("boot": a reboot;
// "cut": a power cut, which the bootloader cannot tell from a reboot).
func TestBootEnvStateMachine(t *testing.T) {
	type step struct {
		do   string // "trial X", "commit", "rollback", "boot", "cut"
		want board.BootState
		// trying is what want.Trying() must say (checked as documentation)
		trying   bool
		fellBack string // boot, cut: the trial the boot fell back from
		err      string // the call fails with this; the state is unchanged
	}
	st := func(booted, active, trial string) board.BootState {
		return board.BootState{Booted: booted, Active: active, Trial: trial}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"fresh board boots A", []step{
			{do: "boot", want: st("A", "A", "")},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"a trial not committed falls back", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "boot", want: st("A", "A", ""), fellBack: "B"},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"commit makes the trial active", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "commit", want: st("B", "B", "")},
			{do: "boot", want: st("B", "B", "")},
			{do: "trial A", want: st("B", "B", "A")},
			{do: "cut", want: st("A", "B", "A"), trying: true}, // a trial set is durable
			{do: "commit", want: st("A", "A", "")},
			{do: "cut", want: st("A", "A", "")},
		}},
		{"power cut during the trial boot falls back", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "cut", want: st("A", "A", ""), fellBack: "B"},
		}},
		{"rollback during the trial boot", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "rollback", want: st("B", "A", "")},
			{do: "trial A", want: st("B", "A", ""), err: "active slot"},
			{do: "trial B", want: st("B", "A", ""), err: "booted slot"},
			{do: "boot", want: st("A", "A", "")}, // no trial left: no fall back
		}},
		{"rollback of a pending trial", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "trial B", want: st("A", "A", "B")}, // again: the same
			{do: "rollback", want: st("A", "A", "")},
			{do: "rollback", want: st("A", "A", "")},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"commit with a trial pending cancels it", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "commit", want: st("A", "A", "")},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"set trial refuses", []step{
			{do: "trial A", want: st("A", "A", ""), err: "booted slot"},
			{do: "trial C", want: st("A", "A", ""), err: "no such slot"},
			{do: "trial ", want: st("A", "A", ""), err: "no such slot"},
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "trial A", want: st("B", "A", "B"), trying: true, err: "active slot"},
			{do: "trial B", want: st("B", "A", "B"), trying: true, err: "booted slot"},
		}},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			bc, err := NewBootControl(dir, board.SlotA) // the first boot of a fresh board
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				var d bootDecision
				switch verb, arg, _ := strings.Cut(s.do, " "); verb {
				case "trial":
					err = bc.SetTrial(ctx, arg)
				case "commit":
					err = bc.Commit(ctx)
				case "rollback":
					err = bc.Rollback(ctx)
				case "boot", "cut":
					if d, err = bootSlot(dir); err == nil {
						bc, err = NewBootControl(dir, d.Slot)
					}
				default:
					t.Fatalf("step %d: unknown step %q", i, s.do)
				}
				if s.err == "" && err != nil || s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)) {
					t.Fatalf("step %d %q: error %v, want %q", i, s.do, err, s.err)
				}
				if s.err == "no such slot" && !errors.Is(err, board.ErrNoSlot) {
					t.Errorf("step %d %q: %v does not wrap board.ErrNoSlot", i, s.do, err)
				}
				if d.FellBack != s.fellBack {
					t.Errorf("step %d %q: fell back from %q, want %q", i, s.do, d.FellBack, s.fellBack)
				}
				got, err := bc.State(ctx)
				if err != nil {
					t.Fatalf("step %d %q: State: %v", i, s.do, err)
				}
				if got != s.want || got.Trying() != s.trying {
					t.Fatalf("step %d %q: state %+v (trying %v), want %+v (trying %v)", i, s.do, got, got.Trying(), s.want, s.trying)
				}
				// What the next boot's bootloader reads is what State said.
				e, err := readBootEnv(dir)
				if err != nil || e.Active != got.Active || e.Trial != got.Trial || e.Booted != got.Booted {
					t.Fatalf("step %d %q: bootenv.json %+v, %v; state %+v", i, s.do, e, err, got)
				}
			}
		})
	}
}

func TestBootEnvFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bc, err := NewBootControl(dir, board.SlotA)
	if err != nil {
		t.Fatal(err)
	}
	// A fresh board has no boot environment, and reading it writes none.
	if st, err := bc.State(ctx); err != nil || st != (board.BootState{Booted: "A", Active: "A"}) {
		t.Fatalf("fresh State = %+v, %v", st, err)
	}
	if d, err := bootSlot(dir); err != nil || d != (bootDecision{Slot: "A"}) {
		t.Fatalf("fresh boot = %+v, %v", d, err)
	}
	if _, err := os.Stat(filepath.Join(dir, bootEnvFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a fresh board wrote its boot environment: %v", err)
	}
	if err := bc.SetTrial(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	if _, err := bootSlot(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, bootEnvFile))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Format int            `json:"format"`
		Data   map[string]any `json:"data"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"active": "A", "trial": "B", "trial_booted": true, "booted": "B"}
	if file.Format != 1 || fmt.Sprint(file.Data) != fmt.Sprint(want) {
		t.Fatalf("bootenv.json = %s, want format 1 and data %v", b, want)
	}

	for _, tc := range []struct {
		name, content, want string
	}{
		{"corrupt", "{", "not a versioned JSON file"},
		{"newer format", `{"format": 2, "data": {}}`, "unsupported format version 2"},
		{"bad slot", `{"format": 1, "data": {"active": "C", "booted": "A"}}`, `active slot "C"`},
		{"no booted", `{"format": 1, "data": {"active": "A"}}`, `booted slot ""`},
		{"bad trial", `{"format": 1, "data": {"active": "A", "booted": "A", "trial": "a"}}`, `trial slot "a"`},
		{"booted without trial", `{"format": 1, "data": {"active": "A", "booted": "A", "trial_booted": true}}`, "without a trial"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, bootEnvFile), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			bc, _ := NewBootControl(dir, board.SlotA)
			if _, err := bc.State(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("State: %v, want %q", err, tc.want)
			}
			if err := bc.Commit(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Commit: %v, want %q", err, tc.want)
			}
			if _, err := bootSlot(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("boot: %v, want %q", err, tc.want)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, bootEnvFile)); string(got) != tc.content {
				t.Errorf("the bad boot environment was replaced by %s", got)
			}
		})
	}
}

func TestSlotPath(t *testing.T) {
	dir := t.TempDir()
	bc, err := NewBootControl(dir, "B")
	if err != nil {
		t.Fatal(err)
	}
	if got := bc.Slots(); len(got) != 2 || got[0] != "A" || got[1] != "B" {
		t.Errorf("Slots = %v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, slotsDir)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("NewBootControl created the slots dir: %v", err)
	}
	for _, slot := range []string{"A", "B"} {
		p, err := bc.SlotPath(slot)
		if err != nil || p != filepath.Join(dir, "slots", slot+".img") {
			t.Fatalf("SlotPath(%s) = %q, %v", slot, p, err)
		}
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("SlotPath(%s) created the image file: %v", slot, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, slotsDir)); err != nil || !fi.IsDir() {
		t.Errorf("the slots dir was not created: %v", err)
	}
	for _, bad := range []string{"", "C", "a", "../A"} {
		if _, err := bc.SlotPath(bad); !errors.Is(err, board.ErrNoSlot) {
			t.Errorf("SlotPath(%q) = %v, want ErrNoSlot", bad, err)
		}
	}
	if _, err := NewBootControl(dir, "C"); !errors.Is(err, board.ErrNoSlot) {
		t.Errorf("NewBootControl booted C: %v, want ErrNoSlot", err)
	}
}

// TestOpenIsItsOwnBootloader: an Open without a slot (no supervisor
// around) makes the bootloader's decision; with one, it takes it.
func TestOpenIsItsOwnBootloader(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Slot() != "A" {
		t.Fatalf("fresh board booted %s", b.Slot())
	}
	if err := b.BootControl().SetTrial(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	var slots []string
	for range 3 {
		if b, err = Open(dir, Options{}); err != nil {
			t.Fatal(err)
		}
		slots = append(slots, b.Slot())
	}
	if got := strings.Join(slots, ","); got != "B,A,A" {
		t.Errorf("boots after a trial was set booted %s, want B,A,A", got)
	}
	if b, err = Open(dir, Options{Slot: "B"}); err != nil || b.Slot() != "B" {
		t.Fatalf("Open with slot B: %v, %v", b, err)
	}
	var boots []Boot
	if err := atomicfile.ReadJSON(filepath.Join(dir, bootsFile), bootsFormat, &boots); err != nil {
		t.Fatal(err)
	}
	var history []string
	for _, bt := range boots {
		history = append(history, bt.Slot)
	}
	if got := strings.Join(history, ","); got != "A,B,A,A,B" {
		t.Errorf("boots.json slots %s, want A,B,A,A,B", got)
	}
	if _, err := Open(dir, Options{Slot: "C"}); !errors.Is(err, board.ErrNoSlot) {
		t.Errorf("Open with slot C: %v", err)
	}
}

// TestSuperviseIsTheABBootloader runs real boots: each acts out its word
// (see fakeBoot) and reports the slot it was handed and its BootState.
func TestSuperviseIsTheABBootloader(t *testing.T) {
	const fallback = "sim-boot: trial of slot B was not committed: falling back to A\r\n"
	tests := []struct {
		name, script string
		boots        []string // "slot active trial" as each boot saw it
		active       string   // at the end
		fallback     int      // the boot that falls back, 0 none
	}{
		{"reboot without commit falls back", "trial,reboot,off",
			[]string{`A A ""`, `B A "B"`, `A A ""`}, "A", 3},
		{"commit", "trial,commit,reboot,off",
			[]string{`A A ""`, `B A "B"`, `B B ""`, `B B ""`}, "B", 0},
		{"power cut during the trial falls back", "trial,kill,off",
			[]string{`A A ""`, `B A "B"`, `A A ""`}, "A", 3},
		{"rollback", "trial,rollback,off",
			[]string{`A A ""`, `B A "B"`, `A A ""`}, "A", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &supervised{dir: t.TempDir()}
			if err := Supervise(context.Background(), s.config(t, tt.script)); err != nil {
				t.Fatalf("Supervise: %v\n%s", err, s.logs.String())
			}
			if s.boots != len(tt.boots) {
				t.Fatalf("%d boots, want %d:\n%s", s.boots, len(tt.boots), s.logs.String())
			}
			logs := s.logs.String()
			for i, want := range tt.boots {
				f := strings.Fields(want)
				line := fmt.Sprintf("boot %d: slot %s active %s trial %s\n", i+1, f[0], f[1], f[2])
				if !strings.Contains(logs, line) {
					t.Errorf("boot %d did not report %q:\n%s", i+1, line, logs)
				}
			}
			waitFor(t, &s.console, "uart of boot "+fmt.Sprint(len(tt.boots)))
			con := strings.Split(s.console.String(), "\r\nsim-boot: boot ")[1:]
			if len(con) != len(tt.boots) {
				t.Fatalf("console shows %d boots, want %d:\n%q", len(con), len(tt.boots), s.console.String())
			}
			for i, c := range con {
				n := i + 1
				slot := strings.Fields(tt.boots[i])[0]
				want := fmt.Sprintf("%d, booting boardlinkd\r\n", n)
				if n == tt.fallback {
					want += fallback
				}
				want += "sim-boot: booting slot " + slot
				if n == 2 {
					want += " (trial, once)"
				}
				want += "\r\n[    0.000000] sim: starting the agent\r\n"
				if !strings.HasPrefix(c, want) {
					t.Errorf("boot %d: console starts %q, want %q", n, c, want)
				}
			}
			if got := strings.Count(s.console.String(), "falling back"); got != min(tt.fallback, 1) {
				t.Errorf("%d fall backs on the console", got)
			}
			e, err := readBootEnv(s.dir)
			if err != nil || e != (bootEnv{Active: tt.active, Booted: strings.Fields(tt.boots[len(tt.boots)-1])[0]}) {
				t.Errorf("bootenv.json at the end: %+v, %v; want active %s, no trial", e, err, tt.active)
			}
		})
	}
}

func TestSuperviseRefusesABadBootEnv(t *testing.T) {
	s := &supervised{dir: t.TempDir()}
	if err := os.WriteFile(filepath.Join(s.dir, bootEnvFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Supervise(context.Background(), s.config(t, "off"))
	if err == nil || !strings.Contains(err.Error(), "boot 1: boot environment") {
		t.Fatalf("Supervise = %v, want a boot environment error", err)
	}
}
