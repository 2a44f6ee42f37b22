// Package linux is the A/B boot control of a real board: the slots are
// block devices, and the boot loader, U-Boot or GRUB, keeps its state in
// an environment that Linux edits with the boot loader's own tools
// (fw_printenv and fw_setenv for U-Boot, grub-editenv for GRUB). The boot
// loader's script implements the one-shot trial and the fall back; the
// variables and sample scripts are in docs/boot.md. The slot that runs is
// read from the kernel command line (boardlink.slot=A, or RAUC's
// rauc.slot=A), which the boot script sets.
//
// Board (Open) is the whole board for the agent (boardlinkd --board
// linux): its identity, kept in the state directory as on the sim board
// (board.LoadIdentity) and named at the first start after the machine id
// and what the device tree or DMI calls the board, its boot id and boot
// time from procfs, its BootControl (none on a board without A/B slots,
// which takes no updates), and its reboot, a command run once the agent
// has stopped.
package linux

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/board"
)

// Loader is a kind of boot loader.
type Loader string

// The boot loaders BootControl drives.
const (
	UBoot Loader = "uboot" // U-Boot with its environment and bootcount
	GRUB  Loader = "grub"  // GRUB with a grubenv file
)

// Defaults for zero Config fields.
const (
	DefaultUBootEnv = "/etc/fw_env.config" // where fw_setenv finds the U-Boot environment
	DefaultGRUBEnv  = "/boot/grub/grubenv"
	DefaultCmdline  = "/proc/cmdline"
)

// Config configures a BootControl.
type Config struct {
	// Loader is the boot loader: UBoot or GRUB.
	Loader Loader
	// Devices maps each slot, A and B, to its device (the block device
	// an image is written to), e.g. /dev/mmcblk0p2.
	Devices map[string]string
	// Env locates the boot loader's environment: for U-Boot the
	// fw_env.config file that names it (default /etc/fw_env.config), for
	// GRUB the grubenv file (default /boot/grub/grubenv).
	Env string
	// Cmdline is the kernel command line to read the booted slot from
	// (default /proc/cmdline).
	Cmdline string
}

// The tools, with the Debian package that has them.
var tools = map[string]string{
	"fw_printenv":  "libubootenv-tool",
	"fw_setenv":    "libubootenv-tool",
	"grub-editenv": "grub-common",
}

// writeTimeout bounds a write of the environment, which ctx does not
// interrupt once it has begun.
const writeTimeout = time.Minute

// BootControl is a board's A/B boot control (board.BootControl) through
// its boot loader's environment. Its methods are safe for concurrent use
// within a process; other writers of the environment are not excluded.
// Every change is one write of the environment; State runs the tool, and
// reads the command line, every time.
type BootControl struct {
	cfg Config
	env bootEnv

	mu sync.Mutex // serializes read-modify-write of the environment
}

var _ board.BootControl = (*BootControl)(nil)

// bootEnv is one boot loader's environment and variable convention.
type bootEnv interface {
	// read returns the environment's variables.
	read(ctx context.Context) (map[string]string, error)
	// write sets variables ("" unsets) in one durable write.
	write(ctx context.Context, vars []kv) error
	// state derives the boot state from the variables.
	state(vars map[string]string, booted string) (board.BootState, error)
	// The variables that make each change; nil for nothing to do.
	setTrial(slot string) []kv
	commit(booted string) []kv
	rollback(vars map[string]string, st board.BootState) []kv
}

// kv is one variable to set.
type kv struct{ k, v string }

// New returns the boot control cfg describes. It checks the settings and
// that the boot loader's tools are installed, and touches nothing.
func New(cfg Config) (*BootControl, error) {
	for _, s := range []string{board.SlotA, board.SlotB} {
		if cfg.Devices[s] == "" {
			return nil, fmt.Errorf("linux: slot %s: no device", s)
		}
	}
	if len(cfg.Devices) != 2 {
		return nil, fmt.Errorf("linux: devices %v: want slots A and B only", cfg.Devices)
	}
	if cfg.Devices[board.SlotA] == cfg.Devices[board.SlotB] {
		return nil, fmt.Errorf("linux: slots A and B are both %s", cfg.Devices[board.SlotA])
	}
	if cfg.Cmdline == "" {
		cfg.Cmdline = DefaultCmdline
	}
	var err error
	c := &BootControl{cfg: cfg}
	switch cfg.Loader {
	case UBoot:
		if cfg.Env == "" {
			cfg.Env = DefaultUBootEnv
		}
		u := &uboot{config: cfg.Env}
		if u.printenv, err = lookTool("fw_printenv"); err != nil {
			return nil, err
		}
		if u.setenv, err = lookTool("fw_setenv"); err != nil {
			return nil, err
		}
		c.env = u
	case GRUB:
		if cfg.Env == "" {
			cfg.Env = DefaultGRUBEnv
		}
		g := &grub{}
		// grub-editenv reads a FILE of "-" as the default grubenv.
		if g.file, err = filepath.Abs(cfg.Env); err != nil {
			return nil, fmt.Errorf("linux: grubenv %s: %w", cfg.Env, err)
		}
		if g.editenv, err = lookTool("grub-editenv"); err != nil {
			return nil, err
		}
		c.env = g
	default:
		return nil, fmt.Errorf("linux: boot loader %q: want %s or %s", cfg.Loader, UBoot, GRUB)
	}
	c.cfg = cfg
	return c, nil
}

// lookTool finds a tool, or says which package has it.
func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("linux: %w (Debian package %s)", err, tools[name])
	}
	return p, nil
}

// Slots returns A and B.
func (c *BootControl) Slots() []string { return []string{board.SlotA, board.SlotB} }

// SlotPath returns the slot's device.
func (c *BootControl) SlotPath(slot string) (string, error) {
	if !validSlot(slot) {
		return "", fmt.Errorf("linux: slot %q: %w", slot, board.ErrNoSlot)
	}
	return c.cfg.Devices[slot], nil
}

// State reads the environment and the kernel command line.
func (c *BootControl) State(ctx context.Context) (board.BootState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, _, err := c.stateLocked(ctx)
	if err != nil {
		return board.BootState{}, fmt.Errorf("linux: %w", err)
	}
	return st, nil
}

func (c *BootControl) stateLocked(ctx context.Context) (board.BootState, map[string]string, error) {
	booted, err := BootedSlot(c.cfg.Cmdline)
	if err != nil {
		return board.BootState{}, nil, err
	}
	vars, err := c.env.read(ctx)
	if err != nil {
		return board.BootState{}, nil, err
	}
	st, err := c.env.state(vars, booted)
	if err != nil {
		return board.BootState{}, nil, fmt.Errorf("%s environment %s: %w", c.cfg.Loader, c.cfg.Env, err)
	}
	return st, vars, nil
}

// SetTrial makes the next boot, and only that one, boot slot. It refuses
// the booted slot (it is running) and the active slot (the next boot is
// that one anyway): a trial is of the other slot, so during a trial boot
// every slot is refused (commit or roll back first).
func (c *BootControl) SetTrial(ctx context.Context, slot string) error {
	if !validSlot(slot) {
		return fmt.Errorf("linux: set trial: slot %q: %w", slot, board.ErrNoSlot)
	}
	return c.change(ctx, "set trial "+slot, func(vars map[string]string, st board.BootState) ([]kv, error) {
		switch slot {
		case st.Booted:
			return nil, fmt.Errorf("slot %s is the booted slot", slot)
		case st.Active:
			return nil, fmt.Errorf("slot %s is the active slot", slot)
		}
		return c.env.setTrial(slot), nil
	})
}

// Commit makes the booted slot Active and clears the trial.
func (c *BootControl) Commit(ctx context.Context) error {
	return c.change(ctx, "commit", func(vars map[string]string, st board.BootState) ([]kv, error) {
		return c.env.commit(st.Booted), nil
	})
}

// Rollback cancels a pending or running trial: the next boot is the
// Active slot.
func (c *BootControl) Rollback(ctx context.Context) error {
	return c.change(ctx, "rollback", func(vars map[string]string, st board.BootState) ([]kv, error) {
		return c.env.rollback(vars, st), nil
	})
}

// change reads the state, asks what to set, and writes it in one write
// unless every variable already has its value.
func (c *BootControl) change(ctx context.Context, what string, set func(map[string]string, board.BootState) ([]kv, error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, vars, err := c.stateLocked(ctx)
	if err != nil {
		return fmt.Errorf("linux: %s: %w", what, err)
	}
	todo, err := set(vars, st)
	if err != nil {
		return fmt.Errorf("linux: %s: %w", what, err)
	}
	changed := false
	for _, x := range todo {
		changed = changed || vars[x.k] != x.v
	}
	if !changed {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("linux: %s: %w", what, err)
	}
	// Once begun, a write is not interrupted: a half-written environment
	// is worse than a late answer.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	if err := c.env.write(wctx, todo); err != nil {
		return fmt.Errorf("linux: %s: %w", what, err)
	}
	return nil
}

func validSlot(s string) bool { return s == board.SlotA || s == board.SlotB }

// Kernel command line parameters that name the booted slot, the first
// winning over the second.
var cmdlineParams = []string{"boardlink.slot", "rauc.slot"}

// BootedSlot reads the slot that runs from a kernel command line file
// (/proc/cmdline): the value of boardlink.slot=, or else of rauc.slot=,
// A or B (a or b too); the last occurrence of a parameter counts, as it
// does for the kernel.
func BootedSlot(cmdline string) (string, error) {
	b, err := os.ReadFile(cmdline)
	if err != nil {
		return "", fmt.Errorf("booted slot: %w", err)
	}
	found := map[string]string{}
	for _, f := range strings.Fields(string(b)) {
		k, v, ok := strings.Cut(f, "=")
		if ok {
			found[k] = v
		}
	}
	for _, p := range cmdlineParams {
		v, ok := found[p]
		if !ok {
			continue
		}
		s := strings.ToUpper(strings.Trim(v, `"`))
		if !validSlot(s) {
			return "", fmt.Errorf("booted slot: %s: %s=%q is not a slot (A or B)", cmdline, p, v)
		}
		return s, nil
	}
	return "", fmt.Errorf("booted slot: %s: no %s= or %s= parameter: the boot script must name the slot it boots",
		cmdline, cmdlineParams[0], cmdlineParams[1])
}

// run runs a tool and returns its standard output; a failure says what
// ran and what the tool said.
func run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, tool, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return stdout.String(), nil
	}
	said := strings.TrimSpace(stderr.String())
	if said == "" {
		said = strings.TrimSpace(stdout.String())
	}
	line := filepath.Base(tool) + " " + strings.Join(args, " ")
	if said == "" {
		return "", fmt.Errorf("%s: %w", line, err)
	}
	return "", fmt.Errorf("%s: %w: %s", line, err, strings.Join(strings.Fields(said), " "))
}

// parseVars parses NAME=VALUE lines, as fw_printenv and grub-editenv list
// print them. A line without '=' continues the previous value (a U-Boot
// value may hold a newline) when continued is true, and is an error
// otherwise.
func parseVars(out string, continued bool) (map[string]string, error) {
	vars := map[string]string{}
	last := ""
	for line := range strings.Lines(out) {
		line = strings.TrimSuffix(line, "\n")
		k, v, ok := strings.Cut(line, "=")
		switch {
		case ok && k != "" && !strings.ContainsAny(k, " \t"):
			vars[k], last = v, k
		case continued && last != "":
			vars[last] += "\n" + line
		default:
			return nil, fmt.Errorf("unexpected output line %q", line)
		}
	}
	return vars, nil
}

// slotVar reads a slot variable: A or B, or def when unset.
func slotVar(vars map[string]string, name, def string) (string, error) {
	v, ok := vars[name]
	if !ok || v == "" {
		return def, nil
	}
	if !validSlot(v) {
		return "", fmt.Errorf("%s=%q is not a slot (A or B)", name, v)
	}
	return v, nil
}
