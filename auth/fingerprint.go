package auth

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Fingerprint identifies a public key: the SHA-256 of its DER
// SubjectPublicKeyInfo, as openssl computes it with
// `openssl pkey -pubin -outform der | sha256sum`.
type Fingerprint [sha256.Size]byte

// fpPrefix marks the long form, as ssh writes its fingerprints.
const fpPrefix = "SHA256:"

// FingerprintOf returns the fingerprint of an ed25519 public key.
func FingerprintOf(pub ed25519.PublicKey) Fingerprint {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// Only a key of the wrong length fails, and every key here comes
		// from ed25519 or from KeyFromBytes, which checks it.
		panic(fmt.Sprintf("auth: marshal ed25519 key: %v", err))
	}
	return sha256.Sum256(der)
}

// String is the long form, SHA256:BASE64 (unpadded standard base64).
func (f Fingerprint) String() string { return fpPrefix + f.Short() }

// Short is the form without the prefix, as the mDNS TXT key fp carries it.
func (f Fingerprint) Short() string { return base64.RawStdEncoding.EncodeToString(f[:]) }

// IsZero reports whether f is unset.
func (f Fingerprint) IsZero() bool { return f == Fingerprint{} }

// Equal compares in constant time.
func (f Fingerprint) Equal(o Fingerprint) bool { return subtle.ConstantTimeCompare(f[:], o[:]) == 1 }

// MarshalText encodes the long form, for JSON files and messages.
func (f Fingerprint) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText accepts what ParseFingerprint accepts.
func (f *Fingerprint) UnmarshalText(b []byte) error {
	p, err := ParseFingerprint(string(b))
	if err != nil {
		return err
	}
	*f = p
	return nil
}

// ErrBadFingerprint is wrapped by every error of ParseFingerprint.
var ErrBadFingerprint = errors.New("bad fingerprint")

// ParseFingerprint reads a fingerprint in its long (SHA256:...) or short
// form, with or without base64 padding, or as 64 hex digits (what
// sha256sum prints).
func ParseFingerprint(s string) (Fingerprint, error) {
	var f Fingerprint
	s = strings.TrimSpace(s)
	body := strings.TrimPrefix(s, fpPrefix)
	if len(body) == hex.EncodedLen(len(f)) {
		if b, err := hex.DecodeString(body); err == nil {
			copy(f[:], b)
			return f, nil
		}
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(body, "="))
	if err != nil || len(b) != len(f) {
		return f, fmt.Errorf("%w %q: want SHA256: and 43 base64 characters, or 64 hex digits", ErrBadFingerprint, s)
	}
	copy(f[:], b)
	return f, nil
}

// KeyFromBytes checks that b is an ed25519 public key as sent on the wire
// (32 raw bytes) and returns it.
func KeyFromBytes(b []byte) (ed25519.PublicKey, error) {
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: %d bytes, want %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(append([]byte(nil), b...)), nil
}
