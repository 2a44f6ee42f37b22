package board

import (
	"fmt"
	"maps"
	"strings"
	"unicode"
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
