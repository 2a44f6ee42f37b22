package wslink

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/transport"
)

// cutListener's connections count what is written on them after a write
// that timed out.
type cutListener struct {
	net.Listener
	conns chan *cutConn
}

func (l cutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &cutConn{Conn: c}
	l.conns <- cc
	return cc, nil
}

type cutConn struct {
	net.Conn
	cut   atomic.Bool  // a write timed out
	after atomic.Int64 // bytes written since
}

func (c *cutConn) Write(p []byte) (int, error) {
	cut := c.cut.Load()
	n, err := c.Conn.Write(p)
	if cut {
		c.after.Add(int64(n))
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.cut.Store(true)
	}
	return n, err
}

// TestWriteTimeoutEndsAsEOF: a write cut off by its deadline (the peer
// reads nothing) may leave part of a TLS record on the wire. Nothing may
// be written after it: the TLS alert a close would send comes after that
// part, and the peer reads it as the rest of the record, a corrupt one
// ("tls: bad record MAC"), as the lab service did of boards whose writes
// had timed out, where it should read the connection's end. Here the
// peer starts reading once the write timed out, while the link closes.
func TestWriteTimeoutEndsAsEOF(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.Certificate(key, "board", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	timedOut, closed := make(chan error, 1), make(chan struct{})
	srv := &Server{Config: Config{WriteTimeout: 50 * time.Millisecond}, Serve: func(ctx context.Context, l *Link) {
		defer close(closed)
		msg := make([]byte, 64<<10)
		for {
			if err := l.WriteMessage(ctx, transport.Binary, msg); err != nil {
				timedOut <- err
				l.Close()
				return
			}
		}
	}}
	ts := httptest.NewUnstartedServer(srv)
	conns := make(chan *cutConn, 1)
	ts.Listener = cutListener{Listener: ts.Listener, conns: conns}
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	defer ts.Close()
	l, err := Dial(context.Background(), "wss"+strings.TrimPrefix(ts.URL, "https"), "",
		Config{VerifyKey: func(ed25519.PublicKey) error { return nil }, PongWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conn := <-conns
	// The server's writes fill both ends' socket buffers, then one times
	// out.
	if err := <-timedOut; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server's write: %v, want a timeout", err)
	}
	n := 0
	for {
		_, msg, err := l.ReadMessage()
		if err != nil {
			// The connection ends in a message, or between two (1006).
			var ce *websocket.CloseError
			if !errors.Is(err, io.ErrUnexpectedEOF) && (!errors.As(err, &ce) || ce.Code != websocket.CloseAbnormalClosure) {
				t.Errorf("after %d whole messages: %v, want the connection's end", n, err)
			}
			break
		}
		if len(msg) != 64<<10 {
			t.Fatalf("message %d: %d bytes", n, len(msg))
		}
		n++
	}
	<-closed
	if !conn.cut.Load() {
		t.Fatal("no write of the server's timed out on its connection")
	}
	if b := conn.after.Load(); b != 0 {
		t.Fatalf("%d bytes written on the connection after its write timed out", b)
	}
}
