package transport_test

import (
	"context"
	"io"
	"testing"

	"github.com/boardlink/boardlink/transport/wslink"
)

// BenchmarkCallRoundTrip measures one request and its answer over a
// loopback WebSocket: the path every exec.start and exec.wait takes.
func BenchmarkCallRoundTrip(b *testing.B) {
	c := dial(b, testServer(b, "", wslink.Config{}, testHandler), "", nil)
	ctx := context.Background()
	for b.Loop() {
		if err := c.Call(ctx, "echo", echoParams{Text: "hi"}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStreamThroughput measures one stream from server to client,
// in MB/s: DATA one way, CREDIT back through the connection's writer.
func BenchmarkStreamThroughput(b *testing.B) {
	const size = 16 << 20
	c := dial(b, testServer(b, "", wslink.Config{}, testHandler), "", nil)
	ctx := context.Background()
	b.SetBytes(size)
	for b.Loop() {
		out, err := c.OpenStream()
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Call(ctx, "produce", map[string]any{"Out": out.ID(), "N": size}, nil); err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, out); err != nil || n != size {
			b.Fatalf("read %d, %v", n, err)
		}
	}
}
