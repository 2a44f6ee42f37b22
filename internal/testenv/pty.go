package testenv

import (
	"os"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// RawPTY opens a pty pair in raw mode, as cfmakeraw does (no echo, no line
// editing, no output processing, 8-bit characters), so it carries bytes
// like a UART. Both ends close when the test ends; the test's slave
// descriptor keeps the line up while other openers come and go. Without a
// pty the test skips, or fails under BOARDLINK_E2E=1.
func RawPTY(t testing.TB) (master, slave *os.File) {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		SkipOrFail(t, "no pty: %v", err)
	}
	t.Cleanup(func() {
		master.Close()
		slave.Close()
	})
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	return master, slave
}

// Pollable is f (a pty's master, which pty.Open leaves blocking) as a
// file Go's poller serves, so that its deadlines end a pending Read. The
// two share one open file description, now non-blocking; the copy is
// closed when the test ends.
func Pollable(t testing.TB, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	p := os.NewFile(uintptr(fd), f.Name())
	t.Cleanup(func() { p.Close() })
	return p
}
