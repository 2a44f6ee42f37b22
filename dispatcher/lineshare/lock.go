package lineshare

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockDirs are where uucp lock files live (minicom, picocom, screen and
// ModemManager keep theirs there): every one is read, the first one this
// user may write takes ours.
var lockDirs = []string{"/run/lock", "/var/lock"}

// BusyError: another live process holds the line's lock file.
type BusyError struct {
	Line string // the address
	PID  int
	Path string // the lock file
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is in use by %s (lock file %s)", e.Line, Describe(e.PID), e.Path)
}

// Unwrap makes it an ErrBusy.
func (e *BusyError) Unwrap() error { return ErrBusy }

// lockName is the lock file's name: LCK..ttyUSB0 (LCK..pts_3 for
// /dev/pts/3) for a serial port, as uucp names it; LCK..boardlink-HASH
// for a socket, which only boardlink processes look for.
func lockName(addr string) (name string, device bool, err error) {
	key, err := Key(addr)
	if err != nil {
		return "", false, err
	}
	if dev, ok := strings.CutPrefix(key, "serial:"); ok {
		return "LCK.." + strings.ReplaceAll(strings.TrimPrefix(dev, "/dev/"), "/", "_"), true, nil
	}
	return "LCK..boardlink-" + hash(key), false, nil
}

// Lock takes the lock of the line at addr for this process and returns
// what releases it. A serial port's lock is the uucp lock file in
// /run/lock or /var/lock, or in runDir where this user may write neither;
// a socket's is in runDir. A live holder is a *BusyError naming it; a lock
// left by a dead process is removed. With nowhere to write a lock (runDir
// "" too) the line goes unlocked, as with uucp for a user outside the
// lock group.
func Lock(addr, runDir string) (unlock func(), err error) {
	name, device, err := lockName(addr)
	if err != nil {
		return nil, err
	}
	var dirs []string
	if device {
		for _, dir := range lockDirs {
			if err := busy(addr, filepath.Join(dir, name)); err != nil {
				return nil, err
			}
			if unix.Access(dir, unix.W_OK) == nil && len(dirs) == 0 {
				dirs = append(dirs, dir)
			}
		}
	}
	if runDir != "" {
		dirs = append(dirs, runDir)
	}
	if len(dirs) == 0 {
		return func() {}, nil
	}
	var errs []error
	for _, dir := range dirs {
		unlock, err := lockIn(addr, filepath.Join(dir, name))
		var be *BusyError
		if err == nil || errors.As(err, &be) {
			return unlock, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("lock %s: %w", addr, errors.Join(errs...))
}

// busy reports a live holder of the lock file at path.
func busy(addr, path string) error {
	pid, alive, err := lockOwner(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case alive:
		return &BusyError{Line: addr, PID: pid, Path: path}
	}
	return nil
}

// lockIn takes the lock file at path (HDB form: the pid in ten columns),
// removing a stale one once.
func lockIn(addr, path string) (func(), error) {
	for range 2 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			if err := busy(addr, path); err != nil {
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
			return nil, werr
		}
		return func() { _ = os.Remove(path) }, nil
	}
	return nil, fmt.Errorf("%s: a stale lock file came back", path)
}

// lockOwner reads a lock file: the pid it names (ASCII, or the old 4-byte
// binary form), and whether that process lives.
func lockOwner(path string) (pid int, alive bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	s := strings.TrimSpace(string(b))
	if pid, err = strconv.Atoi(s); err != nil && len(b) == 4 {
		pid, err = int(int32(b[0])|int32(b[1])<<8|int32(b[2])<<16|int32(b[3])<<24), nil
	}
	if err != nil || pid <= 0 {
		return 0, false, fmt.Errorf("lock file %s: unreadable pid %q", path, s)
	}
	err = unix.Kill(pid, 0)
	return pid, err == nil || errors.Is(err, unix.EPERM), nil
}
