package wslink

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Bulk data crosses a WebSocket link intact both ways: frames written in
// parts (header, then the caller's bytes) and read into recycled buffers,
// with the reader's and the writer's buffers of other sizes than a frame;
// frames of the default size one way and a transfer's larger ones
// (proto.MaxBulkFrame, past the server's write buffer) the other.
func TestStreamEchoIntact(t *testing.T) {
	echo := transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		var p struct{ Stream uint32 }
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		s, err := c.AttachStream(p.Stream)
		if err != nil {
			return nil, err
		}
		s.Grow(1 << 20)
		s.SetChunk(proto.MaxBulkFrame)
		go func() {
			defer s.Close()
			if _, err := io.CopyBuffer(s, s, make([]byte, 300_000)); err == nil {
				_ = s.CloseWrite()
			}
		}()
		return nil, nil
	})
	srv := httptest.NewServer(&Server{Serve: func(ctx context.Context, l *Link) {
		c := transport.NewConn(l, transport.Config{Handler: echo})
		c.Start()
		select {
		case <-c.Done():
		case <-ctx.Done():
		}
	}})
	defer srv.Close()
	l, err := Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http"), "", Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true})
	c.Start()
	defer c.Close()
	s, err := c.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	s.Grow(1 << 20)
	if err := c.Call(context.Background(), "echo", map[string]uint32{"stream": s.ID()}, nil); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 4<<20+12345)
	rand.Read(want)
	written := make(chan error, 1)
	go func() {
		for rest := want; len(rest) > 0; { // writes of changing sizes, some larger than a frame
			n := min(len(rest), 1+len(rest)%200_000)
			if _, err := s.Write(rest[:n]); err != nil {
				written <- err
				return
			}
			rest = rest[n:]
		}
		written <- s.CloseWrite()
	}()
	var got bytes.Buffer
	if _, err := io.CopyBuffer(&got, s, make([]byte, 7_000)); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("echoed %d bytes, not the %d sent", got.Len(), len(want))
	}
}
