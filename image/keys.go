package image

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// PEM block types of key files (PKCS#8 and PKIX, as openssl writes them).
const (
	privateKeyPEM = "PRIVATE KEY"
	publicKeyPEM  = "PUBLIC KEY"
)

// GenerateKey makes a new ed25519 signing key pair from crypto/rand.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// KeyID is a short, stable name for a public key: the first 16 hex digits
// of the sha256 of its 32 raw bytes. It names keys in manifests and error
// messages; it is not a security boundary (Verify checks signatures with
// the full keys).
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])[:keyIDLen]
}

// WriteKeyPair writes priv to path (PEM "PRIVATE KEY", PKCS#8, mode 0600)
// and pub to path+".pub" (PEM "PUBLIC KEY", PKIX, mode 0644); openssl
// reads both. It refuses to overwrite either file (the error wraps
// fs.ErrExist), and to write a pair whose halves do not match. A failure
// leaves neither file behind.
func WriteKeyPair(path string, pub ed25519.PublicKey, priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize || len(pub) != ed25519.PublicKeySize {
		return errors.New("write key pair: not an ed25519 key pair")
	}
	if !pub.Equal(priv.Public()) {
		return errors.New("write key pair: the public key is not the private key's")
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("write key pair: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("write key pair: %w", err)
	}
	pubPath := path + ".pub"
	// Check both names first, so that an existing public key does not
	// cost a freshly written private key.
	for _, p := range []string{path, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("write key pair: %s: %w (refusing to overwrite a key)", p, fs.ErrExist)
		}
	}
	if err := writeNew(path, pem.EncodeToMemory(&pem.Block{Type: privateKeyPEM, Bytes: privDER}), 0o600); err != nil {
		return fmt.Errorf("write key pair: %w", err)
	}
	if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: publicKeyPEM, Bytes: pubDER}), 0o644); err != nil {
		os.Remove(path)
		return fmt.Errorf("write key pair: %w", err)
	}
	return nil
}

// writeNew creates path, which must not exist, with data and mode perm
// (exactly, whatever the umask), and fsyncs it. On failure it removes
// what it created.
func writeNew(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm&0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// LoadPrivateKey reads an ed25519 private key from a PEM "PRIVATE KEY"
// (PKCS#8) file, as written by WriteKeyPair or `openssl genpkey -algorithm
// ed25519`.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	der, err := readPEM(path, privateKeyPEM)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key %s: a %T, not an ed25519 key", path, k)
	}
	return priv, nil
}

// LoadPublicKey reads an ed25519 public key from a PEM "PUBLIC KEY" (PKIX)
// file, as written by WriteKeyPair or `openssl pkey -pubout`.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	der, err := readPEM(path, publicKeyPEM)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key %s: a %T, not an ed25519 key", path, k)
	}
	return pub, nil
}

// readPEM returns the bytes of the first PEM block in path, which must be
// of type typ.
func readPEM(path, typ string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	what := "public key"
	if typ == privateKeyPEM {
		what = "private key"
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, fmt.Errorf("%s %s: no PEM block", what, path)
	}
	if b.Type != typ {
		return nil, fmt.Errorf("%s %s: PEM block %q, want %q", what, path, b.Type, typ)
	}
	return b.Bytes, nil
}
