package auth

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// NonceSize is the size of the nonces each side contributes to a session.
const NonceSize = 32

// NewNonce returns NonceSize random bytes.
func NewNonce() []byte {
	b := make([]byte, NonceSize)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return b
}

// Domain-separation labels: a signature or MAC made for one purpose is
// never valid for another.
const (
	boardLabel = "boardlink board proof v1\x00"
	hostLabel  = "boardlink host proof v1\x00"
	tokenLabel = "boardlink token proof v1\x00"
)

// ErrBadProof is wrapped by every refused proof.
var ErrBadProof = errors.New("bad proof")

// Session is what both ends of one session sign or MAC: the host's nonce,
// the board's nonce and the board's key. Binding the board's key means a
// rogue board that relays a host's proof to the real board gets it
// refused there.
type Session struct {
	HostNonce  []byte
	BoardNonce []byte
	Board      Fingerprint
}

func (s Session) check() error {
	if len(s.HostNonce) != NonceSize || len(s.BoardNonce) != NonceSize {
		return fmt.Errorf("%w: nonces of %d and %d bytes, want %d", ErrBadProof, len(s.HostNonce), len(s.BoardNonce), NonceSize)
	}
	return nil
}

func (s Session) transcript(label string) []byte {
	b := make([]byte, 0, len(label)+2*NonceSize+len(s.Board))
	b = append(b, label...)
	b = append(b, s.HostNonce...)
	b = append(b, s.BoardNonce...)
	return append(b, s.Board[:]...)
}

// BoardProof is the board's signature over the session: it proves the
// board holds the key it names.
func (s Session) BoardProof(key ed25519.PrivateKey) []byte {
	return ed25519.Sign(key, s.transcript(boardLabel))
}

// VerifyBoard checks a board's proof made with pub, whose fingerprint
// must be s.Board.
func (s Session) VerifyBoard(pub ed25519.PublicKey, sig []byte) error {
	if err := s.check(); err != nil {
		return err
	}
	if !FingerprintOf(pub).Equal(s.Board) {
		return fmt.Errorf("%w: the key is not the board's", ErrBadProof)
	}
	if !ed25519.Verify(pub, s.transcript(boardLabel), sig) {
		return fmt.Errorf("%w: the board's signature does not verify", ErrBadProof)
	}
	return nil
}

// HostProof is a paired host's signature over the session.
func (s Session) HostProof(key ed25519.PrivateKey) []byte {
	return ed25519.Sign(key, s.transcript(hostLabel))
}

// VerifyHost checks a host's proof made with pub.
func (s Session) VerifyHost(pub ed25519.PublicKey, sig []byte) error {
	if err := s.check(); err != nil {
		return err
	}
	if !ed25519.Verify(pub, s.transcript(hostLabel), sig) {
		return fmt.Errorf("%w: the host's signature does not verify", ErrBadProof)
	}
	return nil
}

// TokenProof proves knowledge of token without revealing it: a MAC keyed
// with the token. A peer that is not the board named in s learns nothing
// it could present to any board.
func (s Session) TokenProof(token string) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write(s.transcript(tokenLabel))
	return m.Sum(nil)
}

// VerifyToken reports which of tokens made mac, comparing with every one
// of them in constant time so the time taken does not say which matched.
func (s Session) VerifyToken(tokens []string, mac []byte) (int, error) {
	if err := s.check(); err != nil {
		return -1, err
	}
	found := -1
	for i, t := range tokens {
		if hmac.Equal(s.TokenProof(t), mac) && found < 0 {
			found = i
		}
	}
	if found < 0 {
		return -1, fmt.Errorf("%w: no token of this board made it", ErrBadProof)
	}
	return found, nil
}

// Context is what binds a pairing to this session: both nonces.
func (s Session) Context() []byte {
	return append(append([]byte(nil), s.HostNonce...), s.BoardNonce...)
}
