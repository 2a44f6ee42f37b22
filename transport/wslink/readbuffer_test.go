package wslink

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/transport"
)

// A link dialed with a small read buffer (the lab service's) still reads
// messages far larger than it, whole, small and large in turn.
func TestSmallReadBuffer(t *testing.T) {
	srv := &Server{Serve: func(ctx context.Context, l *Link) {
		for { // echo
			typ, p, err := l.ReadMessage()
			if err != nil {
				return
			}
			if err := l.WriteMessage(ctx, typ, p); err != nil {
				return
			}
		}
	}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	l, err := Dial(context.Background(), "ws"+strings.TrimPrefix(ts.URL, "http"), "", Config{ReadBufferSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, n := range []int{10, 200 << 10, 300, 64<<10 + 7} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		if err := l.WriteMessage(context.Background(), transport.Binary, msg); err != nil {
			t.Fatal(err)
		}
		typ, got, err := l.ReadMessage()
		if err != nil || typ != transport.Binary || !bytes.Equal(got, msg) {
			t.Fatalf("%d bytes echoed as %d bytes (type %v), %v", n, len(got), typ, err)
		}
	}
}
