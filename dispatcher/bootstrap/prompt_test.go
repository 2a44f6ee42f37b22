package bootstrap

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		text string
		want Prompt
	}{
		{"Debian GNU/Linux 12 board ttyS0\r\n\r\nboard login: ", LoginPrompt},
		{"board login:", NoPrompt}, // not yet: the space is still coming
		{"root\r\nPassword: ", PasswordPrompt},
		{"[    3.1] random: crng init done\r\n/ # ", ShellPrompt},
		{"/ # [   12.000807] usb 1-1: new device\r\r\n[   12.1] eth0: up\r\n", ShellPrompt},
		{"/ # [   12.000807] usb 1-1: new dev", NoPrompt}, // the message is not over
		{"user@board:~$ ", ShellPrompt},
		{"\x1b[?2004h\x1b[01;32mroot@board\x1b[00m:\x1b[01;34m~\x1b[00m# ", ShellPrompt},
		{"# ls\r\nbin  etc\r\n", NoPrompt},
		{"=> ", NoPrompt}, // U-Boot: not a shell to type into
		{"Hit any key to stop autoboot:  3 ", NoPrompt},
		{"", NoPrompt},
	} {
		if got := Detect([]byte(c.text)); got != c.want {
			t.Errorf("Detect(%q) = %v, want %v", c.text, got, c.want)
		}
	}
}

func TestHint(t *testing.T) {
	dial := errors.New("no beacon")
	err := Hint("serial:///dev/ttyUSB0", []byte("\r\nboard login: "), dial)
	var h *HintError
	if !errors.As(err, &h) || h.Prompt != LoginPrompt || !errors.Is(err, dial) {
		t.Fatalf("Hint on a login prompt = %v", err)
	}
	if want := "the agent on serial:///dev/ttyUSB0 does not answer but a login prompt is there: run `boardlink bootstrap serial:///dev/ttyUSB0` to start one (no beacon)"; err.Error() != want {
		t.Errorf("Hint says %q\nwant %q", err, want)
	}
	if err := Hint("unix:///x", []byte("booting...\r\n"), dial); err != dial {
		t.Errorf("Hint without a prompt = %v, want the dial error as it is", err)
	}
}

func TestFindAgent(t *testing.T) {
	empty, full := t.TempDir(), t.TempDir()
	want := filepath.Join(full, "boardlinkd-linux-arm64")
	if err := os.WriteFile(want, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := FindAgent("aarch64", []string{empty, full}); err != nil || got != want {
		t.Errorf("FindAgent(aarch64) = %q, %v; want %s", got, err, want)
	}
	_, err := FindAgent("armv7l", []string{empty, full})
	if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), filepath.Join(empty, "boardlinkd-linux-arm")) ||
		!strings.Contains(err.Error(), filepath.Join(full, "boardlinkd-linux-armv7l")) {
		t.Errorf("FindAgent(armv7l) without one: %v; want every place it looked named", err)
	}
	if _, err := FindAgent("z80", nil); !errors.Is(err, ErrNoAgent) {
		t.Errorf("FindAgent(z80): %v", err)
	}
	// An agent for another architecture is refused before it is sent.
	if err := checkAgent("/bin/sh", "aarch64"); runtime.GOARCH == "amd64" && !errors.Is(err, ErrNoAgent) {
		t.Errorf("checkAgent(/bin/sh, aarch64) on amd64: %v", err)
	}
}
