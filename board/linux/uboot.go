package linux

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/boardlink/boardlink/board"
)

// The U-Boot environment's variables (docs/boot.md). U-Boot's bootcount
// feature (CONFIG_BOOTCOUNT_LIMIT with CONFIG_BOOTCOUNT_ENV) counts the
// boots while upgrade_available=1 and runs altbootcmd instead of bootcmd
// once bootcount exceeds bootlimit; altbootcmd switches boot_slot back.
const (
	ubootSlot    = "boot_slot"         // A|B: the slot bootcmd boots; unset: A
	ubootUpgrade = "upgrade_available" // 1 while a trial is pending or running
	ubootCount   = "bootcount"         // boots since the trial was set
	ubootLimit   = "bootlimit"         // 1: the trial boots once
)

// uboot is the U-Boot environment, through libubootenv's tools.
type uboot struct {
	config           string // fw_env.config
	printenv, setenv string // the tools
}

func (u *uboot) read(ctx context.Context) (map[string]string, error) {
	out, err := run(ctx, u.printenv, "-c", u.config)
	if err != nil {
		return nil, fmt.Errorf("u-boot environment: %w", err)
	}
	vars, err := parseVars(out, true)
	if err != nil {
		return nil, fmt.Errorf("u-boot environment: fw_printenv -c %s: %w", u.config, err)
	}
	return vars, nil
}

// write sets every variable in one fw_setenv run, with a script: one
// write of the environment. With a redundant environment (U-Boot's
// CONFIG_SYS_REDUNDAND_ENVIRONMENT, two lines in fw_env.config) a power
// cut during it leaves the previous copy; with a single copy it may
// leave none.
func (u *uboot) write(ctx context.Context, vars []kv) error {
	var script strings.Builder
	for _, x := range vars {
		if x.k == "" || strings.ContainsAny(x.k, "= \t\n") || strings.Contains(x.v, "\n") {
			return fmt.Errorf("u-boot environment: cannot set %q to %q", x.k, x.v)
		}
		fmt.Fprintf(&script, "%s=%s\n", x.k, x.v) // NAME= deletes NAME
	}
	f, err := os.CreateTemp("", "boardlink-fw_setenv-*")
	if err != nil {
		return fmt.Errorf("u-boot environment: script: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(script.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("u-boot environment: script: %w", err)
	}
	if _, err := run(ctx, u.setenv, "-c", u.config, "-s", f.Name()); err != nil {
		return fmt.Errorf("u-boot environment: %w", err)
	}
	return nil
}

// state: without upgrade_available=1, boot_slot is Active and there is no
// trial; with it, boot_slot is the trial slot and the other one Active.
// A trial whose boot is spent (bootcount past bootlimit, or counted while
// another slot runs: altbootcmd booted the other slot without clearing
// upgrade_available) is no trial any more.
func (u *uboot) state(vars map[string]string, booted string) (board.BootState, error) {
	slot, err := slotVar(vars, ubootSlot, board.SlotA)
	if err != nil {
		return board.BootState{}, err
	}
	switch vars[ubootUpgrade] {
	case "", "0":
		return board.BootState{Booted: booted, Active: slot}, nil
	case "1":
	default:
		return board.BootState{}, fmt.Errorf("%s=%q: want 0 or 1", ubootUpgrade, vars[ubootUpgrade])
	}
	count, err := uintVar(vars, ubootCount, 0)
	if err != nil {
		return board.BootState{}, err
	}
	limit, err := uintVar(vars, ubootLimit, 1)
	if err != nil {
		return board.BootState{}, err
	}
	st := board.BootState{Booted: booted, Active: board.Other(slot), Trial: slot}
	if count > limit || count > 0 && booted != slot {
		st.Trial = ""
	}
	return st, nil
}

func uintVar(vars map[string]string, name string, def uint64) (uint64, error) {
	v, ok := vars[name]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a count", name, v)
	}
	return n, nil
}

func (u *uboot) setTrial(slot string) []kv {
	return []kv{{ubootSlot, slot}, {ubootUpgrade, "1"}, {ubootCount, "0"}, {ubootLimit, "1"}}
}

func (u *uboot) commit(booted string) []kv {
	return []kv{{ubootSlot, booted}, {ubootUpgrade, "0"}, {ubootCount, "0"}}
}

func (u *uboot) rollback(vars map[string]string, st board.BootState) []kv {
	if vars[ubootUpgrade] != "1" {
		return nil // no trial
	}
	return []kv{{ubootSlot, st.Active}, {ubootUpgrade, "0"}, {ubootCount, "0"}}
}
