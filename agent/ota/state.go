package ota

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/proto"
)

// Files under the state directory, and their format versions.
const (
	stateFile    = "state.json"
	stateFormat  = 1
	slotsFile    = "slots.json"
	slotsFormat  = 1
	manifestFile = "manifest.json" // the exact signed bytes of the update's manifest
	sigFile      = "manifest.sig"
	hashesFile   = "hashes.json" // the chunk hashes of slots the agent read (hash.go)
	hashesFormat = 1
)

// update is the persisted state of the current or last update.
type update struct {
	ID          string       `json:"id"`
	Version     string       `json:"version"`
	FromVersion string       `json:"from_version"`
	PayloadSHA  string       `json:"payload_sha256"`
	Slot        string       `json:"slot"`
	Phase       proto.Phase  `json:"phase"`
	Result      proto.Result `json:"result,omitempty"`
	Reason      string       `json:"reason,omitempty"`
	FailedPhase proto.Phase  `json:"failed_phase,omitempty"`
	Chunks      int          `json:"chunks"`
	Size        int64        `json:"size"`
	Done        []byte       `json:"done"`   // bitmap of chunks written, synced and verified
	Copied      int          `json:"copied"` // chunks copied from the active slot
	BytesLink   int64        `json:"bytes_link"`
	BytesURL    int64        `json:"bytes_url,omitempty"`
	// URL and PayloadOffset: where the agent fetches missing chunks
	// itself; FetchDeadline bounds each run of that fetch (FetchLimits).
	URL           string        `json:"url,omitempty"`
	PayloadOffset int64         `json:"payload_offset,omitempty"`
	FetchDeadline time.Duration `json:"fetch_deadline_ns,omitempty"`
	Started       time.Time     `json:"started"`
	Updated       time.Time     `json:"updated"`
	Transitions   int           `json:"transitions"`
	// TrialSet is true once the boot loader holds the trial; TrialBoot is
	// the boot id that set it, to tell a restart of the agent from a reboot.
	TrialSet  bool   `json:"trial_set,omitempty"`
	TrialBoot string `json:"trial_boot,omitempty"`
	// Hold keeps a trial whose health check passed for the host's
	// verdict; HoldUntil is when it rolls back without one.
	Hold      time.Duration `json:"hold_ns,omitempty"`
	HoldUntil time.Time     `json:"hold_until,omitzero"`
}

func (u *update) has(i int) bool { return u.Done[i/8]&(1<<(i%8)) != 0 }
func (u *update) set(i int)      { u.Done[i/8] |= 1 << (i % 8) }
func (u *update) clear(i int)    { u.Done[i/8] &^= 1 << (i % 8) }

func (u *update) count() int {
	n := 0
	for i := range u.Chunks {
		if u.has(i) {
			n++
		}
	}
	return n
}

// slotMeta is what the agent knows a slot holds. Writing marks a slot an
// update has begun to overwrite: not bootable, and its old chunks are gone.
// Writes counts the updates that began to write it (slotStamp).
type slotMeta struct {
	Version   string   `json:"version,omitempty"`
	SHA256    string   `json:"sha256,omitempty"`
	Size      int64    `json:"size,omitempty"`
	ChunkSize int64    `json:"chunk_size,omitempty"`
	Chunks    []string `json:"chunks,omitempty"`
	Writing   bool     `json:"writing,omitempty"`
	Writes    int      `json:"writes,omitempty"`
}

// store reads and writes the machine's files.
type store struct{ dir string }

func (s store) path(name string) string { return filepath.Join(s.dir, name) }

func (s store) loadUpdate() (*update, error) {
	var u update
	err := atomicfile.ReadJSON(s.path(stateFile), stateFormat, &u)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &u, nil
}

func (s store) saveUpdate(u *update) error {
	return atomicfile.WriteJSON(s.path(stateFile), stateFormat, u)
}

func (s store) loadSlots() (map[string]slotMeta, error) {
	slots := map[string]slotMeta{}
	err := atomicfile.ReadJSON(s.path(slotsFile), slotsFormat, &slots)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return slots, nil
}

func (s store) saveSlots(slots map[string]slotMeta) error {
	return atomicfile.WriteJSON(s.path(slotsFile), slotsFormat, slots)
}

// loadHashes reads the kept slot hashes; none yet is an empty map.
func (s store) loadHashes() (map[string]slotHashes, error) {
	hashes := map[string]slotHashes{}
	err := atomicfile.ReadJSON(s.path(hashesFile), hashesFormat, &hashes)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return map[string]slotHashes{}, err
	}
	return hashes, nil
}

// saveHashes replaces the kept slot hashes atomically: a cut leaves the
// old ones or the new ones.
func (s store) saveHashes(hashes map[string]slotHashes) error {
	return atomicfile.WriteJSON(s.path(hashesFile), hashesFormat, hashes)
}

// saveImage keeps the update's signed manifest, so that a resumed update
// checks its chunks against the same, verified hashes.
func (s store) saveImage(raw, sig []byte) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.path(manifestFile), raw, 0o644); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path(sigFile), sig, 0o644)
}

func (s store) loadImage() (raw, sig []byte, err error) {
	if raw, err = os.ReadFile(s.path(manifestFile)); err != nil {
		return nil, nil, err
	}
	sig, err = os.ReadFile(s.path(sigFile))
	return raw, sig, err
}
