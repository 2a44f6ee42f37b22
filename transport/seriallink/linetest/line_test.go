package linetest

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPacing(t *testing.T) {
	l := New(Config{Baud: 100_000}) // 10,000 bytes/s
	host, board := l.Host(), l.Board()
	start := time.Now()
	go board.Write(make([]byte, 5000))
	readN(t, host, 5000)
	// Only the floor: a paced line is never faster than its rate, while
	// a loaded machine may make it slower.
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("5000 bytes at 100 kbaud took %v, want at least 500ms", d)
	}
}

// Noise never touches injected text nor 0x00 bytes, so every line survives.
func TestNoiseSparesText(t *testing.T) {
	l := New(Config{Corrupt: 0.3, Drop: 0.1, Inject: 0.5, Seed: 1})
	host, board := l.Host(), l.Board()
	frame := append(append([]byte{0, 0xFE}, bytes.Repeat([]byte{'f'}, 200)...), 0)
	var sent []byte
	for range 100 {
		sent = append(sent, frame...)
	}
	board.Write(sent) // unpaced: all of it is buffered at the host now
	got := readN(t, host, int(l.Stats().Bytes[1]))
	// Corruption may make zeros, but never removes one.
	if n, m := bytes.Count(got, []byte{0}), bytes.Count(sent, []byte{0}); n < m {
		t.Errorf("%d zero bytes arrived, %d sent", n, m)
	}
	lines := l.Injected()
	if len(lines) < 50 {
		t.Fatalf("only %d lines injected", len(lines))
	}
	text := string(got)
	for _, line := range lines {
		i := strings.Index(text, line)
		if i < 0 {
			t.Fatalf("line %q missing or damaged", line)
		}
		text = text[i+len(line):]
	}
	if s := l.Stats(); s.Corrupted == 0 || s.Dropped == 0 || s.Lines != len(lines) {
		t.Errorf("stats %+v", s)
	}
}

func TestPorts(t *testing.T) {
	l := New(Config{})
	host, board := l.Host(), l.Board()
	l.Inject("hello\n")
	if got := readN(t, host, 6); string(got) != "hello\n" {
		t.Fatalf("read %q", got)
	}
	errc := make(chan error, 1)
	go func() { _, err := board.Read(make([]byte, 1)); errc <- err }()
	board2 := l.Board() // a restarted agent reopens the tty
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("old port read: %v", err)
	}
	if _, err := board.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("old port write: %v", err)
	}
	l.SetCut(true)
	host.Write([]byte("lost"))
	l.SetCut(false)
	host.Write([]byte("kept"))
	if got := readN(t, board2, 4); string(got) != "kept" {
		t.Fatalf("read %q", got)
	}
}
