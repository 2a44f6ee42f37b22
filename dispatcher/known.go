package dispatcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// Trust decides whether a board's key may be used: Verify refuses a key
// that is not the one the board id is known by. A board's key is checked
// before anything secret is sent to it. Verify may wait (a key pinned on
// first use is written to a file): it returns when ctx ends.
type Trust interface {
	Verify(ctx context.Context, boardID string, fp auth.Fingerprint) error
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
//
// The file is read once and kept in memory, read again only when it
// changed on disk (another process wrote it): a lab service checks a key
// at every dial. Pins asked for at once are written together, one write
// for the lot; a pin is reported only once the write that holds it is
// done.
type KnownBoards struct {
	path string
	// Strict refuses boards that are not known yet (no trust on first
	// use): for a lab whose pins are provisioned.
	Strict bool
	// OnPin, when set, is told of every key pinned on first use.
	OnPin func(KnownBoard)
	now   func() time.Time

	mu      sync.Mutex
	mem     map[string]KnownBoard // the pins: the file's as last read or written, or the only copy with no file
	stamp   fileStamp             // of the file mem was read from or written to
	pending *knownBatch           // changes waiting for the next write
	writing bool                  // a writer goroutine runs: it takes pending when done with its batch
}

// fileStamp tells whether a file changed since it was read: a write
// renames a new file in place (a new inode), and mtime and size catch
// the rest.
type fileStamp struct {
	ino, size, mtime int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = int64(sys.Ino)
	}
	return st
}

// knownBatch is the changes written together, and the write's outcome.
type knownBatch struct {
	changes []knownChange
	done    chan struct{} // closed once written (or failed): err is set
	err     error
}

// knownChange is one change of the pins: apply makes it and reports
// whether it changed anything; stored, if set, is called once it is on
// disk (whether or not its caller still waits).
type knownChange struct {
	apply  func(map[string]KnownBoard) bool
	stored func()
}

var _ Trust = (*KnownBoards)(nil)

// knownFormat versions the known-boards file.
const knownFormat = 1

// NewKnownBoards keeps pins in path ("" keeps them in memory only).
func NewKnownBoards(path string) *KnownBoards {
	return &KnownBoards{path: path, now: time.Now}
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
// the board is new (and not Strict). A pin is reported (OnPin) and
// accepted once it is on disk; if ctx ends first, Verify returns its
// error and the pin is still written.
func (k *KnownBoards) Verify(ctx context.Context, id string, fp auth.Fingerprint) error {
	// A key already pinned needs no lock on the file, only a look at it.
	if e, ok := k.Lookup(id); ok && e.Fingerprint.Equal(fp) {
		return nil
	}
	var (
		refusal error
		pinned  *KnownBoard
	)
	err := k.update(ctx, knownChange{apply: func(m map[string]KnownBoard) bool {
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
	}, stored: func() {
		if pinned != nil && k.OnPin != nil {
			k.OnPin(*pinned)
		}
	}})
	if err != nil {
		return err
	}
	return refusal
}

func (k *KnownBoards) location() string {
	if k.path == "" {
		return "this process's known boards"
	}
	return k.path
}

// Lookup returns the pin of board id.
func (k *KnownBoards) Lookup(id string) (KnownBoard, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refreshLocked(); err != nil {
		return KnownBoard{}, false
	}
	e, ok := k.mem[id]
	return e, ok
}

// List returns every pin, by id.
func (k *KnownBoards) List() ([]KnownBoard, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refreshLocked(); err != nil {
		return nil, err
	}
	out := slices.Collect(maps.Values(k.mem))
	slices.SortFunc(out, func(a, b KnownBoard) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// Pin replaces the pin of board id with fp (boardlink trust, a pairing).
// It returns once the pin is on disk, or when ctx ends (another process
// may hold the file's lock): the pin is then still written.
func (k *KnownBoards) Pin(ctx context.Context, id string, fp auth.Fingerprint, paired bool) error {
	return k.update(ctx, knownChange{apply: func(m map[string]KnownBoard) bool {
		m[id] = KnownBoard{ID: id, Fingerprint: fp, Added: k.now().UTC(), Paired: paired}
		return true
	}})
}

// Forget removes the pin of board id; it reports whether there was one.
// As Pin, it waits for the file's write at most until ctx ends.
func (k *KnownBoards) Forget(ctx context.Context, id string) (bool, error) {
	found := false
	err := k.update(ctx, knownChange{apply: func(m map[string]KnownBoard) bool {
		_, found = m[id]
		delete(m, id)
		return found
	}})
	if err != nil {
		return false, err // the writer may still set found
	}
	return found, nil
}

// refreshLocked makes mem the file's pins, reading the file again only if
// it changed since it was last read or written.
func (k *KnownBoards) refreshLocked() error {
	if k.path == "" {
		if k.mem == nil {
			k.mem = map[string]KnownBoard{}
		}
		return nil
	}
	f, err := os.Open(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		k.mem, k.stamp = map[string]KnownBoard{}, fileStamp{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	// The stamp of the open file: a rename after the open does not make
	// this read pass for the new file.
	st := stampOf(fi)
	if k.mem != nil && st == k.stamp {
		return nil
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	m := map[string]KnownBoard{}
	if err := atomicfile.DecodeJSON(k.path, raw, knownFormat, &m); err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	k.mem, k.stamp = m, st
	return nil
}

// update has a change made on the pins under the file's lock, and the
// pins written back if it changed them. Changes asked for while a write
// is under way are made and written together by the next one. It returns
// once the write that holds its change is done, or when ctx ends (the
// change is still made).
func (k *KnownBoards) update(ctx context.Context, c knownChange) error {
	k.mu.Lock()
	if k.path == "" {
		_ = k.refreshLocked() // with no file, it cannot fail
		changed := c.apply(k.mem)
		k.mu.Unlock()
		if changed && c.stored != nil {
			c.stored()
		}
		return nil
	}
	b := k.pending
	if b == nil {
		b = &knownBatch{done: make(chan struct{})}
		k.pending = b
	}
	b.changes = append(b.changes, c)
	if !k.writing {
		k.writing = true
		go k.writeLoop()
	}
	k.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return fmt.Errorf("known boards: waiting for %s to be written: %w", k.path, context.Cause(ctx))
	}
}

// writeLoop writes the pending batches, one after the other, until none
// is left. It is not any caller's: a caller may stop waiting, the write
// goes on (another process may hold the file's lock a while).
func (k *KnownBoards) writeLoop() {
	for {
		k.mu.Lock()
		b := k.pending
		k.pending = nil
		if b == nil {
			k.writing = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		b.err = k.write(b.changes)
		close(b.done)
	}
}

// write makes changes on the file's pins under the file's lock, and
// writes them back if any reports a change.
func (k *KnownBoards) write(changes []knownChange) error {
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
	k.mu.Lock()
	err = k.refreshLocked()
	m := maps.Clone(k.mem)
	k.mu.Unlock()
	if err != nil {
		return err
	}
	changed := false
	for _, c := range changes {
		changed = c.apply(m) || changed
	}
	if !changed {
		return nil
	}
	// Lookups go on from the pins as they were while the file is
	// written: nobody else writes it meanwhile (the file's lock, and one
	// writeLoop in this process).
	if err := atomicfile.WriteJSON(k.path, knownFormat, m); err != nil {
		return fmt.Errorf("known boards: %w", err)
	}
	fi, err := os.Stat(k.path)
	k.mu.Lock()
	if err != nil {
		k.mem = nil // written, but its stamp unknown: read it again next time
	} else {
		k.mem, k.stamp = m, stampOf(fi)
	}
	k.mu.Unlock()
	for _, c := range changes {
		if c.stored != nil {
			c.stored()
		}
	}
	return nil
}
