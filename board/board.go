package board

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/boardlink/boardlink/internal/atomicfile"
)

// Identity is how a board is named and selected: ID is unique in a lab
// (it is the mDNS instance name), Model selects compatible images, Labels
// are free-form selectors (k=v).
type Identity struct {
	ID     string            `json:"id"`
	Model  string            `json:"model"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Clone returns a copy that shares no map with id.
func (id Identity) Clone() Identity {
	id.Labels = maps.Clone(id.Labels)
	return id
}

// Limits from DNS-SD: an instance name is one DNS label (63 bytes) and each
// TXT entry (here "l.KEY=VALUE" or "model=MODEL") is at most 255 bytes.
const (
	maxIDLen   = 63
	maxTXTLen  = 255
	maxModel   = maxTXTLen - len("model=")
	labelExtra = len("l.=")
)

// Validate checks that id can be announced and selected. The ID is limited
// to letters, digits, '-', '_' and '.' so that it is a clean mDNS instance
// name and never looks like the URLs the CLI accepts in its place.
func (id Identity) Validate() error {
	if id.ID == "" || len(id.ID) > maxIDLen {
		return fmt.Errorf("board id %q: must be 1 to %d bytes", id.ID, maxIDLen)
	}
	for _, r := range id.ID {
		if r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("board id %q: only letters, digits, '-', '_' and '.' are allowed", id.ID)
		}
	}
	if id.Model == "" || len(id.Model) > maxModel || !printable(id.Model) {
		return fmt.Errorf("board model %q: must be 1 to %d printable bytes", id.Model, maxModel)
	}
	for k, v := range id.Labels {
		if k == "" || !printable(k) || strings.ContainsRune(k, '=') {
			return fmt.Errorf("label key %q: must be non-empty, printable and without '='", k)
		}
		if !printable(v) {
			return fmt.Errorf("label %s: value %q is not printable", k, v)
		}
		if len(k)+len(v)+labelExtra > maxTXTLen {
			return fmt.Errorf("label %s: key and value exceed %d bytes", k, maxTXTLen-labelExtra)
		}
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// The identity's file in a board's state directory, and its format
// version.
const (
	IdentityFile   = "identity.json"
	IdentityFormat = 1
)

// IdentityOptions seed or override the identity persisted in a state
// directory. Empty ID and Model keep what is stored; non-empty Labels
// replace the stored labels as a whole, so the command line states the
// full label set. DefaultID and DefaultModel name a board that has none
// stored and was given none; DefaultID is called only then.
type IdentityOptions struct {
	ID     string
	Model  string
	Labels map[string]string

	DefaultID    func() (string, error)
	DefaultModel string
}

// ErrNoModel is wrapped by LoadIdentity's error for a board that has no
// model stored, was given none, and has no default.
var ErrNoModel = errors.New("no model: none stored, none given")

// LoadIdentity returns the identity kept in dir (IdentityFile), with opts
// applied, and stores it when it changed (atomically: a power cut leaves
// the old or the new one). An identity file that exists but cannot be
// read is an error, never replaced: the board would change its name.
func LoadIdentity(dir string, opts IdentityOptions) (Identity, error) {
	path := filepath.Join(dir, IdentityFile)
	var stored Identity
	err := atomicfile.ReadJSON(path, IdentityFormat, &stored)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Identity{}, fmt.Errorf("identity: %w", err)
	}
	id := stored.Clone()
	if opts.ID != "" {
		id.ID = opts.ID
	}
	if opts.Model != "" {
		id.Model = opts.Model
	}
	if len(opts.Labels) > 0 {
		id.Labels = maps.Clone(opts.Labels)
	}
	if id.ID == "" && opts.DefaultID != nil {
		if id.ID, err = opts.DefaultID(); err != nil {
			return Identity{}, fmt.Errorf("identity: %w", err)
		}
	}
	if id.Model == "" {
		id.Model = opts.DefaultModel
	}
	if id.Model == "" {
		return Identity{}, fmt.Errorf("identity: %w", ErrNoModel)
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("identity: %w", err)
	}
	if !exists || id.ID != stored.ID || id.Model != stored.Model || !maps.Equal(id.Labels, stored.Labels) {
		if err := atomicfile.WriteJSON(path, IdentityFormat, id); err != nil {
			return Identity{}, fmt.Errorf("identity: %w", err)
		}
	}
	return id, nil
}
