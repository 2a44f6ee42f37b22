package sim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// The sim board's A/B slots and boot environment, under the state dir.
const (
	// bootEnvFile is the boot environment: what the boot loader (the
	// supervisor) reads at each boot and the agent changes through
	// BootControl. A missing file is a fresh board: slot A, no trial.
	bootEnvFile   = "bootenv.json"
	bootEnvFormat = 1
	// slotsDir holds one image file per slot, SLOT.img.
	slotsDir = "slots"
)

// bootEnv is the sim board's boot environment, bootenv.json.
type bootEnv struct {
	// Active is the slot booted by default: the committed one.
	Active string `json:"active"`
	// Trial is the slot to boot once, or being booted once; "" none.
	Trial string `json:"trial,omitempty"`
	// TrialBooted says the boot loader has booted Trial already: if a
	// boot finds it set, the trial boot ended without Commit.
	TrialBooted bool `json:"trial_booted,omitempty"`
	// Booted is the slot the boot loader chose for the current (or
	// last) boot.
	Booted string `json:"booted"`
}

// freshBootEnv is the boot environment of a board that never had one.
var freshBootEnv = bootEnv{Active: board.SlotA, Booted: board.SlotA}

func validSlot(s string) bool { return s == board.SlotA || s == board.SlotB }

func (e bootEnv) validate() error {
	if !validSlot(e.Active) {
		return fmt.Errorf("active slot %q is not A or B", e.Active)
	}
	if !validSlot(e.Booted) {
		return fmt.Errorf("booted slot %q is not A or B", e.Booted)
	}
	if e.Trial != "" && !validSlot(e.Trial) {
		return fmt.Errorf("trial slot %q is not A or B", e.Trial)
	}
	if e.Trial == "" && e.TrialBooted {
		return errors.New("trial_booted is set without a trial slot")
	}
	return nil
}

// bootDecision is the boot loader's choice for one boot.
type bootDecision struct {
	Slot string // the slot to boot
	// FellBack names the trial slot whose trial boot ended without
	// Commit, so that this boot falls back to Slot; "" otherwise.
	FellBack string
	Trial    bool // this boot is the trial boot of Slot
}

// next is the boot loader's decision at a boot: a pending trial is booted
// once and marked as booted; a trial found booted already was not
// committed, so it is cleared and Active booted; otherwise Active.
func (e bootEnv) next() (bootEnv, bootDecision) {
	var d bootDecision
	switch {
	case e.Trial != "" && !e.TrialBooted:
		e.TrialBooted = true
		d.Slot, d.Trial = e.Trial, true
	case e.Trial != "":
		d.FellBack = e.Trial
		e.Trial, e.TrialBooted = "", false
		d.Slot = e.Active
	default:
		d.Slot = e.Active
	}
	e.Booted = d.Slot
	return e, d
}

// readBootEnv reads dir's boot environment; a missing file is a fresh one.
func readBootEnv(dir string) (bootEnv, error) {
	var e bootEnv
	err := atomicfile.ReadJSON(filepath.Join(dir, bootEnvFile), bootEnvFormat, &e)
	if errors.Is(err, fs.ErrNotExist) {
		return freshBootEnv, nil
	}
	if err != nil {
		return bootEnv{}, fmt.Errorf("boot environment: %w", err)
	}
	if err := e.validate(); err != nil {
		return bootEnv{}, fmt.Errorf("boot environment %s: %w", filepath.Join(dir, bootEnvFile), err)
	}
	return e, nil
}

func writeBootEnv(dir string, e bootEnv) error {
	if err := atomicfile.WriteJSON(filepath.Join(dir, bootEnvFile), bootEnvFormat, e); err != nil {
		return fmt.Errorf("boot environment: %w", err)
	}
	return nil
}

// bootSlot is the boot loader's work at each boot of the board kept in
// dir: it reads the boot environment, decides which slot this boot runs
// and persists the decision before it returns, so that the boot it starts
// finds it and a power cut at any moment leaves a truthful environment.
// Nothing is written when nothing changes (a fresh board stays without a
// bootenv.json until a trial is set).
func bootSlot(dir string) (bootDecision, error) {
	e, err := readBootEnv(dir)
	if err != nil {
		return bootDecision{}, err
	}
	next, d := e.next()
	if next != e {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return bootDecision{}, fmt.Errorf("boot environment: %w", err)
		}
		if err := writeBootEnv(dir, next); err != nil {
			return bootDecision{}, err
		}
	}
	return d, nil
}

// BootControl is the sim board's boot control (board.BootControl), as a
// boot of the board sees it: Booted is fixed for its life, the rest lives
// in the state dir's bootenv.json, which the boot loader (Supervise with
// SupervisorConfig.Dir, or Open for an unsupervised board) reads at each
// boot. Its methods are safe for concurrent use; use one BootControl per
// state dir in a process, as the boot loader writes only between boots.
type BootControl struct {
	dir    string
	booted string

	mu sync.Mutex // serializes read-modify-write of bootenv.json
}

var _ board.BootControl = (*BootControl)(nil)

// NewBootControl returns the boot control of the board kept in dir for a
// boot that booted slot booted (A or B). It touches no file.
func NewBootControl(dir, booted string) (*BootControl, error) {
	if dir == "" {
		return nil, errors.New("sim: state directory is required")
	}
	if !validSlot(booted) {
		return nil, fmt.Errorf("sim: booted slot %q: %w", booted, board.ErrNoSlot)
	}
	return &BootControl{dir: filepath.Clean(dir), booted: booted}, nil
}

// Slots returns A and B.
func (c *BootControl) Slots() []string { return []string{board.SlotA, board.SlotB} }

// Booted is the slot this boot runs.
func (c *BootControl) Booted() string { return c.booted }

// State reads the boot environment.
func (c *BootControl) State(ctx context.Context) (board.BootState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, err := readBootEnv(c.dir)
	if err != nil {
		return board.BootState{}, fmt.Errorf("sim: %w", err)
	}
	return c.stateOf(e), nil
}

func (c *BootControl) stateOf(e bootEnv) board.BootState {
	return board.BootState{Booted: c.booted, Active: e.Active, Trial: e.Trial}
}

// SlotPath returns STATE_DIR/slots/SLOT.img, creating the slots directory
// (not the file) the first time: a slot that was never written, such as
// a fresh board's A, has no file, and its image is empty.
func (c *BootControl) SlotPath(slot string) (string, error) {
	if !validSlot(slot) {
		return "", fmt.Errorf("sim: slot %q: %w", slot, board.ErrNoSlot)
	}
	dir := filepath.Join(c.dir, slotsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("sim: slot %s: %w", slot, err)
	}
	return filepath.Join(dir, slot+".img"), nil
}

// SetTrial makes the next boot, and only that one, boot slot. It refuses
// the booted slot (its image is running) and the active slot (the next
// boot is that one anyway): a trial is of the other slot, which also
// means that it refuses any slot during a trial boot (commit or roll back
// first).
func (c *BootControl) SetTrial(ctx context.Context, slot string) error {
	if !validSlot(slot) {
		return fmt.Errorf("sim: set trial: slot %q: %w", slot, board.ErrNoSlot)
	}
	return c.update(func(e *bootEnv) error {
		switch slot {
		case c.booted:
			return fmt.Errorf("sim: set trial: slot %s is the booted slot", slot)
		case e.Active:
			return fmt.Errorf("sim: set trial: slot %s is the active slot", slot)
		}
		e.Trial, e.TrialBooted = slot, false
		return nil
	})
}

// Commit makes the booted slot Active and clears the trial.
func (c *BootControl) Commit(ctx context.Context) error {
	return c.update(func(e *bootEnv) error {
		e.Active, e.Trial, e.TrialBooted = c.booted, "", false
		return nil
	})
}

// Rollback clears a pending or running trial: the next boot is Active.
func (c *BootControl) Rollback(ctx context.Context) error {
	return c.update(func(e *bootEnv) error {
		e.Trial, e.TrialBooted = "", false
		return nil
	})
}

// update applies change to the boot environment and writes it when it
// changed.
func (c *BootControl) update(change func(*bootEnv) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, err := readBootEnv(c.dir)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	next := e
	if err := change(&next); err != nil {
		return err
	}
	if next == e {
		return nil
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("sim: boot environment: %w", err)
	}
	if err := writeBootEnv(c.dir, next); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	return nil
}
