package linux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/boardlink/boardlink/board"
)

// Defaults of BoardConfig.
const (
	DefaultProc      = "/proc"
	DefaultSys       = "/sys"
	DefaultMachineID = "/etc/machine-id"
	// systemdRunDir exists while systemd is the init system (sd_booted).
	systemdRunDir = "/run/systemd/system"
)

// BoardConfig configures Open.
type BoardConfig struct {
	// Dir is the agent's state directory; the identity is kept in it
	// (board.IdentityFile), as on the sim board. Required.
	Dir string
	// ID, Model and Labels seed or override the stored identity
	// (board.IdentityOptions). Without a stored or given ID the board is
	// named after its machine id (see DefaultID); without a stored or
	// given model, after what its firmware calls it (see DefaultModel),
	// and when that says nothing Open fails with board.ErrNoModel: the
	// model selects the images the board accepts.
	ID     string
	Model  string
	Labels map[string]string
	// Boot configures the A/B boot control (New); nil for a board
	// without A/B slots, which runs commands, moves files and reboots
	// but takes no updates.
	Boot *Config
	// RebootCommand is the shell command (run as /bin/sh -c CMD) that
	// Reboot runs. "": "systemctl reboot" where systemd is the init
	// system, otherwise "reboot".
	RebootCommand string
	// Proc is where procfs is mounted (default /proc): the boot id, the
	// boot time, the host name and the device tree come from it.
	Proc string
	// Sys is where sysfs is mounted (default /sys): the device tree and
	// DMI, for a default model.
	Sys string
	// MachineID is the machine-id file (default /etc/machine-id), read
	// for a default id.
	MachineID string
}

// Board is a real board running the agent: its identity, persisted in the
// state directory, this boot's id and start time from the kernel, its A/B
// boot control if it has slots, and its reboot. Its methods are safe for
// concurrent use.
type Board struct {
	dir      string
	identity board.Identity
	bootID   string
	bootedAt time.Time
	stat     string       // PROC/stat, re-read by BootedAt
	boot     *BootControl // nil without A/B slots
	reboot   []string
}

// Open opens the board: it checks the boot control's settings and tools
// (New) if it has slots, reads this boot's id and start time from procfs,
// and loads or creates the identity in cfg.Dir. It writes nothing but
// the identity.
func Open(cfg BoardConfig) (*Board, error) {
	if cfg.Dir == "" {
		return nil, errors.New("linux: state directory is required")
	}
	if cfg.Proc == "" {
		cfg.Proc = DefaultProc
	}
	if cfg.Sys == "" {
		cfg.Sys = DefaultSys
	}
	if cfg.MachineID == "" {
		cfg.MachineID = DefaultMachineID
	}
	b := &Board{dir: filepath.Clean(cfg.Dir), stat: filepath.Join(cfg.Proc, "stat")}
	var err error
	if cfg.Boot != nil {
		if b.boot, err = New(*cfg.Boot); err != nil {
			return nil, err
		}
	}
	if b.reboot, err = rebootArgv(cfg.RebootCommand); err != nil {
		return nil, err
	}
	if b.bootID, err = readBootID(cfg.Proc); err != nil {
		return nil, err
	}
	if b.bootedAt, err = readBootTime(b.stat); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return nil, fmt.Errorf("linux: %w", err)
	}
	b.identity, err = board.LoadIdentity(b.dir, board.IdentityOptions{ID: cfg.ID, Model: cfg.Model, Labels: cfg.Labels,
		DefaultID: func() (string, error) { return DefaultID(cfg.Proc, cfg.MachineID) }, DefaultModel: DefaultModel(cfg.Proc, cfg.Sys)})
	if errors.Is(err, board.ErrNoModel) {
		return nil, fmt.Errorf("linux: %w, and neither the device tree nor DMI names one (%s)", err, strings.Join(modelFiles(cfg.Proc, cfg.Sys), ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("linux: %w", err)
	}
	return b, nil
}

// DefaultID is the id of a board that has none stored and was given none:
// "linux-" and the first 12 hex digits of its machine id, else its host
// name (PROC/sys/kernel/hostname) up to the first dot, when that is a
// valid board id other than "localhost". The machine id comes first
// because it is made anew on every installed system, where the host name
// is the image's own: every board flashed from a stock image (a Raspberry
// Pi's "raspberrypi") would announce the same id. A system without one
// (no systemd, or "uninitialized" on a read-only image) falls back to its
// host name. Open stores the result, so the id stays when the machine id
// or the host name changes later; --id names a board as people want to
// type it (boardlink exec rpi4-7 ...).
func DefaultID(proc, machineID string) (string, error) {
	mid, merr := os.ReadFile(machineID)
	if merr == nil {
		s := strings.TrimSpace(string(mid))
		if len(s) >= 12 && isHex(s) {
			return "linux-" + s[:12], nil
		}
		merr = fmt.Errorf("machine id %s: %q is not one", machineID, s)
	}
	host, herr := os.ReadFile(filepath.Join(proc, "sys", "kernel", "hostname"))
	if herr == nil {
		name, _, _ := strings.Cut(strings.TrimSpace(string(host)), ".")
		if name != "localhost" && (board.Identity{ID: name, Model: "m"}).Validate() == nil {
			return name, nil
		}
		herr = fmt.Errorf("host name %q is no board id", strings.TrimSpace(string(host)))
	}
	return "", fmt.Errorf("no default board id (%v; %v): give one", merr, herr)
}

// modelFiles are where DefaultModel looks, in order: the device tree's
// model (procfs's link to it first, then sysfs's own copy), then DMI's
// product and board names, which PCs and VMs fill.
func modelFiles(proc, sys string) []string {
	return []string{
		filepath.Join(proc, "device-tree", "model"),
		filepath.Join(sys, "firmware", "devicetree", "base", "model"),
		filepath.Join(sys, "class", "dmi", "id", "product_name"),
		filepath.Join(sys, "class", "dmi", "id", "board_name"),
	}
}

// dmiPlaceholders are what firmware leaves in DMI names nobody filled
// in: they name no model, so DefaultModel looks further.
var dmiPlaceholders = []string{"to be filled by o.e.m.", "system product name", "default string", "not applicable",
	"not specified", "none", "n/a"}

// DefaultModel is the model of a board that has none stored and was
// given none: the first of modelFiles that holds a valid model (the
// device tree's string ends in a NUL, which is dropped), or "" when none
// does. It is what the firmware calls the board, e.g. "Raspberry Pi 4
// Model B Rev 1.4" or "Standard PC (Q35 + ICH9, 2009)", so images built
// for it must name the same; --model names it otherwise.
func DefaultModel(proc, sys string) string {
	for _, path := range modelFiles(proc, sys) {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		m := strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
		if m == "" || slices.Contains(dmiPlaceholders, strings.ToLower(m)) {
			continue
		}
		if (board.Identity{ID: "x", Model: m}).Validate() == nil {
			return m
		}
	}
	return ""
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// readBootID reads the kernel's id of this boot, a random UUID made at
// every boot.
func readBootID(proc string) (string, error) {
	path := filepath.Join(proc, "sys", "kernel", "random", "boot_id")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("linux: boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("linux: boot id: %s is empty", path)
	}
	return id, nil
}

// readBootTime reads when the system booted: btime of /proc/stat, in
// seconds since the epoch. The kernel derives it from the wall clock, so
// it follows when the clock is set (by NTP on a board without an RTC).
func readBootTime(stat string) (time.Time, error) {
	b, err := os.ReadFile(stat)
	if err != nil {
		return time.Time{}, fmt.Errorf("linux: boot time: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		v, ok := strings.CutPrefix(line, "btime ")
		if !ok {
			continue
		}
		sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("linux: boot time: %s: btime %q: %w", stat, strings.TrimSpace(v), err)
		}
		return time.Unix(sec, 0), nil
	}
	return time.Time{}, fmt.Errorf("linux: boot time: %s has no btime line", stat)
}

// rebootArgv is what Reboot runs: cmd with /bin/sh -c, or the default.
func rebootArgv(cmd string) ([]string, error) {
	if cmd != "" {
		if strings.TrimSpace(cmd) == "" {
			return nil, errors.New("linux: reboot command: an empty command")
		}
		return []string{"/bin/sh", "-c", cmd}, nil
	}
	if fi, err := os.Stat(systemdRunDir); err == nil && fi.IsDir() {
		if p, err := exec.LookPath("systemctl"); err == nil {
			return []string{p, "reboot"}, nil
		}
	}
	p, err := exec.LookPath("reboot")
	if err != nil {
		return nil, fmt.Errorf("linux: reboot command: neither systemctl (with systemd running) nor reboot found: %w", err)
	}
	return []string{p}, nil
}

// Identity returns the board's identity; the caller may modify the copy.
func (b *Board) Identity() board.Identity { return b.identity.Clone() }

// BootID identifies this boot: the kernel's boot_id.
func (b *Board) BootID() string { return b.bootID }

// BootedAt is when this boot began, read again at every call (the clock
// may have been set since); what Open read if that fails.
func (b *Board) BootedAt() time.Time {
	if t, err := readBootTime(b.stat); err == nil {
		return t
	}
	return b.bootedAt
}

// Dir is the board's state directory.
func (b *Board) Dir() string { return b.dir }

// BootControl is the board's A/B boot control; nil for a board without
// A/B slots.
func (b *Board) BootControl() *BootControl { return b.boot }

// RebootCommand is the command Reboot runs, as argv.
func (b *Board) RebootCommand() []string { return append([]string(nil), b.reboot...) }

// Reboot runs the reboot command and returns once it has exited: the
// reboot has begun (systemctl reboot and reboot return while the system
// goes down). The caller stops its own work first. A command that fails
// is an error saying what ran and what it said.
func (b *Board) Reboot(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, b.reboot[0], b.reboot[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		said := strings.Join(strings.Fields(out.String()), " ")
		if said != "" {
			return fmt.Errorf("linux: reboot: %s: %w: %s", strings.Join(b.reboot, " "), err, said)
		}
		return fmt.Errorf("linux: reboot: %s: %w", strings.Join(b.reboot, " "), err)
	}
	return nil
}
