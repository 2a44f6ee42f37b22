package wslink

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/proto"
)

// Server upgrades authorized requests at Path and hands each connection's
// Link to Serve, in the request's goroutine.
type Server struct {
	// Token, when non-empty, must arrive as "Authorization: Bearer TOKEN".
	Token string
	// Check, when set, runs before the upgrade (after the Token check): it
	// refuses a request by answering it and returning false. What it
	// returns as info reaches Serve as the link's Peer().Info, and the
	// headers it sets on w go out on the 101.
	Check func(w http.ResponseWriter, r *http.Request) (info any, ok bool)
	// Serve runs one connection; the link is closed when it returns.
	Serve func(ctx context.Context, l *Link)
	// Context, when set, is the parent of every connection's context, so
	// canceling it (agent shutdown) ends every connection.
	Context context.Context
	Config  Config
}

// Authorized reports whether r carries the token. Both sides are hashed
// first so the comparison takes the same time whatever their lengths.
func Authorized(r *http.Request, token string) bool {
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !Authorized(r, s.Token) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="boardlink"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"error": proto.Errorf(proto.ReasonUnauthorized, "missing or wrong bearer token"),
		})
		return
	}
	var info any
	if s.Check != nil {
		var ok bool
		if info, ok = s.Check(w, r); !ok {
			return
		}
	}
	up := websocket.Upgrader{HandshakeTimeout: 10 * time.Second,
		ReadBufferSize: readBufferSize, WriteBufferSize: writeBufferSize, WriteBufferPool: &writeBuffers}
	// What Check set on w's headers (a negotiation on the upgrade) goes
	// out on the 101.
	ws, err := up.Upgrade(w, r, w.Header())
	if err != nil {
		return // Upgrade has already answered with an HTTP error
	}
	l := newLink(ws, s.Config)
	l.peer = Peer{Addr: r.RemoteAddr, TLS: r.TLS, Info: info}
	defer l.Close()
	parent := s.Context
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
			_ = l.Close()
		case <-l.closing:
		}
	}()
	s.Serve(ctx, l)
}
