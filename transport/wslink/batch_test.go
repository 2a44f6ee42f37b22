package wslink

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// countConn counts the writes made on it.
type countConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestBatchedMessages: over wss://, a bulk frame (256 KiB) goes out in one
// write of the TCP connection, from the side that dialled and from a
// BatchListener's, where crypto/tls alone writes each of its 17 records
// apart; the messages arrive whole and in order, also while both ends
// ping every millisecond (pongs join a batch under way), and a small
// message goes out as before.
func TestBatchedMessages(t *testing.T) {
	t.Run("writes", func(t *testing.T) {
		client, server := echoBulk(t, Config{PingInterval: time.Hour, PongWait: time.Hour})
		if client != 1 || server != 1 {
			t.Fatalf("writes per 256 KiB message: client %d, server %d; want 1", client, server)
		}
	})
	t.Run("pings", func(t *testing.T) {
		echoBulk(t, Config{PingInterval: time.Millisecond, PongWait: time.Minute})
	})
}

// echoBulk has a client send bulk frames over wss:// to a server that
// echoes each, checks them, and returns the most writes either end's TCP
// connection took for one.
func echoBulk(t *testing.T, cfg Config) (clientMax, serverMax int64) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.Certificate(key, "board", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 20
	msg := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, proto.MaxBulkFrame) }
	ts := httptest.NewUnstartedServer(&Server{Config: cfg, Serve: func(ctx context.Context, l *Link) {
		for i := range rounds {
			_, m, err := l.ReadMessage()
			if err != nil || !bytes.Equal(m, msg(i)) {
				t.Errorf("server, message %d: %d bytes, %v", i, len(m), err)
				return
			}
			if err := l.WriteMessage(ctx, transport.Binary, m); err != nil {
				t.Errorf("server, message %d: %v", i, err)
				return
			}
		}
		// Once asked: the count of the last echo's writes is made.
		if _, m, err := l.ReadMessage(); err != nil || string(m) != "more?" {
			t.Errorf("server, the last message: %q %v", m, err)
			return
		}
		if err := l.WriteMessage(ctx, transport.Text, []byte("small")); err != nil {
			t.Error(err)
		}
		<-ctx.Done()
	}})
	conns := make(chan *countConn, 1)
	ts.Listener = BatchListener(tapListener[*countConn]{Listener: ts.Listener, conns: conns,
		wrap: func(c net.Conn) *countConn { return &countConn{Conn: c} }})
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	defer ts.Close()
	var client *countConn
	cfg.VerifyKey = func(ed25519.PublicKey) error { return nil }
	cfg.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		client = &countConn{Conn: c}
		return client, err
	}
	l, err := Dial(context.Background(), "wss"+strings.TrimPrefix(ts.URL, "https"), "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	server := <-conns
	ctx := context.Background()
	for i := range rounds {
		before, sbefore := client.writes.Load(), server.writes.Load()
		if err := l.WriteMessage(ctx, transport.Binary, msg(i)); err != nil {
			t.Fatal(err)
		}
		clientMax = max(clientMax, client.writes.Load()-before)
		_, m, err := l.ReadMessage()
		if err != nil || !bytes.Equal(m, msg(i)) {
			t.Fatalf("client, message %d: %d bytes, %v", i, len(m), err)
		}
		serverMax = max(serverMax, server.writes.Load()-sbefore)
	}
	if err := l.WriteMessage(ctx, transport.Text, []byte("more?")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := l.ReadMessage(); err != nil || string(m) != "small" {
		t.Fatalf("the small message: %q %v", m, err)
	}
	return clientMax, serverMax
}
