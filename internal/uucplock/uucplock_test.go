package uucplock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Take writes this process's pid in the HDB form, refuses a live holder
// by name, replaces a stale lock, and reads the old binary form too.
func TestTake(t *testing.T) {
	path := filepath.Join(t.TempDir(), Name("/dev/pts/3"))
	if filepath.Base(path) != "LCK..pts_3" {
		t.Fatalf("name %s", filepath.Base(path))
	}
	unlock, err := Take(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != fmt.Sprintf("%10d\n", os.Getpid()) {
		t.Fatalf("lock file %q", b)
	}
	var held *HeldError
	if _, err := Take(path); !errors.As(err, &held) || held.PID != os.Getpid() || !strings.Contains(err.Error(), "locked by pid") {
		t.Fatalf("second Take: %v", err)
	}
	unlock()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unlock left %v", err)
	}

	// A dead process's lock (pid 2^22+1 is above any pid_max default) is stale.
	if err := os.WriteFile(path, []byte("   4194305\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Holder(path); err != nil {
		t.Fatalf("stale lock held: %v", err)
	}
	unlock, err = Take(path)
	if err != nil {
		t.Fatalf("over a stale lock: %v", err)
	}
	unlock()

	// The old binary form: the pid as 4 little-endian bytes.
	pid := os.Getpid()
	if err := os.WriteFile(path, []byte{byte(pid), byte(pid >> 8), byte(pid >> 16), byte(pid >> 24)}, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, alive, err := Owner(path); err != nil || !alive || got != pid {
		t.Fatalf("binary form: %d %v %v", got, alive, err)
	}
	if err := os.WriteFile(path, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Take(path); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("unreadable lock: %v", err)
	}
}
