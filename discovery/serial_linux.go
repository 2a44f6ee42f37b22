package discovery

// How the probe stays off ports others use, on Linux: the uucp lock file
// (LCK..NAME in /run/lock or /var/lock, as minicom, picocom, screen and
// ModemManager keep it), the open files of every other process
// (/proc/PID/fd), and TIOCEXCL while it listens.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockDirs are where uucp lock files live: the first one that exists is
// where the probe writes its own; every one is read.
var lockDirs = []string{"/run/lock", "/var/lock"}

// canonical is dev with its symlinks resolved (/dev/serial/by-id/... is
// /dev/ttyUSB0), so that every name of a port finds the same lock.
func canonical(dev string) string {
	if p, err := filepath.EvalSymlinks(dev); err == nil {
		return p
	}
	return dev
}

// lockName is the uucp lock file name of a port: LCK..ttyUSB0, and
// LCK..pts_3 for /dev/pts/3.
func lockName(dev string) string {
	return "LCK.." + strings.ReplaceAll(strings.TrimPrefix(canonical(dev), "/dev/"), "/", "_")
}

// lockOwner reads a lock file: the pid it names, and whether that
// process is alive (a lock left by a dead one is stale).
func lockOwner(path string) (pid int, alive bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	s := strings.TrimSpace(string(b))
	if pid, err = strconv.Atoi(s); err != nil && len(b) == 4 { // the old binary form
		pid, err = int(int32(b[0])|int32(b[1])<<8|int32(b[2])<<16|int32(b[3])<<24), nil
	}
	if err != nil || pid <= 0 {
		return 0, false, fmt.Errorf("lock file %s: unreadable pid %q", path, s)
	}
	err = unix.Kill(pid, 0)
	return pid, err == nil || errors.Is(err, unix.EPERM), nil
}

// processName is what /proc says the process is called, or "".
func processName(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func describe(pid int) string {
	if name := processName(pid); name != "" {
		return fmt.Sprintf("pid %d (%s)", pid, name)
	}
	return fmt.Sprintf("pid %d", pid)
}

// lockedBy says which live process holds the port's lock file, or "".
func lockedBy(dev string) string {
	for _, dir := range lockDirs {
		path := filepath.Join(dir, lockName(dev))
		pid, alive, err := lockOwner(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return err.Error() // unreadable: someone's, all the same
		case alive:
			return fmt.Sprintf("locked by %s (%s)", describe(pid), path)
		}
	}
	return ""
}

// openedBy lists the other processes that have the port open, as far as
// /proc lets this user see (other users' descriptors are hidden from a
// user without root: the lock file and TIOCEXCL still guard then).
func openedBy(dev string) []string {
	var want unix.Stat_t
	if err := unix.Stat(dev, &want); err != nil || want.Mode&unix.S_IFMT != unix.S_IFCHR {
		return nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []string
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fdDir := filepath.Join("/proc", p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || !strings.HasPrefix(target, "/dev/") {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(target, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == want.Rdev {
				out = append(out, describe(pid))
				break
			}
		}
	}
	return out
}

// portBusy says why the port must be left alone, or "".
func portBusy(dev string) string {
	if why := lockedBy(dev); why != "" {
		return why
	}
	return openedElsewhere(dev)
}

// openedElsewhere says which other processes have the port open, or "".
func openedElsewhere(dev string) string {
	if pids := openedBy(dev); len(pids) > 0 {
		return "open in " + strings.Join(pids, ", ")
	}
	return ""
}

// lockPort takes the port's uucp lock for this process, removing a stale
// one, and returns what releases it. Where no lock directory can be
// written (a user outside the lock group), it goes on without one.
func lockPort(dev string) (unlock func(), busy string, err error) {
	for _, dir := range lockDirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		path := filepath.Join(dir, lockName(dev))
		for range 2 { // a stale lock is removed once, then taken
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if errors.Is(err, os.ErrExist) {
				pid, alive, rerr := lockOwner(path)
				if rerr != nil || alive {
					if rerr != nil {
						return nil, rerr.Error(), nil
					}
					return nil, fmt.Sprintf("locked by %s (%s)", describe(pid), path), nil
				}
				_ = os.Remove(path)
				continue
			}
			if err != nil {
				return func() {}, "", nil // not ours to lock: TIOCEXCL still guards
			}
			_, werr := fmt.Fprintf(f, "%10d\n", os.Getpid()) // the HDB form
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				_ = os.Remove(path)
				return nil, "", fmt.Errorf("lock %s: %w", path, werr)
			}
			return func() { _ = os.Remove(path) }, "", nil
		}
		return nil, "", fmt.Errorf("lock %s: stale lock file came back", path)
	}
	return func() {}, "", nil
}

// bauds maps the rates a probe may listen at to their termios codes.
var bauds = map[int]uint32{
	9600: unix.B9600, 19200: unix.B19200, 38400: unix.B38400, 57600: unix.B57600,
	115200: unix.B115200, 230400: unix.B230400, 460800: unix.B460800, 921600: unix.B921600,
	1000000: unix.B1000000, 1500000: unix.B1500000, 2000000: unix.B2000000, 3000000: unix.B3000000,
}

// tty is a port opened for listening: it puts the port's settings back
// and releases it on Close.
type tty struct {
	*os.File
	saved *unix.Termios
}

func (t *tty) Close() error {
	fd := int(t.Fd())
	_ = unix.IoctlSetTermios(fd, unix.TCSETS, t.saved)
	_ = unix.IoctlSetInt(fd, unix.TIOCNXCL, 0)
	return t.File.Close()
}

// openTTY opens a port to listen: O_NOCTTY, so it never becomes this
// process's terminal; O_NONBLOCK, so the open does not wait for carrier
// and reads honour deadlines; then TIOCEXCL, so no one else opens it
// while the probe listens. Raw 8N1 at baud; DTR and RTS are not touched
// (the kernel raises them on open, see docs/discovery.md), and the port's
// settings are restored on Close.
func openTTY(dev string, baud int) (io.ReadWriteCloser, error) {
	speed, ok := bauds[baud]
	if !ok {
		return nil, fmt.Errorf("serial %s: unsupported baud rate %d", dev, baud)
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("serial: open %s: %w", dev, err)
	}
	fail := func(what string, err error) (io.ReadWriteCloser, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("serial %s: %s: %w", dev, what, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TIOCEXCL, 0); err != nil {
		return fail("TIOCEXCL", err)
	}
	saved, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fail("not a terminal", err)
	}
	raw := *saved
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB | unix.CSTOPB | unix.CRTSCTS | unix.CBAUD
	raw.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | speed
	raw.Ispeed, raw.Ospeed = speed, speed
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return fail("set raw mode", err)
	}
	// A non-blocking descriptor goes to Go's poller: reads honour
	// SetReadDeadline, which the probe uses to stop.
	return &tty{File: os.NewFile(uintptr(fd), dev), saved: saved}, nil
}
