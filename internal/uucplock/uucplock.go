package uucplock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dirs are where uucp lock files live: every one is read, and a lock is
// taken in the first one this user may write.
var Dirs = []string{"/run/lock", "/var/lock"}

// ErrUnreadable: a lock file names no pid this package can read. It is
// someone's all the same.
var ErrUnreadable = errors.New("unreadable lock file")

// HeldError: a live process holds the lock file.
type HeldError struct {
	PID  int
	Path string
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("locked by %s (%s)", Describe(e.PID), e.Path)
}

// Canonical is dev with its symlinks resolved (/dev/serial/by-id/... is
// /dev/ttyUSB0), so that every name of a port finds the same lock.
func Canonical(dev string) string {
	if p, err := filepath.EvalSymlinks(dev); err == nil {
		return p
	}
	return dev
}

// Name is the lock file name of a port: LCK..ttyUSB0, and LCK..pts_3 for
// /dev/pts/3.
func Name(dev string) string {
	return "LCK.." + strings.ReplaceAll(strings.TrimPrefix(Canonical(dev), "/dev/"), "/", "_")
}

// Owner reads a lock file: the pid it names (ASCII, or the old 4-byte
// binary form), and whether that process lives (a lock left by a dead
// one is stale).
func Owner(path string) (pid int, alive bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	s := strings.TrimSpace(string(b))
	if pid, err = strconv.Atoi(s); err != nil && len(b) == 4 {
		pid, err = int(int32(b[0])|int32(b[1])<<8|int32(b[2])<<16|int32(b[3])<<24), nil
	}
	if err != nil || pid <= 0 {
		return 0, false, fmt.Errorf("%w %s: pid %q", ErrUnreadable, path, s)
	}
	err = unix.Kill(pid, 0)
	return pid, err == nil || errors.Is(err, unix.EPERM), nil
}

// Holder is a *HeldError for a live holder of the lock file at path, an
// ErrUnreadable one, or nil (no lock file, or a stale one).
func Holder(path string) error {
	pid, alive, err := Owner(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case alive:
		return &HeldError{PID: pid, Path: path}
	}
	return nil
}

// Take takes the lock file at path for this process (the pid in ten
// columns), removing a stale one once, and returns what releases it. A
// live holder is a *HeldError; a lock file it cannot create or write is
// the error of that.
func Take(path string) (unlock func(), err error) {
	for range 2 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			if err := Holder(path); err != nil {
				return nil, err
			}
			_ = os.Remove(path) // stale: its process is gone
			continue
		}
		if err != nil {
			return nil, err
		}
		_, werr := fmt.Fprintf(f, "%10d\n", os.Getpid())
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(path)
			return nil, fmt.Errorf("lock %s: %w", path, werr)
		}
		return func() { _ = os.Remove(path) }, nil
	}
	return nil, fmt.Errorf("lock %s: a stale lock file came back", path)
}

// Describe names a process for messages: "pid 42 (boardlink)".
func Describe(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if name := strings.TrimSpace(string(b)); err == nil && name != "" {
		return fmt.Sprintf("pid %d (%s)", pid, name)
	}
	return fmt.Sprintf("pid %d", pid)
}
