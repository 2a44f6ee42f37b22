package wslink

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/transport"
)

// TestCloseHandshake: a Close on one end reaches the other as a normal
// closure (transport.ErrClosed), not as a broken connection.
func TestCloseHandshake(t *testing.T) {
	serverErr := make(chan error, 1)
	srv := &Server{Serve: func(ctx context.Context, l *Link) {
		for {
			if _, _, err := l.ReadMessage(); err != nil {
				serverErr <- err
				return
			}
		}
	}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	l, err := Dial(context.Background(), "ws"+strings.TrimPrefix(ts.URL, "http"), "", Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WriteMessage(context.Background(), transport.Text, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// Read on our side too, so our Close sees the peer's close frame.
	go func() {
		for {
			if _, _, err := l.ReadMessage(); err != nil {
				return
			}
		}
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-serverErr; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("server saw %v, want a normal closure", err)
	}
	if err := l.WriteMessage(context.Background(), transport.Text, []byte(`{}`)); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// A scheme mix-up says which scheme to try.
func TestSchemeMixUpIsNamed(t *testing.T) {
	plain := httptest.NewServer(&Server{Serve: func(ctx context.Context, l *Link) {}})
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(&Server{Serve: func(ctx context.Context, l *Link) {}})
	defer tlsSrv.Close()
	cfg := Config{VerifyKey: func(ed25519.PublicKey) error { return nil }}
	_, err := Dial(context.Background(), "ws"+strings.TrimPrefix(tlsSrv.URL, "https"), "", cfg)
	if err == nil || !strings.Contains(err.Error(), "try wss://") {
		t.Errorf("ws:// to a TLS agent: %v", err)
	}
	_, err = Dial(context.Background(), "wss"+strings.TrimPrefix(plain.URL, "http"), "", cfg)
	if err == nil || !strings.Contains(err.Error(), "try ws://") {
		t.Errorf("wss:// to a plain agent: %v", err)
	}
	if _, err := Dial(context.Background(), "wss"+strings.TrimPrefix(plain.URL, "http"), "", Config{}); err == nil || !strings.Contains(err.Error(), "VerifyKey") {
		t.Errorf("wss:// without VerifyKey: %v", err)
	}
}
