package linux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/boardlink/boardlink/board"
)

// Defaults of BoardConfig.
const (
	DefaultProc      = "/proc"
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
	// named after its host name (see DefaultID); a model must be stored
	// or given (board.ErrNoModel otherwise): it selects the images the
	// board accepts, and is not guessed.
	ID     string
	Model  string
	Labels map[string]string
	// Boot configures the A/B boot control (New).
	Boot Config
	// RebootCommand is the shell command (run as /bin/sh -c CMD) that
	// Reboot runs. "": "systemctl reboot" where systemd is the init
	// system, otherwise "reboot".
	RebootCommand string
	// Proc is where procfs is mounted (default /proc): the boot id, the
	// boot time and the host name come from it.
	Proc string
	// MachineID is the machine-id file (default /etc/machine-id), read
	// for a default id when the host name is no use.
	MachineID string
}

// Board is a real board running the agent: its identity, persisted in the
// state directory, this boot's id and start time from the kernel, its A/B
// boot control and its reboot. Its methods are safe for concurrent use.
type Board struct {
	dir      string
	identity board.Identity
	bootID   string
	bootedAt time.Time
	stat     string // PROC/stat, re-read by BootedAt
	boot     *BootControl
	reboot   []string
}

// Open opens the board: it checks the boot control's settings and tools
// (New), reads this boot's id and start time from procfs, and loads or
// creates the identity in cfg.Dir. It writes nothing but the identity.
func Open(cfg BoardConfig) (*Board, error) {
	if cfg.Dir == "" {
		return nil, errors.New("linux: state directory is required")
	}
	if cfg.Proc == "" {
		cfg.Proc = DefaultProc
	}
	if cfg.MachineID == "" {
		cfg.MachineID = DefaultMachineID
	}
	bc, err := New(cfg.Boot)
	if err != nil {
		return nil, err
	}
	b := &Board{dir: filepath.Clean(cfg.Dir), boot: bc, stat: filepath.Join(cfg.Proc, "stat")}
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
		DefaultID: func() (string, error) { return DefaultID(cfg.Proc, cfg.MachineID) }})
	if err != nil {
		return nil, fmt.Errorf("linux: %w", err)
	}
	return b, nil
}

// DefaultID is the id of a board that has none stored and was given none:
// its host name (PROC/sys/kernel/hostname), up to the first dot, when
// that is a valid board id other than "localhost"; otherwise "linux-"
// and the first 12 hex digits of the machine id. The host name comes
// first because it is how a lab names its boards, and the id is what
// people type (boardlink exec rpi4-7 ...) and what mDNS announces; the
// machine id is unique but unreadable, and a read-only image may ship
// one shared by every board flashed from it, or leave it to be made up
// anew at every boot. Open stores the result, so the id stays when an
// update brings another host name; boards flashed from one image that
// keep its host name need --id.
func DefaultID(proc, machineID string) (string, error) {
	host, herr := os.ReadFile(filepath.Join(proc, "sys", "kernel", "hostname"))
	if herr == nil {
		name, _, _ := strings.Cut(strings.TrimSpace(string(host)), ".")
		if name != "localhost" && (board.Identity{ID: name, Model: "m"}).Validate() == nil {
			return name, nil
		}
		herr = fmt.Errorf("host name %q is no board id", strings.TrimSpace(string(host)))
	}
	mid, merr := os.ReadFile(machineID)
	if merr == nil {
		s := strings.TrimSpace(string(mid))
		if len(s) >= 12 && isHex(s) {
			return "linux-" + s[:12], nil
		}
		merr = fmt.Errorf("machine id %s: %q is not one", machineID, s)
	}
	return "", fmt.Errorf("no default board id (%v; %v): give one", herr, merr)
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

// BootControl is the board's A/B boot control.
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
