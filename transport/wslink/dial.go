package wslink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
)

// Dial connects to an agent at rawURL (ws:// or wss://; an empty path means
// Path). A refused token is a *proto.Error with reason unauthorized.
func Dial(ctx context.Context, rawURL, token string, cfg Config) (*Link, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", rawURL, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("dial %s: scheme must be ws or wss", rawURL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = Path
	}
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: nil,
		ReadBufferSize: readBufferSize, WriteBufferSize: writeBufferSize, WriteBufferPool: &writeBuffers,
		NetDialContext: cfg.NetDialContext}
	if u.Scheme == "wss" {
		if cfg.VerifyKey == nil {
			return nil, fmt.Errorf("dial %s: wss:// needs Config.VerifyKey: a board's certificate is self-signed", u.Redacted())
		}
		d.TLSClientConfig = &tls.Config{
			MinVersion: tls.VersionTLS13,
			// The chain of a self-signed certificate proves nothing: the
			// key is what counts, checked by VerifyConnection.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				k, err := auth.PeerKey(cs)
				if err != nil {
					return err
				}
				return cfg.VerifyKey(k)
			},
		}
	}
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if resp != nil && resp.Body != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, proto.Errorf(proto.ReasonUnauthorized, "%s refused the token", u.Host)
		}
		// Each side of a scheme mix-up fails in its own way: say which.
		if u.Scheme == "ws" && resp != nil && resp.StatusCode == http.StatusBadRequest {
			return nil, fmt.Errorf("dial %s: %w (the agent may serve TLS: try wss://%s)", u.Redacted(), err, u.Host)
		}
		if _, plain := errors.AsType[tls.RecordHeaderError](err); u.Scheme == "wss" && plain {
			return nil, fmt.Errorf("dial %s: %w (the agent may serve plain WebSocket: try ws://%s)", u.Redacted(), err, u.Host)
		}
		return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
	}
	l := newLink(ws, cfg)
	l.peer.Addr = ws.RemoteAddr().String()
	if tc, ok := ws.NetConn().(*tls.Conn); ok {
		cs := tc.ConnectionState()
		l.peer.TLS = &cs
	}
	return l, nil
}
