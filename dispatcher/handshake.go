package dispatcher

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// ErrLegacyAgent refuses an agent older than protocol 4: it cannot prove
// which board it is.
var ErrLegacyAgent = fmt.Errorf("%w: the agent cannot prove its key", ErrUntrusted)

// handshake opens the session on conn: the board proves its key, the key
// is checked, and only then the host proves its right to the board.
func (c *Client) handshake(ctx context.Context, conn *transport.Conn, l transport.Link) (proto.HelloResult, error) {
	hello, s, err := boardHello(ctx, conn, l, c.opts)
	if err != nil || hello.Authenticated {
		return hello, err // done, or an agent with --no-auth
	}
	if s == nil { // a legacy agent, allowed
		if c.opts.Token == "" {
			return hello, nil
		}
		p := proto.HelloParams{Protocol: proto.Version, Token: c.opts.Token, Client: clientName}
		if err := conn.Call(ctx, proto.MethodHello, p, &hello); err != nil {
			return hello, fmt.Errorf("session.hello: %w", err)
		}
		return hello, nil
	}
	_, err = authenticate(ctx, conn, hello.BoardID, *s, c.opts)
	hello.Authenticated = err == nil
	return hello, err
}

var clientName = "boardlink/" + version.Version

// boardHello sends session.hello with a nonce and checks what the board
// answers: its signature over the session with the key it names, the same
// key as its TLS certificate's over wss://, the board id the caller
// meant, and a key that Trust (or the Fingerprint given) accepts. It
// returns the session to authenticate in, or nil for a legacy agent when
// AllowLegacy lets it through.
func boardHello(ctx context.Context, conn *transport.Conn, l transport.Link, opts DialOptions) (proto.HelloResult, *auth.Session, error) {
	if opts.Trust == nil && opts.Fingerprint.IsZero() {
		return proto.HelloResult{}, nil, fmt.Errorf("%w: no way to check the board's key (give DialOptions.Trust or Fingerprint)", ErrUntrusted)
	}
	nonce, hello, ok := upgradeHello(l)
	if !ok {
		nonce = auth.NewNonce()
		err := conn.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: proto.Version, Client: clientName, Nonce: nonce}, &hello)
		if err != nil {
			return hello, nil, fmt.Errorf("session.hello: %w", err)
		}
	}
	if opts.BoardID != "" && hello.BoardID != opts.BoardID {
		return hello, nil, &WrongBoardError{Want: opts.BoardID, Got: hello.BoardID}
	}
	if hello.Auth == nil {
		if !opts.AllowLegacy {
			return hello, nil, fmt.Errorf("board %s runs agent %s (protocol %d): %w; update its agent",
				hello.BoardID, hello.Agent, hello.Protocol, ErrLegacyAgent)
		}
		return hello, nil, nil
	}
	key, err := auth.KeyFromBytes(hello.Auth.Key)
	if err != nil {
		return hello, nil, fmt.Errorf("board %s: %w: %w", hello.BoardID, ErrUntrusted, err)
	}
	s := auth.Session{HostNonce: nonce, BoardNonce: hello.Auth.Nonce, Board: auth.FingerprintOf(key)}
	if err := s.VerifyBoard(key, hello.Auth.Proof); err != nil {
		return hello, nil, fmt.Errorf("board %s: %w: %w", hello.BoardID, ErrUntrusted, err)
	}
	if wl, ok := l.(*wslink.Link); ok && wl.Peer().TLS != nil {
		tlsKey, err := auth.PeerKey(*wl.Peer().TLS)
		if err != nil || !tlsKey.Equal(key) {
			return hello, nil, fmt.Errorf("board %s: %w: its TLS certificate's key is not the key that signed the session", hello.BoardID, ErrUntrusted)
		}
	}
	if !opts.Fingerprint.IsZero() && !opts.Fingerprint.Equal(s.Board) {
		return hello, nil, &FingerprintError{Board: hello.BoardID, Want: opts.Fingerprint, Got: s.Board}
	}
	if opts.Trust != nil {
		if err := opts.Trust.Verify(ctx, hello.BoardID, s.Board); err != nil {
			return hello, nil, err
		}
	}
	return hello, &s, nil
}

// authenticate proves this host's right to the board: a signature with
// its key, a MAC with the token, or both (the board takes either).
func authenticate(ctx context.Context, conn *transport.Conn, board string, s auth.Session, opts DialOptions) (proto.AuthResult, error) {
	var p proto.AuthParams
	if opts.HostKey != nil {
		p.Key, p.Proof = opts.HostKey.Public().(ed25519.PublicKey), s.HostProof(opts.HostKey)
	}
	if opts.Token != "" {
		p.TokenProof = s.TokenProof(opts.Token)
	}
	if p.Key == nil && p.TokenProof == nil {
		return proto.AuthResult{}, fmt.Errorf("%w: no token given, and this host is not paired with board %s (boardlink pair %s, or --token-file)",
			ErrNoCredentials, board, board)
	}
	var res proto.AuthResult
	if err := conn.Call(ctx, proto.MethodAuth, p, &res); err != nil {
		what := "this host's key (not paired with it?)"
		switch {
		case p.Key != nil && p.TokenProof != nil:
			what = "this host's key and the token"
		case p.Key == nil:
			what = "the token"
		}
		return res, fmt.Errorf("board %s refused %s: %w", board, what, err)
	}
	return res, nil
}

// helloHeader is session.hello for a WebSocket upgrade to carry, with a
// nonce of its own (protocol.md 2.7): the agent answers it on the 101 and
// the session saves hello's round trip. Never a token: what the hello
// answers is checked as in-band, before anything of the host's is sent.
func helloHeader() http.Header {
	v, err := proto.EncodeHelloHeader(proto.HelloParams{Protocol: proto.Version, Client: clientName, Nonce: auth.NewNonce()})
	if err != nil {
		return nil // said in-band instead
	}
	return http.Header{proto.HelloHeader: {v}}
}

// upgradeHello is the hello a WebSocket link's upgrade carried: the nonce
// sent and what the agent answered. ok is false when there was none (not
// a WebSocket link, or an agent that does not answer it): hello is then
// said in-band.
func upgradeHello(l transport.Link) (nonce []byte, res proto.HelloResult, ok bool) {
	wl, isWS := l.(*wslink.Link)
	if !isWS {
		return nil, res, false
	}
	peer := wl.Peer()
	sent, answer := peer.Sent.Get(proto.HelloHeader), peer.Answered.Get(proto.HelloHeader)
	if sent == "" || answer == "" {
		return nil, res, false
	}
	var p proto.HelloParams
	if raw, err := proto.HelloHeaderJSON(sent); err != nil || json.Unmarshal(raw, &p) != nil || p.Nonce == nil {
		return nil, res, false
	}
	if raw, err := proto.HelloHeaderJSON(answer); err != nil || json.Unmarshal(raw, &res) != nil {
		return nil, proto.HelloResult{}, false
	}
	return p.Nonce, res, true
}

// pins is what a Trust that pins keys by board id (KnownBoards) can say
// without pinning anything.
type pins interface {
	Lookup(id string) (KnownBoard, bool)
}

// upgradeToken is the token a wss:// dial presents on the upgrade, which
// saves session.auth's round trip: only once the TLS handshake has shown
// the key this host expects. With a Trust, that is the key pinned for the
// board id the certificate names (and, for a dial by id, that id): a
// Fingerprint alone may come from an announcement anyone can make. With
// no Trust, the Fingerprint given is the only check there is. A board met
// for the first time, or with another key, gets nothing: the session goes
// on with hello and a MAC once its key is checked and pinned. A paired
// host proves its key in session.auth instead, so that a stale token
// cannot refuse a session its key would open.
func upgradeToken(cs tls.ConnectionState, opts DialOptions) string {
	if opts.Token == "" || opts.HostKey != nil || len(cs.PeerCertificates) == 0 {
		return ""
	}
	key, err := auth.PeerKey(cs)
	if err != nil {
		return ""
	}
	fp := auth.FingerprintOf(key)
	if !opts.Fingerprint.IsZero() && !opts.Fingerprint.Equal(fp) {
		return ""
	}
	if opts.Trust == nil {
		if opts.Fingerprint.IsZero() {
			return ""
		}
		return opts.Token
	}
	id := cs.PeerCertificates[0].Subject.CommonName
	p, ok := opts.Trust.(pins)
	if !ok || id == "" || (opts.BoardID != "" && id != opts.BoardID) {
		return ""
	}
	if b, ok := p.Lookup(id); ok && b.Fingerprint.Equal(fp) {
		return opts.Token
	}
	return ""
}
