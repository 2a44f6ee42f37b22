package wslink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
)

// handshakeTimeout bounds the TLS handshake and the upgrade.
const handshakeTimeout = 10 * time.Second

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
	h := cfg.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{HandshakeTimeout: handshakeTimeout, Proxy: nil,
		ReadBufferSize: cfg.withDefaults().ReadBufferSize, WriteBufferSize: writeBufferSize, WriteBufferPool: &writeBuffers,
		NetDialContext: cfg.NetDialContext}
	if u.Scheme == "wss" {
		if cfg.VerifyKey == nil {
			return nil, fmt.Errorf("dial %s: wss:// needs Config.VerifyKey: a board's certificate is self-signed", u.Redacted())
		}
		// The TLS handshake is made here rather than by the dialer, so
		// that Authorize sees the key it checked before the upgrade's
		// headers are written.
		conn, err := dialTLS(ctx, u, cfg)
		if err != nil {
			return nil, err
		}
		if cfg.Authorize != nil && token == "" {
			if tok := cfg.Authorize(conn.ConnectionState()); tok != "" {
				h.Set("Authorization", "Bearer "+tok)
			}
		}
		d.NetDialTLSContext = func(context.Context, string, string) (net.Conn, error) {
			if conn == nil {
				return nil, errors.New("the TLS connection was used already")
			}
			c := conn
			conn = nil
			return c, nil
		}
		defer func() {
			if conn != nil { // the dialer failed before it took it
				conn.Close()
			}
		}()
	}
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if resp != nil && resp.Body != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, proto.Errorf(proto.ReasonUnauthorized, "%s refused the token", u.Host)
		}
		if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
			// A lockout after failed proofs: the agent's answer says how long.
			why, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return nil, proto.Errorf(proto.ReasonUnauthorized, "%s: %s", u.Host,
				strings.TrimSpace(strings.TrimPrefix(string(why), "boardlink: ")))
		}
		// Each side of a scheme mix-up fails in its own way: say which.
		if u.Scheme == "ws" && resp != nil && resp.StatusCode == http.StatusBadRequest {
			return nil, fmt.Errorf("dial %s: %w (the agent may serve TLS: try wss://%s)", u.Redacted(), err, u.Host)
		}
		return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
	}
	l := newLink(ws, cfg)
	l.peer.Addr = ws.RemoteAddr().String()
	l.peer.Sent, l.peer.Answered = cfg.Header, resp.Header
	if tc, ok := ws.NetConn().(*tls.Conn); ok {
		cs := tc.ConnectionState()
		l.peer.TLS = &cs
	}
	return l, nil
}

// dialTLS opens the TCP connection of a wss:// URL and makes its TLS
// handshake, checking the board's key with cfg.VerifyKey.
func dialTLS(ctx context.Context, u *url.URL, cfg Config) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	netDial := cfg.NetDialContext
	if netDial == nil {
		netDial = (&net.Dialer{}).DialContext
	}
	raw, err := netDial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
	}
	conn := tls.Client(&batchConn{Conn: raw}, &tls.Config{
		ServerName: u.Hostname(),
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
	})
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		if _, plain := errors.AsType[tls.RecordHeaderError](err); plain {
			return nil, fmt.Errorf("dial %s: %w (the agent may serve plain WebSocket: try ws://%s)", u.Redacted(), err, u.Host)
		}
		return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
	}
	return conn, nil
}
