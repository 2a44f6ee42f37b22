package seriallink

import (
	"io"
	"net"
	"testing"
)

// The console ends when the line does, not only on Close: a reader of
// the console text is never left waiting on a line that is gone.
func TestConsoleEndsWithTheLine(t *testing.T) {
	host, board := net.Pipe()
	ep := NewEndpoint(host, Config{})
	defer ep.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(ep.Console())
		got <- b
	}()
	if _, err := board.Write([]byte("U-Boot 2024.01\r\n")); err != nil {
		t.Fatal(err)
	}
	board.Close()
	if text := <-got; string(text) != "U-Boot 2024.01\r\n" {
		t.Fatalf("console text %q", text)
	}
}
