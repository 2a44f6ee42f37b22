package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
)

// BuildOptions are what Build needs besides the payload.
type BuildOptions struct {
	// Key signs the manifest; its public key's KeyID goes in the manifest.
	Key ed25519.PrivateKey
	// Models are the board models the image fits (at least one).
	Models []string
	// Version is the payload's version (see ValidVersion).
	Version string
	// ChunkSize is the chunk size, a power of two from MinChunkSize to
	// MaxChunkSize; 0 means DefaultChunkSize.
	ChunkSize int64
	// Created is the build time recorded in the manifest and the tar
	// headers, kept to the second in UTC; zero means now. A fixed Created
	// makes builds reproducible: the same inputs give the same bytes.
	Created time.Time
}

// bytesPerChunk bounds what one chunk costs in the indented manifest
// (4 spaces, a quoted digest, a comma and a newline), for refusing an
// image with too many chunks before hashing it.
const bytesPerChunk = 4 + 66 + 2

// Build writes an image of the size bytes of payload to w and returns its
// manifest. It reads payload twice, sequentially: once to hash it (the
// chunk digests and the whole payload's digest go into the manifest, which
// precedes the payload in the file), and once to copy it into the image,
// hashing it again on the way so that a payload that changes in between is
// an error, not a broken image. Memory use does not grow with the payload:
// a 1 GiB payload costs a copy buffer and the manifest.
//
// Invalid options (no models, a bad version or chunk size, an empty
// payload, more chunks than fit in MaxManifestSize) are refused with an
// error wrapping ErrFormat before anything is read or written. A payload
// shorter than size is an error wrapping io.ErrUnexpectedEOF. On error, w
// holds a partial image: BuildFile writes to a temporary file for that.
func Build(w io.Writer, payload io.ReaderAt, size int64, opts BuildOptions) (Manifest, error) {
	if len(opts.Key) != ed25519.PrivateKeySize {
		return Manifest{}, errors.New("build image: no ed25519 signing key")
	}
	chunk := opts.ChunkSize
	if chunk == 0 {
		chunk = DefaultChunkSize
	}
	created := opts.Created
	if created.IsZero() {
		created = time.Now()
	}
	m := Manifest{
		Format:      Format,
		Models:      opts.Models,
		Version:     opts.Version,
		PayloadSize: size,
		ChunkSize:   chunk,
		Created:     created.UTC().Truncate(time.Second),
		KeyID:       KeyID(opts.Key.Public().(ed25519.PublicKey)),
	}
	// Validate the options with placeholder digests, before reading the
	// payload: the chunk count must be checked before it is allocated.
	placeholder := strings.Repeat("0", 64)
	m.PayloadSHA256 = placeholder
	if ValidChunkSize(chunk) && size > 0 {
		n := chunkCount(size, chunk)
		if n > MaxManifestSize/bytesPerChunk {
			return Manifest{}, formatErrorf("build image: %d chunks of %d bytes: more than a manifest holds (%d); use a larger chunk size",
				n, chunk, MaxManifestSize/bytesPerChunk)
		}
		m.Chunks = make([]string, n)
		for i := range m.Chunks {
			m.Chunks[i] = placeholder
		}
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}

	buf := make([]byte, min(chunk, 1<<20))
	whole := sha256.New()
	for i := range m.Chunks {
		sum, err := hashChunk(payload, m, i, whole, buf)
		if err != nil {
			return Manifest{}, fmt.Errorf("build image: read payload: %w", err)
		}
		m.Chunks[i] = sum
	}
	m.PayloadSHA256 = hex.EncodeToString(whole.Sum(nil))

	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	raw = append(raw, '\n')
	if len(raw) > MaxManifestSize {
		return Manifest{}, formatErrorf("build image: a manifest of %d bytes: more than %d; use a larger chunk size", len(raw), MaxManifestSize)
	}
	sig := ed25519.Sign(opts.Key, raw)

	tw := tar.NewWriter(w)
	member := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg,
			Name:     name,
			Mode:     0o644,
			Size:     size,
			ModTime:  m.Created,
		})
	}
	if err := member(ManifestName, int64(len(raw))); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if _, err := tw.Write(raw); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := member(SignatureName, int64(len(sig))); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if _, err := tw.Write(sig); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := member(PayloadName, size); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	for i := range m.Chunks {
		sum, err := hashChunk(payload, m, i, tw, buf)
		if err != nil {
			return Manifest{}, fmt.Errorf("build image: copy payload: %w", err)
		}
		if sum != m.Chunks[i] {
			return Manifest{}, fmt.Errorf("build image: the payload changed while the image was being built (chunk %d)", i)
		}
	}
	if err := tw.Close(); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	return m, nil
}

// hashChunk reads chunk i of payload (laid out by m) through buf, writes it
// to also and returns its sha256 in hex.
func hashChunk(payload io.ReaderAt, m Manifest, i int, also io.Writer, buf []byte) (string, error) {
	off, n := m.ChunkRange(i)
	h := sha256.New()
	var dst io.Writer = h
	if also != nil {
		dst = multiWriter{h, also}
	}
	got, err := io.CopyBuffer(dst, io.NewSectionReader(payload, off, n), buf)
	if err == nil && got < n {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return "", fmt.Errorf("chunk %d: %w", i, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// multiWriter writes to a hash, which never fails, and then to w.
type multiWriter struct {
	h hash.Hash
	w io.Writer
}

func (mw multiWriter) Write(p []byte) (int, error) {
	mw.h.Write(p)
	return mw.w.Write(p)
}

// BuildFile builds an image of the file payloadPath (a regular file) into
// the file out, atomically: it writes a temporary file beside out, fsyncs
// it, renames it over out and fsyncs the directory, so that out is either
// untouched or the complete image, whatever happens. The image is mode
// 0644. It refuses an out that is the payload file itself.
func BuildFile(out, payloadPath string, opts BuildOptions) (Manifest, error) {
	pf, err := os.Open(payloadPath)
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	defer pf.Close()
	st, err := pf.Stat()
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return Manifest{}, fmt.Errorf("build image: payload %s is not a regular file (%s)", payloadPath, st.Mode().Type())
	}
	if ost, err := os.Stat(out); err == nil && os.SameFile(st, ost) {
		return Manifest{}, fmt.Errorf("build image: %s is the payload itself", out)
	}
	dir, base := filepath.Split(out)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	m, err := Build(bw, pf, st.Size(), opts)
	if err != nil {
		return Manifest{}, err
	}
	if err := bw.Flush(); err != nil {
		return Manifest{}, fmt.Errorf("build image: write %s: %w", out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := f.Sync(); err != nil {
		return Manifest{}, fmt.Errorf("build image: sync %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return Manifest{}, fmt.Errorf("build image: write %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	ok = true
	if err := atomicfile.SyncDir(dir); err != nil {
		return Manifest{}, fmt.Errorf("build image: sync directory of %s: %w", out, err)
	}
	return m, nil
}

// BuildBytes builds an image of payload in memory and opens it: for small
// images (tests, demos) that never need a file.
func BuildBytes(payload []byte, opts BuildOptions) (*Image, error) {
	var buf bytes.Buffer
	if _, err := Build(&buf, bytes.NewReader(payload), int64(len(payload)), opts); err != nil {
		return nil, err
	}
	return Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
}
