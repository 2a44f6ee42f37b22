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

	"github.com/boardlink/boardlink/internal/uucplock"
	"golang.org/x/sys/unix"
)

// lockedBy says which live process holds the port's lock file, or "".
func lockedBy(dev string) string {
	for _, dir := range uucplock.Dirs {
		if err := uucplock.Holder(filepath.Join(dir, uucplock.Name(dev))); err != nil {
			return err.Error() // unreadable: someone's, all the same
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
				out = append(out, uucplock.Describe(pid))
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
// one, and returns what releases it. Where no lock can be written (a user
// outside the lock group), it goes on without one: TIOCEXCL still guards.
func lockPort(dev string) (unlock func(), busy string) {
	for _, dir := range uucplock.Dirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		unlock, err := uucplock.Take(filepath.Join(dir, uucplock.Name(dev)))
		var held *uucplock.HeldError
		switch {
		case errors.As(err, &held) || errors.Is(err, uucplock.ErrUnreadable):
			return nil, err.Error()
		case err != nil:
			return func() {}, ""
		}
		return unlock, ""
	}
	return func() {}, ""
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
