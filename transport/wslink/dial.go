package wslink

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"

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
		ReadBufferSize: readBufferSize, WriteBufferSize: writeBufferSize, WriteBufferPool: &writeBuffers}
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if resp != nil && resp.Body != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, proto.Errorf(proto.ReasonUnauthorized, "%s refused the token", u.Host)
		}
		return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
	}
	return newLink(ws, cfg), nil
}
