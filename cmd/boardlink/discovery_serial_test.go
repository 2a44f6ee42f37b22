package main

import (
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// ls leaves a serial port that another process reads alone, and says so
// on stderr, naming the process; the reader gets every byte.
func TestLsSkipsASerialPortInUse(t *testing.T) {
	if !testenv.InPrivateLoopback(t) { // ls browses mDNS too: only on this lo
		return
	}
	master, slave := testenv.RawPTY(t)
	var got testenv.Buffer
	cat := exec.Command("cat", slave.Name())
	cat.Stdout = &got
	if err := cat.Start(); err != nil {
		testenv.SkipOrFail(t, "cannot run cat: %v", err)
	}
	t.Cleanup(func() { cat.Process.Kill(); cat.Wait() })
	if _, err := io.WriteString(master, "before\n"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "cat to read the pty", func() bool { return got.String() == "before\n" })

	_, stderr, code := cli(t, "", "ls", "--iface", "lo", "--serial-port", slave.Name())
	want := fmt.Sprintf("did not listen on serial port %s: open in pid %d (cat)", slave.Name(), cat.Process.Pid)
	if code != 0 || !strings.Contains(stderr, want) {
		t.Fatalf("ls: exit %d, stderr:\n%s\nwant %q", code, stderr, want)
	}
	if _, err := io.WriteString(master, "after\n"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "cat to read every line", func() bool { return got.String() == "before\nafter\n" })
}
