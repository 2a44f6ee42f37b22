package auth

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/edwards25519"

	"github.com/boardlink/boardlink/internal/testenv"
)

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestFingerprintForms(t *testing.T) {
	k := newKey(t)
	fp := FingerprintOf(k.Public().(ed25519.PublicKey))
	for _, s := range []string{fp.String(), fp.Short(), fp.Short() + "=", hex.EncodeToString(fp[:]), strings.ToUpper(hex.EncodeToString(fp[:])), " " + fp.String() + "\n"} {
		got, err := ParseFingerprint(s)
		if err != nil || got != fp {
			t.Errorf("ParseFingerprint(%q) = %v, %v; want %v", s, got, err, fp)
		}
	}
	for _, s := range []string{"", "SHA256:", "SHA256:abc", fp.String() + "AA", "MD5:" + fp.Short(), strings.Repeat("g", 64)} {
		if _, err := ParseFingerprint(s); !errors.Is(err, ErrBadFingerprint) {
			t.Errorf("ParseFingerprint(%q) = %v, want ErrBadFingerprint", s, err)
		}
	}
	text, _ := fp.MarshalText()
	var back Fingerprint
	if err := back.UnmarshalText(text); err != nil || back != fp {
		t.Fatalf("text round trip: %v %v", back, err)
	}
}

// The fingerprint is what openssl computes from the key file, so an
// operator can check a board's with standard tools.
func TestFingerprintMatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		testenv.SkipOrFail(t, "no openssl (Debian package openssl)")
	}
	dir := t.TempDir()
	key, _, err := LoadOrCreateKey(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	der, err := exec.Command("openssl", "pkey", "-in", filepath.Join(dir, "key.pem"), "-pubout", "-outform", "der").Output()
	if err != nil {
		t.Fatalf("openssl pkey: %v", err)
	}
	if got, want := Fingerprint(sha256.Sum256(der)), FingerprintOf(key.Public().(ed25519.PublicKey)); got != want {
		t.Fatalf("openssl says %v, we say %v", got, want)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "key.pem")
	// Racing first uses agree on one key.
	keys := make([]ed25519.PrivateKey, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, _, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !k.Equal(keys[0]) {
			t.Fatal("racing first uses made different keys")
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if k, created, err := LoadOrCreateKey(path); err != nil || created || !k.Equal(keys[0]) {
		t.Fatalf("second use: created=%v err=%v", created, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(path); !errors.Is(err, ErrNotPrivate) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: %v, want a refusal naming chmod 600", err)
	}
	if err := os.WriteFile(path, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(path); err == nil {
		t.Fatal("a junk key file was accepted")
	}
}

// A real TLS handshake with the board's certificate gives the host the
// board's key, whatever name it dialed.
func TestCertificateHandshake(t *testing.T) {
	key := newKey(t)
	cert, err := Certificate(key, "lab-7", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}}
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := PeerKey(c.(*tls.Conn).ConnectionState())
	if err != nil || !got.Equal(key.Public()) {
		t.Fatalf("PeerKey = %v, %v", got, err)
	}
	if _, err := PeerKey(tls.ConnectionState{}); err == nil {
		t.Fatal("no certificate: no error")
	}
	var _ net.Conn = c
}

func TestSessionProofs(t *testing.T) {
	board, rogue, host := newKey(t), newKey(t), newKey(t)
	boardPub := board.Public().(ed25519.PublicKey)
	s := Session{HostNonce: NewNonce(), BoardNonce: NewNonce(), Board: FingerprintOf(boardPub)}

	if err := s.VerifyBoard(boardPub, s.BoardProof(board)); err != nil {
		t.Fatalf("board proof: %v", err)
	}
	// A rogue that claims the board's fingerprint cannot sign for it, nor
	// pass its own key off as the board's.
	if err := s.VerifyBoard(boardPub, s.BoardProof(rogue)); !errors.Is(err, ErrBadProof) {
		t.Fatalf("rogue signature: %v", err)
	}
	if err := s.VerifyBoard(rogue.Public().(ed25519.PublicKey), s.BoardProof(rogue)); !errors.Is(err, ErrBadProof) {
		t.Fatalf("rogue key: %v", err)
	}
	// A proof is bound to its session: other nonces refuse it.
	other := s
	other.BoardNonce = NewNonce()
	if err := other.VerifyBoard(boardPub, s.BoardProof(board)); !errors.Is(err, ErrBadProof) {
		t.Fatalf("replayed board proof: %v", err)
	}

	hostPub := host.Public().(ed25519.PublicKey)
	if err := s.VerifyHost(hostPub, s.HostProof(host)); err != nil {
		t.Fatalf("host proof: %v", err)
	}
	if err := other.VerifyHost(hostPub, s.HostProof(host)); !errors.Is(err, ErrBadProof) {
		t.Fatalf("replayed host proof: %v", err)
	}

	tokens := []string{"first-lab-host", "second-lab-host"}
	if i, err := s.VerifyToken(tokens, s.TokenProof("second-lab-host")); err != nil || i != 1 {
		t.Fatalf("token proof: %d %v", i, err)
	}
	if _, err := s.VerifyToken(tokens, s.TokenProof("guess")); !errors.Is(err, ErrBadProof) {
		t.Fatalf("wrong token: %v", err)
	}
	// What a rogue board collects is a MAC over its own key: the real
	// board refuses it.
	atRogue := s
	atRogue.Board = FingerprintOf(rogue.Public().(ed25519.PublicKey))
	if _, err := s.VerifyToken(tokens, atRogue.TokenProof("first-lab-host")); !errors.Is(err, ErrBadProof) {
		t.Fatalf("relayed token proof: %v", err)
	}
	if bytes.Contains(s.TokenProof("first-lab-host"), []byte("first-lab-host")) {
		t.Fatal("the proof holds the token")
	}
	short := s
	short.HostNonce = []byte{1}
	if _, err := short.VerifyToken(tokens, short.TokenProof(tokens[0])); !errors.Is(err, ErrBadProof) {
		t.Fatalf("short nonce: %v", err)
	}
}

func pair(t *testing.T, hostCode, boardCode string, hostSees, boardSees [2]Fingerprint) (Keys, Keys, error) {
	t.Helper()
	ctx := []byte("nonces")
	h := NewPAKE(RoleHost, hostCode, hostSees[0], hostSees[1], ctx)
	b := NewPAKE(RoleBoard, boardCode, boardSees[0], boardSees[1], ctx)
	bk, err := b.Finish(h.Message())
	if err != nil {
		return Keys{}, Keys{}, err
	}
	hk, err := h.Finish(b.Message())
	if err != nil {
		return Keys{}, Keys{}, err
	}
	if err := hk.Check(bk.Mine); err != nil {
		return hk, bk, err
	}
	return hk, bk, bk.Check(hk.Mine)
}

func TestPAKE(t *testing.T) {
	hostFP := FingerprintOf(newKey(t).Public().(ed25519.PublicKey))
	boardFP := FingerprintOf(newKey(t).Public().(ed25519.PublicKey))
	mitmFP := FingerprintOf(newKey(t).Public().(ed25519.PublicKey))
	ids := [2]Fingerprint{hostFP, boardFP}
	code := NewCode()
	if !ValidCode(code) || len(code) != 9 || code[4] != '-' {
		t.Fatalf("code %q", code)
	}
	if _, _, err := pair(t, code, code, ids, ids); err != nil {
		t.Fatalf("same code: %v", err)
	}
	// Typed in lower case, without the dash, with O for 0: the same code.
	typed := strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(code, "-", ""), "0", "o"))
	if _, _, err := pair(t, typed, code, ids, ids); err != nil {
		t.Fatalf("code as typed %q: %v", typed, err)
	}
	if _, _, err := pair(t, NewCode(), code, ids, ids); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("wrong code: %v", err)
	}
	// A man in the middle with his own key: the identities differ, and
	// the right code does not help him.
	if _, _, err := pair(t, code, code, ids, [2]Fingerprint{mitmFP, boardFP}); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("swapped host key: %v", err)
	}
	if _, _, err := pair(t, code, code, [2]Fingerprint{hostFP, mitmFP}, ids); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("swapped board key: %v", err)
	}
}

func TestPAKERefusesBadPoints(t *testing.T) {
	fp := FingerprintOf(newKey(t).Public().(ed25519.PublicKey))
	// A point of order 8 (the cofactor), and the identity.
	small, _ := hex.DecodeString("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	for name, msg := range map[string][]byte{
		"identity":    edwards25519.NewIdentityPoint().Bytes(),
		"small order": small,
		"short":       {1, 2, 3},
		"not a point": notAPoint(t),
	} {
		p := NewPAKE(RoleBoard, NewCode(), fp, fp, nil)
		if _, err := p.Finish(msg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p := NewPAKE(RoleBoard, NewCode(), fp, fp, nil)
	q := NewPAKE(RoleHost, NewCode(), fp, fp, nil)
	if _, err := p.Finish(q.Message()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Finish(q.Message()); err == nil {
		t.Fatal("a second Finish was allowed")
	}
}

// notAPoint returns 32 bytes that decode to no curve point.
func notAPoint(t *testing.T) []byte {
	for i := range 256 {
		b := make([]byte, 32)
		b[0] = byte(i)
		if _, err := new(edwards25519.Point).SetBytes(b); err != nil {
			return b
		}
	}
	t.Fatal("every candidate is a point")
	return nil
}
