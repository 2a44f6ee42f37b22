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

// tapListener wraps each connection it accepts and hands the wrapper to
// the test on conns.
type tapListener[C net.Conn] struct {
	net.Listener
	wrap  func(net.Conn) C
	conns chan C
}

func (l tapListener[C]) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	w := l.wrap(c)
	l.conns <- w
	return w, nil
}

// cutConn counts what is written on it after a write that timed out.
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
	// Its messages, 64 KiB, are batched on a BatchListener's connection
	// (see batchConn): a batch's write that timed out must end it as well.
	for _, batched := range []bool{false, true} {
		t.Run(map[bool]string{false: "records", true: "batched"}[batched], func(t *testing.T) {
			writeTimeoutEndsAsEOF(t, batched)
		})
	}
}

func writeTimeoutEndsAsEOF(t *testing.T, batched bool) {
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
	ts.Listener = tapListener[*cutConn]{Listener: ts.Listener, conns: conns,
		wrap: func(c net.Conn) *cutConn { return &cutConn{Conn: c} }}
	if batched {
		ts.Listener = BatchListener(ts.Listener)
	}
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

// TestPongBehindALongWrite: a ping that arrives while the link's writer
// is stuck in a long write (the peer reads nothing for a while) is
// answered once the write goes through, as late as WriteTimeout allows,
// and the reader goes on meanwhile. gorilla's own handler would hold the
// reader for a second, then drop the pong without a word: a loaded host
// lost live links that way, their peers' pongs missing.
func TestPongBehindALongWrite(t *testing.T) {
	const big = 32 << 20 // more than both ends' socket buffers hold
	readAfter, wrote := make(chan struct{}), make(chan error, 1)
	srv := &Server{Config: Config{PingInterval: time.Hour}, Serve: func(ctx context.Context, l *Link) {
		reading := make(chan struct{})
		go func() {
			defer close(reading)
			for {
				_, msg, err := l.ReadMessage()
				if err != nil {
					return
				}
				if string(msg) == "after" {
					close(readAfter)
				}
			}
		}()
		err := l.WriteMessage(ctx, transport.Binary, make([]byte, big))
		if err == nil {
			err = l.WriteMessage(ctx, transport.Text, []byte("end"))
		}
		wrote <- err
		<-reading
	}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pongs, second := make(chan string, 2), make(chan struct{})
	c.SetPongHandler(func(p string) error {
		pongs <- p
		if p == "2" {
			close(second)
		}
		return nil
	})
	// The big message has begun: the server's writer holds the
	// connection until this end reads it all.
	typ, r, err := c.NextReader()
	if err != nil || typ != websocket.BinaryMessage {
		t.Fatalf("first message: %v %v", typ, err)
	}
	if err := c.WriteControl(websocket.PingMessage, []byte("1"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("after")); err != nil {
		t.Fatal(err)
	}
	<-readAfter // the server's reader got past the ping
	n, err := io.Copy(io.Discard, r)
	if err != nil || n != big {
		t.Fatalf("big message: %d bytes, %v", n, err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "end" {
		t.Fatalf("after the big message: %q %v", msg, err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("the server's writes: %v", err)
	}
	if err := c.WriteControl(websocket.PingMessage, []byte("2"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, _, err := c.NextReader(); err != nil {
				return
			}
		}
	}()
	<-second
	if p := <-pongs; p != "1" {
		t.Fatalf("first pong %q: the ping that came during the long write was not answered", p)
	}
}
