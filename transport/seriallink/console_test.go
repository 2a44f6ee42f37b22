package seriallink

import (
	"io"
	"testing"
)

// The console never blocks its writer: past its size the oldest text goes.
func TestConsoleDropsOldest(t *testing.T) {
	stats := new(counters)
	c := newConsole(8, stats)
	c.write([]byte("abcdef"))
	c.write([]byte("ghij"))         // wraps, drops "ab"
	c.write([]byte("0123456789xy")) // larger than the buffer
	c.close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "456789xy" {
		t.Fatalf("read %q, %v", got, err)
	}
	if d := stats.consoleDropped.Load(); d != 14 {
		t.Errorf("dropped %d, want 14", d)
	}
	if n := stats.consoleBytes.Load(); n != 22 {
		t.Errorf("counted %d bytes, want 22", n)
	}
}
