// Package sim is a board that lives in a directory (the agent's state dir),
// so that a host, a test or QEMU-less CI can run the real agent. Identity
// and boot history persist across boots: each Open is one. Supervise is
// the board's bootloader, which runs every boot of the agent as a child
// process and boots again after a reboot or a power cut; UART is the
// board's serial line, which outlives its boots.
//
// The board has two slots, A and B, files under STATE_DIR/slots, and a
// boot environment, STATE_DIR/bootenv.json, which BootControl changes and
// the bootloader reads at each boot: a trial slot is booted once, and a
// trial boot that ends without Commit (a reboot, a crash, a power cut) is
// followed by a boot of the active slot.
package sim

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// Files under the state dir and their format versions.
const (
	identityFile   = board.IdentityFile // board.LoadIdentity keeps it
	identityFormat = board.IdentityFormat
	bootsFile      = "boots.json"
	bootsFormat    = 1
)

// DefaultModel is the model of a sim board when none was ever given.
const DefaultModel = "sim"

// MaxBoots bounds the boot history kept in boots.json.
const MaxBoots = 32

// Options seed or override the persisted identity. Empty fields keep what
// is stored; non-empty Labels replace the stored labels as a whole, so the
// command line states the full label set.
type Options struct {
	ID     string
	Model  string
	Labels map[string]string
	// Slot is the slot the boot loader booted (Handoff.Slot of a
	// supervised boot). Empty: there is no boot loader around, and Open
	// is its own, making the same decision Supervise makes (a pending
	// trial once, then a fall back).
	Slot string
}

// Boot is one start of the board.
type Boot struct {
	ID   string    `json:"id"`
	At   time.Time `json:"at"`
	Slot string    `json:"slot,omitempty"` // the slot booted
}

// Board is a simulated board. Open makes a new boot; a Board never changes
// afterwards, so its methods are safe for concurrent use.
type Board struct {
	dir      string
	identity board.Identity
	boots    []Boot // oldest first; the last one is this boot
	boot     *BootControl
}

// Open boots the board kept in dir, creating dir and a generated identity
// when needed. Each call is a new boot with a fresh boot id.
func Open(dir string, opts Options) (*Board, error) {
	if dir == "" {
		return nil, errors.New("sim: state directory is required")
	}
	dir = filepath.Clean(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	slot := opts.Slot
	if slot == "" {
		d, err := bootSlot(dir)
		if err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		slot = d.Slot
	}
	bc, err := NewBootControl(dir, slot)
	if err != nil {
		return nil, err
	}
	id, err := board.LoadIdentity(dir, board.IdentityOptions{ID: opts.ID, Model: opts.Model, Labels: opts.Labels,
		DefaultID: func() (string, error) { return "sim-" + randomHex(3), nil }, DefaultModel: DefaultModel})
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	boots, err := recordBoot(dir, Boot{ID: newBootID(), At: time.Now(), Slot: slot})
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	return &Board{dir: dir, identity: id, boots: boots, boot: bc}, nil
}

// recordBoot appends b to the persisted history and returns the history.
func recordBoot(dir string, b Boot) ([]Boot, error) {
	path := filepath.Join(dir, bootsFile)
	var boots []Boot
	if err := atomicfile.ReadJSON(path, bootsFormat, &boots); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("boot history: %w", err)
	}
	boots = append(boots, b)
	if len(boots) > MaxBoots {
		boots = boots[len(boots)-MaxBoots:]
	}
	if err := atomicfile.WriteJSON(path, bootsFormat, boots); err != nil {
		return nil, fmt.Errorf("boot history: %w", err)
	}
	return boots, nil
}

// newBootID returns a random version-4 UUID, the format of Linux's
// /proc/sys/kernel/random/boot_id, so both backends look alike.
func newBootID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Identity returns the board's identity; the caller may modify the copy.
func (b *Board) Identity() board.Identity { return b.identity.Clone() }

// BootID identifies this boot (this Open).
func (b *Board) BootID() string { return b.boots[len(b.boots)-1].ID }

// BootedAt is when this boot began.
func (b *Board) BootedAt() time.Time { return b.boots[len(b.boots)-1].At }

// Boots returns the most recent boots, oldest first, ending with this one.
func (b *Board) Boots() []Boot { return append([]Boot(nil), b.boots...) }

// Dir is the board's state directory.
func (b *Board) Dir() string { return b.dir }

// BootControl is the board's A/B boot control for this boot.
func (b *Board) BootControl() *BootControl { return b.boot }

// Slot is the slot this boot booted.
func (b *Board) Slot() string { return b.boot.Booted() }
