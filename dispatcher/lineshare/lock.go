package lineshare

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/boardlink/boardlink/internal/uucplock"
	"golang.org/x/sys/unix"
)

// BusyError: another live process holds the line's lock file.
type BusyError struct {
	Line string // the address
	PID  int
	Path string // the lock file
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is in use by %s (lock file %s)", e.Line, uucplock.Describe(e.PID), e.Path)
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
		return uucplock.Name(dev), true, nil
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
		for _, dir := range uucplock.Dirs {
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
	return asBusy(addr, uucplock.Holder(path))
}

// asBusy is err, a live holder as a *BusyError.
func asBusy(addr string, err error) error {
	var held *uucplock.HeldError
	if errors.As(err, &held) {
		return &BusyError{Line: addr, PID: held.PID, Path: held.Path}
	}
	return err
}

// lockIn takes the lock file at path, removing a stale one.
func lockIn(addr, path string) (func(), error) {
	unlock, err := uucplock.Take(path)
	return unlock, asBusy(addr, err)
}
