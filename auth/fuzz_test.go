package auth

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

func FuzzParseFingerprint(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(nil)
	fp := FingerprintOf(k.Public().(ed25519.PublicKey))
	for _, s := range []string{fp.String(), fp.Short(), "SHA256:", "", "zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseFingerprint(s)
		if err != nil {
			return
		}
		// Whatever parses prints in a form that parses back the same.
		back, err := ParseFingerprint(got.String())
		if err != nil || back != got {
			t.Fatalf("%q: %v does not round-trip: %v %v", s, got, back, err)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(nil)
	f.Add(MarshalKey(k))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKey(b)
		if err == nil && len(k) != ed25519.PrivateKeySize {
			t.Fatalf("a key of %d bytes", len(k))
		}
	})
}

// FuzzPAKEMessage feeds the board's side of a pairing whatever a host
// might send: it never panics, and what it accepts is a point.
func FuzzPAKEMessage(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(nil)
	fp := FingerprintOf(k.Public().(ed25519.PublicKey))
	f.Add(NewPAKE(RoleHost, "ABCD-EFGH", fp, fp, nil).Message())
	f.Add(make([]byte, 32))
	f.Fuzz(func(t *testing.T, msg []byte) {
		p := NewPAKE(RoleBoard, "ABCD-EFGH", fp, fp, nil)
		keys, err := p.Finish(msg)
		if err == nil && (len(keys.Mine) != 32 || keys.Check(keys.Mine) == nil) {
			t.Fatalf("accepted %x with keys %x", msg, keys)
		}
	})
}

// FuzzBoardProof feeds a host's check of a board's hello whatever a board
// might answer: never a panic, and nothing accepted but a real signature.
func FuzzBoardProof(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(nil)
	pub := k.Public().(ed25519.PublicKey)
	s := Session{HostNonce: NewNonce(), BoardNonce: NewNonce(), Board: FingerprintOf(pub)}
	f.Add([]byte(pub), s.BoardNonce, s.BoardProof(k))
	f.Add([]byte{}, []byte{1}, []byte{2})
	f.Fuzz(func(t *testing.T, key, nonce, proof []byte) {
		pk, err := KeyFromBytes(key)
		if err != nil {
			return
		}
		got := Session{HostNonce: s.HostNonce, BoardNonce: nonce, Board: FingerprintOf(pk)}
		if got.VerifyBoard(pk, proof) == nil && !ed25519.Verify(pk, got.transcript(boardLabel), proof) {
			t.Fatal("accepted a proof that does not verify")
		}
	})
}

// FuzzPeerKey feeds the key extraction of a TLS peer's certificate
// whatever DER a peer might show.
func FuzzPeerKey(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(nil)
	cert, _ := Certificate(k, "lab-7", time.Now())
	f.Add(cert.Certificate[0])
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		if pk, err := PeerKey(tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}); err == nil && len(pk) != ed25519.PublicKeySize {
			t.Fatalf("a key of %d bytes", len(pk))
		}
	})
}
