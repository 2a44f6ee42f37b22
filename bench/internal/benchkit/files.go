package benchkit

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteRandom writes size random bytes to the file at path, creating it
// or truncating what is there.
func WriteRandom(path string, size int64) error {
	_, err := writeRandom(path, size, os.O_TRUNC, nil)
	return err
}

// WriteRandomSum writes size random bytes to a new file at path (it fails
// if one is there), fsyncs it so that its writeback does not fall into a
// timed run that follows, and returns the bytes' SHA-256 in hex.
func WriteRandomSum(path string, size int64) (string, error) {
	return writeRandom(path, size, os.O_EXCL, sha256.New())
}

// writeRandom writes size random bytes to path, opened with
// O_CREATE|O_WRONLY|flag. With h, it also fsyncs the file and returns
// the hash of the bytes in hex.
func writeRandom(path string, size int64, flag int, h hash.Hash) (string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|flag, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var w io.Writer = f
	if h != nil {
		w = io.MultiWriter(f, h)
	}
	if _, err := io.CopyBuffer(w, io.LimitReader(rand.Reader, size), make([]byte, 1<<20)); err != nil {
		return "", err
	}
	if h == nil {
		return "", f.Close()
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), f.Close()
}

// CopyFile copies the file at from to to, creating or truncating it with
// mode 0600. It does not fsync the copy: Fsync does.
func CopyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	return out.Close()
}

// Fsync flushes the file at path to stable storage.
func Fsync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// HashFile returns the SHA-256 of the file at path, in hex.
func HashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// RemoveWithPartials removes path and the hidden partial files boardlink
// keeps beside it (".NAME.*boardlink-partial"), so that the next transfer
// to it starts from nothing. What is not there is no error.
func RemoveWithPartials(path string) error {
	esc := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(filepath.Base(path))
	partials, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+esc+".*boardlink-partial"))
	if err != nil {
		return err
	}
	for _, p := range append(partials, path) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
