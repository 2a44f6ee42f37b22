package linux

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// The grubenv variables (docs/boot.md). grub.cfg boots trial_slot once
// when it is set and trial_booted is not, setting trial_booted=1 with
// save_env; when it finds trial_booted=1 it clears both and boots
// boot_slot.
const (
	grubSlot        = "boot_slot"    // A|B: the active slot; unset: A
	grubTrial       = "trial_slot"   // A|B: the slot to boot once; "" none
	grubTrialBooted = "trial_booted" // 1 once grub.cfg booted the trial
)

// grub is a grubenv file, through grub-editenv.
type grub struct {
	file    string // the grubenv, absolute
	editenv string // the tool
}

func (g *grub) read(ctx context.Context) (map[string]string, error) {
	// grub-editenv creates a missing file rather than fail: a grubenv
	// that is not there must not silently become an empty one.
	if _, err := os.Stat(g.file); err != nil {
		return nil, fmt.Errorf("grubenv: %w", err)
	}
	out, err := run(ctx, g.editenv, g.file, "list")
	if err != nil {
		return nil, fmt.Errorf("grubenv: %w", err)
	}
	vars, err := parseVars(out, false)
	if err != nil {
		return nil, fmt.Errorf("grubenv: grub-editenv %s list: %w", g.file, err)
	}
	return vars, nil
}

// write edits a copy of the grubenv with grub-editenv and renames it over
// the file: grub-editenv rewrites a file in place, which a power cut could
// leave empty; the rename leaves the old or the new one.
func (g *grub) write(ctx context.Context, vars []kv) error {
	cur, err := os.ReadFile(g.file)
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	fi, err := os.Stat(g.file)
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	dir, base := filepath.Split(g.file)
	tmp, err := os.CreateTemp(dir, "."+base+".edit-*")
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(cur)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	args := []string{tmp.Name(), "set"}
	for _, x := range vars {
		args = append(args, x.k+"="+x.v)
	}
	if _, err := run(ctx, g.editenv, args...); err != nil {
		return fmt.Errorf("grubenv %s: %w", g.file, err)
	}
	edited, err := os.ReadFile(tmp.Name())
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	if len(edited) != len(cur) {
		// GRUB's save_env rewrites the block in place: its size is fixed.
		return fmt.Errorf("grubenv %s: grub-editenv changed its size from %d to %d bytes", g.file, len(cur), len(edited))
	}
	if err := atomicfile.WriteFile(g.file, edited, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	return nil
}

// state: boot_slot is Active; trial_slot the trial, unless grub.cfg has
// booted it already (trial_booted=1) and another slot runs: that trial is
// spent, and the next boot clears it.
func (g *grub) state(vars map[string]string, booted string) (board.BootState, error) {
	active, err := slotVar(vars, grubSlot, board.SlotA)
	if err != nil {
		return board.BootState{}, err
	}
	trial, err := slotVar(vars, grubTrial, "")
	if err != nil {
		return board.BootState{}, err
	}
	tried := vars[grubTrialBooted]
	if tried != "" && tried != "1" {
		return board.BootState{}, fmt.Errorf("%s=%q: want 1 or nothing", grubTrialBooted, tried)
	}
	st := board.BootState{Booted: booted, Active: active, Trial: trial}
	if trial != "" && tried == "1" && booted != trial {
		st.Trial = ""
	}
	return st, nil
}

func (g *grub) setTrial(slot string) []kv {
	return []kv{{grubTrial, slot}, {grubTrialBooted, ""}}
}

func (g *grub) commit(booted string) []kv {
	return []kv{{grubSlot, booted}, {grubTrial, ""}, {grubTrialBooted, ""}}
}

func (g *grub) rollback(vars map[string]string, st board.BootState) []kv {
	return []kv{{grubTrial, ""}, {grubTrialBooted, ""}}
}
