package dispatcher

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// PairOptions configure Pair.
type PairOptions struct {
	// HostKey is this host's key, which the board stores (required).
	HostKey ed25519.PrivateKey
	// Name is how the board lists this host (required).
	Name string
	// Known receives the board's key, pinned as paired (required). A
	// board it knows by another key is refused, as Dial refuses it.
	Known *KnownBoards
	// Fingerprint and BoardID, when set, are the key and the id the
	// board must have.
	Fingerprint auth.Fingerprint
	BoardID     string
	// Code asks for the code the board shows, once it shows it.
	Code   func(ctx context.Context, board string, begin proto.PairBeginResult) (string, error)
	Logger *slog.Logger
}

// PairResult names the board paired with.
type PairResult struct {
	BoardID     string
	Fingerprint auth.Fingerprint
}

// Pair pairs this host with the board at addr: the board makes a one-time
// code and shows it on its console (or `boardlinkd pair` printed one),
// Code asks for it, and a SPAKE2 exchange bound to both keys proves that
// both ends saw the same code. Both sides then store the other's key: no
// token is needed between them afterwards. A wrong code is an error
// wrapping auth.ErrWrongCode.
func Pair(ctx context.Context, addr string, opts PairOptions) (PairResult, error) {
	if opts.HostKey == nil || opts.Known == nil || opts.Code == nil || opts.Name == "" {
		return PairResult{}, errors.New("pair: HostKey, Known, Code and Name are required")
	}
	known := opts.Known
	// Trust a board this host knows only by its key; a new one is pinned
	// by the pairing, not before.
	trust := TrustFunc(func(id string, fp auth.Fingerprint) error {
		if e, ok := known.Lookup(id); ok && !e.Fingerprint.Equal(fp) {
			return &KeyChangedError{ID: id, Pinned: e.Fingerprint, Got: fp, Paired: e.Paired, Location: known.location()}
		}
		return nil
	})
	p, err := openProbe(ctx, addr, DialOptions{Trust: trust, Fingerprint: opts.Fingerprint, BoardID: opts.BoardID, Logger: opts.Logger})
	if err != nil {
		return PairResult{}, err
	}
	defer p.close()
	conn, hello, s := p.conn, p.hello, p.sess
	hostPub := opts.HostKey.Public().(ed25519.PublicKey)
	var begin proto.PairBeginResult
	if err := conn.Call(ctx, proto.MethodPairBegin, proto.PairBeginParams{Key: hostPub, Name: opts.Name}, &begin); err != nil {
		return PairResult{}, fmt.Errorf("board %s: %w", hello.BoardID, err)
	}
	code, err := opts.Code(ctx, hello.BoardID, begin)
	if err != nil {
		return PairResult{}, err
	}
	if !auth.ValidCode(code) {
		return PairResult{}, fmt.Errorf("%q is not a pairing code (8 letters and digits, as XXXX-XXXX)", code)
	}
	pake := auth.NewPAKE(auth.RoleHost, code, auth.FingerprintOf(hostPub), s.Board, s.Context())
	var ex proto.PairExchangeResult
	if err := conn.Call(ctx, proto.MethodPairExchange, proto.PairExchangeParams{Message: pake.Message()}, &ex); err != nil {
		return PairResult{}, fmt.Errorf("board %s: %w", hello.BoardID, err)
	}
	keys, err := pake.Finish(ex.Message)
	if err != nil {
		return PairResult{}, fmt.Errorf("board %s: %w", hello.BoardID, err)
	}
	if err := keys.Check(ex.Confirm); err != nil {
		return PairResult{}, fmt.Errorf("board %s: %w (or the exchange was tampered with); nothing was stored", hello.BoardID, err)
	}
	var done proto.PairConfirmResult
	if err := conn.Call(ctx, proto.MethodPairConfirm, proto.PairConfirmParams{Confirm: keys.Mine}, &done); err != nil {
		return PairResult{}, fmt.Errorf("board %s: %w", hello.BoardID, err)
	}
	if err := known.Pin(ctx, hello.BoardID, s.Board, true); err != nil {
		return PairResult{}, fmt.Errorf("board %s paired, but its key could not be stored: %w", hello.BoardID, err)
	}
	return PairResult{BoardID: hello.BoardID, Fingerprint: s.Board}, nil
}

// TrustFunc adapts a function that does not wait to Trust.
type TrustFunc func(boardID string, fp auth.Fingerprint) error

// Verify calls f.
func (f TrustFunc) Verify(_ context.Context, boardID string, fp auth.Fingerprint) error {
	return f(boardID, fp)
}

// DefaultHostKeyPath is $XDG_CONFIG_HOME/boardlink/host_key.pem.
func DefaultHostKeyPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("host key: %w", err)
	}
	return filepath.Join(dir, "boardlink", "host_key.pem"), nil
}

// Identify opens a session with the board at addr only as far as the
// board's proof of its key, checked with opts (its Trust, Fingerprint and
// BoardID), and returns the board's id and key: for boardlink trust, which
// needs no credentials.
func Identify(ctx context.Context, addr string, opts DialOptions) (PairResult, error) {
	p, err := openProbe(ctx, addr, opts)
	if err != nil {
		return PairResult{}, err
	}
	p.close()
	return PairResult{BoardID: p.hello.BoardID, Fingerprint: p.sess.Board}, nil
}

// probe is a connection on which the board has proved its key, and
// nothing more.
type probe struct {
	c     *Client
	conn  *transport.Conn
	hello proto.HelloResult
	sess  *auth.Session
}

func openProbe(ctx context.Context, addr string, opts DialOptions) (*probe, error) {
	c, err := newClient(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	if c.opts.Logger == nil {
		c.opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := &probe{c: c}
	l, err := c.redial(ctx)
	if err != nil {
		p.close()
		return nil, err
	}
	p.conn = transport.NewConn(l, transport.Config{Client: true, Logger: c.opts.Logger})
	p.conn.Start()
	if p.hello, p.sess, err = boardHello(ctx, p.conn, l, c.opts); err != nil {
		p.close()
		return nil, err
	}
	if p.sess == nil {
		p.close()
		return nil, fmt.Errorf("board %s: %w", p.hello.BoardID, ErrLegacyAgent)
	}
	return p, nil
}

func (p *probe) close() {
	if p.conn != nil {
		p.conn.Close()
	}
	if p.c.line != nil {
		p.c.line.Close()
	}
}
