package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
)

// keyPEMType is the PEM block of a private key: PKCS #8, as openssl
// genpkey writes it, so `openssl pkey -in KEY -pubout` reads it.
const keyPEMType = "PRIVATE KEY"

// MarshalKey encodes key as PEM (PKCS #8).
func MarshalKey(key ed25519.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(fmt.Sprintf("auth: marshal ed25519 key: %v", err)) // cannot fail for a well-formed key
	}
	return pem.EncodeToMemory(&pem.Block{Type: keyPEMType, Bytes: der})
}

// ParseKey decodes a PEM (PKCS #8) ed25519 private key.
func ParseKey(b []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != keyPEMType {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key: %T, want ed25519", k)
	}
	return ek, nil
}

// LoadOrCreateKey reads the ed25519 key at path, making one on first use
// (mode 0600, in a directory of mode 0700 if it has to make it). Two
// processes that race on the first use end with the same key: the file
// is linked into place only if nothing is there yet. A key file that
// others may read is refused, as ssh refuses one.
func LoadOrCreateKey(path string) (key ed25519.PrivateKey, created bool, err error) {
	if key, err = LoadKey(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("key %s: %w", path, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("key %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return nil, false, fmt.Errorf("key %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(MarshalKey(priv))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, false, fmt.Errorf("key %s: %w", path, err)
	}
	switch err := os.Link(tmp, path); {
	case err == nil:
		if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
			return nil, false, fmt.Errorf("key %s: %w", path, err)
		}
		return priv, true, nil
	case errors.Is(err, fs.ErrExist):
		key, err := LoadKey(path) // another process was first
		return key, false, err
	default:
		return nil, false, fmt.Errorf("key %s: %w", path, err)
	}
}

// LoadKey reads the ed25519 key at path, refusing a file that others may
// read or write.
func LoadKey(path string) (ed25519.PrivateKey, error) {
	if err := CheckPrivate(path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	return k, nil
}

// ErrNotPrivate is wrapped by CheckPrivate's refusal.
var ErrNotPrivate = errors.New("readable by others")

// CheckPrivate refuses a secret's file (a key, a token) that a group or
// other users may access, naming the fix.
func CheckPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is %w (mode %04o): it holds a secret; run chmod 600 %s", path, ErrNotPrivate, perm, path)
	}
	return nil
}

// certValidity is how long a board's certificate claims to be valid. The
// host pins the key, not the certificate, and the certificate is made
// anew at every start, so its dates only have to please TLS libraries.
const certValidity = 10 * 365 * 24 * time.Hour

// Certificate returns a self-signed TLS certificate for key, naming the
// board id as its subject (and as a DNS name where it is a valid one),
// dated from an hour before now so that a board whose clock lags a little
// behind the host's is not refused by strict clients.
func Certificate(key ed25519.PrivateKey, id string, now time.Time) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: id, Organization: []string{"boardlink"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if id != "" {
		tmpl.DNSNames = []string{id}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// PeerKey returns the ed25519 key of the certificate a TLS peer showed.
// Its signature chain is not checked: a board's certificate is
// self-signed, and the host pins the key, which the TLS handshake proved
// the peer holds.
func PeerKey(cs tls.ConnectionState) (ed25519.PublicKey, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("the peer showed no certificate")
	}
	k, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("the peer's certificate holds a %T key, want ed25519", cs.PeerCertificates[0].PublicKey)
	}
	return k, nil
}
