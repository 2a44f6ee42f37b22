package auth

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"filippo.io/edwards25519"
)

// SPAKE2 (RFC 9382) over edwards25519 with SHA-256, HKDF and HMAC: two
// parties who share a short code agree on keys, and each learns whether
// the other knew the code, while an attacker, even one in the middle,
// gets one guess per exchange and nothing to test guesses against
// offline. Pairing binds both parties' key fingerprints as the SPAKE2
// identities, so the keys a pairing stores are the keys that took part.

// Role says which side of the exchange a party is: the host (A), who
// speaks first, or the board (B).
type Role int

// Roles.
const (
	RoleHost Role = iota
	RoleBoard
)

// pakeLabel separates this use of SPAKE2 from any other with the same
// curve, and is the seed of M and N.
const pakeLabel = "boardlink pairing v1"

var (
	pakeOnce sync.Once
	pakeM    *edwards25519.Point
	pakeN    *edwards25519.Point
)

// pakePoints derives M and N by hashing a public seed to the curve (try
// and increment, then clearing the cofactor), so that nobody knows their
// discrete logarithms.
func pakePoints() (m, n *edwards25519.Point) {
	pakeOnce.Do(func() {
		pakeM, pakeN = hashToPoint(pakeLabel+" M"), hashToPoint(pakeLabel+" N")
	})
	return pakeM, pakeN
}

func hashToPoint(seed string) *edwards25519.Point {
	for i := uint32(0); ; i++ {
		var ctr [4]byte
		binary.BigEndian.PutUint32(ctr[:], i)
		h := sha512.Sum512(append([]byte(seed), ctr[:]...))
		p, err := new(edwards25519.Point).SetBytes(h[:32])
		if err != nil {
			continue
		}
		p.MultByCofactor(p)
		if p.Equal(edwards25519.NewIdentityPoint()) == 0 {
			return p
		}
	}
}

// ErrWrongCode is the refusal of a pairing whose codes differed (or whose
// messages were changed on the way).
var ErrWrongCode = errors.New("wrong pairing code")

// PAKE is one party's side of one exchange. Use it once.
type PAKE struct {
	role    Role
	w, x    *edwards25519.Scalar
	msg     []byte
	ids     [2][]byte // A (host), B (board)
	context []byte
	done    bool
}

// NewPAKE starts an exchange for code between the host and the board
// whose key fingerprints are host and board, bound to context (the
// session's nonces), as role.
func NewPAKE(role Role, code string, host, board Fingerprint, context []byte) *PAKE {
	wh := sha512.Sum512([]byte(pakeLabel + " code\x00" + NormalizeCode(code)))
	w, _ := edwards25519.NewScalar().SetUniformBytes(wh[:])
	var xb [64]byte
	_, _ = rand.Read(xb[:])
	x, _ := edwards25519.NewScalar().SetUniformBytes(xb[:])
	m, n := pakePoints()
	blind := m
	if role == RoleBoard {
		blind = n
	}
	// msg = x*G + w*blind, in constant time: x is secret.
	p := new(edwards25519.Point).ScalarBaseMult(x)
	p.Add(p, new(edwards25519.Point).ScalarMult(w, blind))
	return &PAKE{role: role, w: w, x: x, msg: p.Bytes(), ids: [2][]byte{host[:], board[:]}, context: context}
}

// Message is what this party sends the other.
func (p *PAKE) Message() []byte { return p.msg }

// Keys are the confirmations of an exchange: Mine goes to the other
// party; Peer is what the other party must send.
type Keys struct {
	Mine, Peer []byte
}

// Finish takes the other party's message and returns the confirmations.
// A malformed message (not a point, or one of small order) is an error.
func (p *PAKE) Finish(peer []byte) (Keys, error) {
	if p.done {
		return Keys{}, errors.New("pairing exchange already finished")
	}
	p.done = true
	q, err := new(edwards25519.Point).SetBytes(peer)
	if err != nil {
		return Keys{}, fmt.Errorf("pairing message: not a curve point: %w", err)
	}
	if new(edwards25519.Point).MultByCofactor(q).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return Keys{}, errors.New("pairing message: a point of small order")
	}
	m, n := pakePoints()
	unblind := n // the host removes the board's blinding, and the other way round
	if p.role == RoleBoard {
		unblind = m
	}
	// K = h*x*(peer - w*unblind)
	k := new(edwards25519.Point).ScalarMult(p.w, unblind)
	k.Subtract(q, k)
	k.ScalarMult(p.x, k)
	k.MultByCofactor(k)
	pA, pB := p.msg, peer
	if p.role == RoleBoard {
		pA, pB = peer, p.msg
	}
	var tt []byte
	for _, part := range [][]byte{p.ids[0], p.ids[1], pA, pB, k.Bytes(), p.w.Bytes()} {
		tt = binary.LittleEndian.AppendUint64(tt, uint64(len(part)))
		tt = append(tt, part...)
	}
	h := sha256.Sum256(tt)
	ka := h[16:]
	kc, err := hkdf.Key(sha256.New, ka, nil, "ConfirmationKeys"+string(p.context), 32)
	if err != nil {
		return Keys{}, err
	}
	mac := func(key []byte) []byte {
		m := hmac.New(sha256.New, key)
		m.Write(tt)
		return m.Sum(nil)
	}
	cA, cB := mac(kc[:16]), mac(kc[16:])
	if p.role == RoleHost {
		return Keys{Mine: cA, Peer: cB}, nil
	}
	return Keys{Mine: cB, Peer: cA}, nil
}

// Check compares the other party's confirmation with the expected one.
func (k Keys) Check(got []byte) error {
	if !hmac.Equal(k.Peer, got) {
		return ErrWrongCode
	}
	return nil
}
