package dispatcher

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// Trust decides whether a board's key may be used: Verify refuses a key
// that is not the one the board id is known by. A board's key is checked
// before anything secret is sent to it.
type Trust interface {
	Verify(boardID string, fp auth.Fingerprint) error
}

// KnownBoard is a board whose key this host has pinned.
type KnownBoard struct {
	ID          string           `json:"id"`
	Fingerprint auth.Fingerprint `json:"fingerprint"`
	Added       time.Time        `json:"added"`
	// Paired is set when the key was confirmed by pairing (the board
	// also knows this host's key), not merely trusted on first use.
	Paired bool `json:"paired,omitempty"`
}

// KnownBoards pins board keys by board id, as ssh's known_hosts pins host
// keys: a board seen for the first time is trusted and pinned (unless
// Strict), a known board must show the same key again. It is kept in a
// file, written atomically under a lock so that concurrent processes
// never lose each other's pins; with no file it lives in memory.
type KnownBoards struct {
	path string
	// Strict refuses boards that are not known yet (no trust on first
	// use): for a lab whose pins are provisioned.
	Strict bool
	// OnPin, when set, is told of every key pinned on first use.
	OnPin func(KnownBoard)
	now   func() time.Time

	mu  sync.Mutex
	mem map[string]KnownBoard // the in-memory store, with no file
}

var _ Trust = (*KnownBoards)(nil)

// knownFormat versions the known-boards file.
const knownFormat = 1

// NewKnownBoards keeps pins in path ("" keeps them in memory only).
func NewKnownBoards(path string) *KnownBoards {
	return &KnownBoards{path: path, now: time.Now, mem: map[string]KnownBoard{}}
}

// DefaultKnownBoardsPath is $XDG_CONFIG_HOME/boardlink/known_boards.json
// (~/.config/boardlink/known_boards.json).
func DefaultKnownBoardsPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("known boards: %w", err)
	}
	return filepath.Join(dir, "boardlink", "known_boards.json"), nil
}

// Path is the file the pins are kept in ("" in memory).
func (k *KnownBoards) Path() string { return k.path }

// KeyChangedError refuses a board whose key is not the pinned one.
type KeyChangedError struct {
	ID       string
	Pinned   auth.Fingerprint
	Got      auth.Fingerprint
	Paired   bool
	Location string // the known-boards file
}

func (e *KeyChangedError) Error() string {
	how := "trusted on first use"
	if e.Paired {
		how = "paired"
	}
	return fmt.Sprintf("board %s showed key %s, but %s pins %s for it (%s).\n"+
		"Someone may be impersonating the board, or it was reinstalled (a new state dir makes a new key).\n"+
		"If you know why the key changed: boardlink forget %s, then connect again (or boardlink trust %s --fingerprint %s)",
		e.ID, e.Got, e.Location, e.Pinned, how, e.ID, e.ID, e.Got)
}

// ErrUnknownKey refuses a board not yet known, in Strict mode.
var ErrUnknownKey = fmt.Errorf("%w: its key is not known", ErrUntrusted)

// Unwrap makes it an ErrUntrusted.
func (e *KeyChangedError) Unwrap() error { return ErrUntrusted }

// Verify accepts fp for board id if it is the pinned key, or pins it if
// the board is new (and not Strict).
func (k *KnownBoards) Verify(id string, fp auth.Fingerprint) error {
	var (
		refusal error
		pinned  *KnownBoard
	)
	err := k.update(func(m map[string]KnownBoard) bool {
		e, ok := m[id]
		switch {
		case ok && e.Fingerprint.Equal(fp):
			return false
		case ok:
			refusal = &KeyChangedError{ID: id, Pinned: e.Fingerprint, Got: fp, Paired: e.Paired, Location: k.location()}
			return false
		case k.Strict:
			refusal = fmt.Errorf("%w: board %s (key %s) is not in %s, and --strict-keys refuses boards on first use: boardlink trust %s --fingerprint %s",
				ErrUnknownKey, id, fp, k.location(), id, fp)
			return false
		}
		e = KnownBoard{ID: id, Fingerprint: fp, Added: k.now().UTC()}
		m[id] = e
		pinned = &e
		return true
	})
	if err != nil {
		return err
	}
	if refusal != nil {
		return refusal
	}
	if pinned != nil && k.OnPin != nil {
		k.OnPin(*pinned)
	}
	return nil
}

func (k *KnownBoards) location() string {
	if k.path == "" {
		return "this process's known boards"
	}
	return k.path
}

// Lookup returns the pin of board id.
func (k *KnownBoards) Lookup(id string) (KnownBoard, bool) {
	m, err := k.load()
	if err != nil {
		return KnownBoard{}, false
	}
	e, ok := m[id]
	return e, ok
}

// List returns every pin, by id.
func (k *KnownBoards) List() ([]KnownBoard, error) {
	m, err := k.load()
	if err != nil {
		return nil, err
	}
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b KnownBoard) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// Pin replaces the pin of board id with fp (boardlink trust, a pairing).
func (k *KnownBoards) Pin(id string, fp auth.Fingerprint, paired bool) error {
	return k.update(func(m map[string]KnownBoard) bool {
		m[id] = KnownBoard{ID: id, Fingerprint: fp, Added: k.now().UTC(), Paired: paired}
		return true
	})
}

// Forget removes the pin of board id; it reports whether there was one.
func (k *KnownBoards) Forget(id string) (bool, error) {
	found := false
	err := k.update(func(m map[string]KnownBoard) bool {
		_, found = m[id]
		delete(m, id)
		return found
	})
	return found, err
}

func (k *KnownBoards) load() (map[string]KnownBoard, error) {
	if k.path == "" {
		k.mu.Lock()
		defer k.mu.Unlock()
		return maps.Clone(k.mem), nil
	}
	return readKnown(k.path)
}

func readKnown(path string) (map[string]KnownBoard, error) {
	m := map[string]KnownBoard{}
	err := atomicfile.ReadJSON(path, knownFormat, &m)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]KnownBoard{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("known boards: %w", err)
	}
	return m, nil
}

// update runs change on the pins under the file's lock and writes them
// back when it reports a change.
func (k *KnownBoards) update(change func(map[string]KnownBoard) bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.path == "" {
		change(k.mem)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(k.path), 0o700); err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	lock, err := os.OpenFile(k.path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("known boards: lock: %w", err)
	}
	m, err := readKnown(k.path)
	if err != nil {
		return err
	}
	if !change(m) {
		return nil
	}
	return atomicfile.WriteJSON(k.path, knownFormat, m)
}
