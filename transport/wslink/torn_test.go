package wslink

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/transport"
)

// A write that times out leaves part of a TLS record on the wire. The
// link's close must not put TLS's close_notify behind it: the peer would
// read the two as one corrupt record, "tls: bad record MAC", as if the
// stream had been tampered with (130 heartbeat losses at 10,000 boards
// said so, at load 67). It must read a connection that ended
// mid-message. Without the fix, half the runs of this test read a bad
// record MAC: a small record's missing bytes are fewer than the alert's.
func TestTornWriteEndsWithoutCorruptRecord(t *testing.T) {
	failed := make(chan error, 1)
	srv := httptest.NewTLSServer(&Server{Config: Config{WriteTimeout: 50 * time.Millisecond, CloseWait: time.Millisecond},
		Serve: func(ctx context.Context, l *Link) {
			msg := make([]byte, 30) // heartbeat-sized: a torn record misses a few bytes
			for {
				if err := l.WriteMessage(ctx, transport.Binary, msg); err != nil {
					failed <- err
					return
				}
			}
		}})
	defer srv.Close()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss"+strings.TrimPrefix(srv.URL, "https")+Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// Nothing is read until the agent's write has timed out with the
	// socket's buffers full.
	if err := <-failed; !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("the agent's write failed with %v, want its timeout", err)
	}
	var last error
	n := 0
	for last == nil {
		_, _, last = ws.ReadMessage()
		n++
	}
	if strings.Contains(last.Error(), "bad record MAC") || !strings.Contains(last.Error(), "EOF") {
		t.Fatalf("after %d messages the reader saw %v, want an unexpected EOF", n, last)
	}
}
