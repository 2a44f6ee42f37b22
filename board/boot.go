package board

import (
	"context"
	"errors"
)

// Slot names of an A/B board.
const (
	SlotA = "A"
	SlotB = "B"
)

// Other returns the slot that is not s on an A/B board.
func Other(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// BootState is what the boot loader did and will do.
//
// After SetTrial(X) and a reboot, the boot loader boots X once: Booted is
// X, Active still the old slot, Trial X. Commit then makes X Active. If that
// boot ends without Commit (a failed health check that calls Rollback, a
// crash, a power cut), the next boot is Active again and Trial is cleared:
// the boot loader falls back by itself.
type BootState struct {
	Booted string `json:"booted"`          // the slot running now
	Active string `json:"active"`          // the slot booted by default: the committed one
	Trial  string `json:"trial,omitempty"` // the slot tried once at the next boot, or being tried now; "" none
}

// Trying reports whether this boot is a trial boot not yet committed.
func (s BootState) Trying() bool { return s.Trial != "" && s.Booted == s.Trial && s.Active != s.Trial }

// BootControl is the A/B boot loader as the OTA state machine drives it.
// Backends: board/sim (the sim board's supervisor is its boot loader) and
// board/linux (U-Boot or GRUB environments). Methods are safe for
// concurrent use; every change is durable when the call returns.
type BootControl interface {
	// Slots lists the slots, in order (A, B).
	Slots() []string
	// State reads the boot loader's state.
	State(ctx context.Context) (BootState, error)
	// SlotPath is where a slot's image lives: a block device, or on the
	// sim board a file.
	SlotPath(slot string) (string, error)
	// SetTrial makes the next boot, and only that one, boot slot.
	SetTrial(ctx context.Context, slot string) error
	// Commit makes the booted slot Active and clears the trial.
	Commit(ctx context.Context) error
	// Rollback cancels a pending or running trial: the next boot is the
	// Active slot.
	Rollback(ctx context.Context) error
}

// ErrNoSlot is wrapped by errors naming a slot the board does not have.
var ErrNoSlot = errors.New("no such slot")
