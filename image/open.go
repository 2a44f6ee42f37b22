package image

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// blockSize is tar's block size; maxTrailer bounds the zeros accepted after
// the payload (the end-of-archive marker and record padding: GNU tar pads
// to 10 KiB records by default).
const (
	blockSize  = 512
	maxTrailer = 1 << 20
)

// Image is an opened image: its manifest, parsed and validated but not yet
// trusted (see Verify), and where its payload lies in the file.
type Image struct {
	// Manifest is the parsed manifest.
	Manifest Manifest
	// RawManifest is the manifest exactly as stored: the signed bytes.
	RawManifest []byte
	// Signature is the raw ed25519 signature of RawManifest.
	Signature []byte

	r      io.ReaderAt
	size   int64     // of the image file
	off    int64     // of the payload in the file
	closer io.Closer // set by OpenFile
}

// Open reads the image of size bytes in r: the three tar members in their
// fixed order (ManifestName, SignatureName, PayloadName), each a regular
// file, the manifest (ParseManifest), a 64-byte signature, a payload member
// of exactly Manifest.PayloadSize bytes lying entirely inside the file, and
// the end-of-archive marker after it, so that a truncated image is refused
// here, not halfway through an update. Anything else (other members, or
// any after the payload) is refused. It reads the headers and the
// manifest, not the payload: Verify checks the signature and
// VerifyPayload the payload.
//
// Errors about the content wrap ErrFormat; an error of r itself (other
// than reading past its end) is returned wrapped as it is. Open never
// panics, whatever the bytes. The Image reads r until it is no longer
// used; Open does not close it.
func Open(r io.ReaderAt, size int64) (*Image, error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: negative size %d", ErrFormat, size)
	}
	cr := &countingReader{r: io.NewSectionReader(r, 0, size)}
	tr := tar.NewReader(cr)
	fail := func(err error) (*Image, error) {
		if cr.err != nil {
			return nil, fmt.Errorf("open image: %w", cr.err)
		}
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}

	raw, err := readMember(tr, cr, size, ManifestName, 1, MaxManifestSize)
	if err != nil {
		return fail(err)
	}
	sig, err := readMember(tr, cr, size, SignatureName, ed25519.SignatureSize, ed25519.SignatureSize)
	if err != nil {
		return fail(err)
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return fail(err)
	}
	hdr, err := nextMember(tr, PayloadName)
	if err != nil {
		return fail(err)
	}
	if hdr.Size != m.PayloadSize {
		return fail(fmt.Errorf("member %s holds %d bytes, the manifest says %d", PayloadName, hdr.Size, m.PayloadSize))
	}
	off := cr.n
	if hdr.Size > size-off {
		return fail(fmt.Errorf("truncated: the payload needs bytes %d to %d, the file has %d bytes", off, off+hdr.Size, size))
	}
	end := off + hdr.Size
	end += (blockSize - end%blockSize) % blockSize // the payload's padding
	if err := checkTrailer(r, end, size); err != nil {
		var ioe ioError
		if errors.As(err, &ioe) {
			return nil, fmt.Errorf("open image: reading the end of the archive: %w", ioe.error)
		}
		return fail(err)
	}
	return &Image{Manifest: m, RawManifest: raw, Signature: sig, r: r, size: size, off: off}, nil
}

// nextMember reads the next tar header and checks that it is the regular
// file name.
func nextMember(tr *tar.Reader, name string) (*tar.Header, error) {
	hdr, err := tr.Next()
	switch {
	case err == io.EOF:
		return nil, fmt.Errorf("no member %s: the archive ends before it (truncated, or not an image)", name)
	case err == io.ErrUnexpectedEOF:
		return nil, fmt.Errorf("truncated: the file ends in the header of member %s", name)
	case err != nil:
		return nil, fmt.Errorf("reading the header of member %s: %v", name, err)
	}
	if hdr.Name != name {
		return nil, fmt.Errorf("member %q where %s belongs (want %s, %s, %s in this order)",
			hdr.Name, name, ManifestName, SignatureName, PayloadName)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("member %s is not a regular file (type %q)", name, hdr.Typeflag)
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return nil, fmt.Errorf("member %s is a sparse file", name)
		}
	}
	return hdr, nil
}

// readMember reads the next member, which must be the regular file name of
// minSize to maxSize bytes, all of them inside the file.
func readMember(tr *tar.Reader, cr *countingReader, fileSize int64, name string, minSize, maxSize int64) ([]byte, error) {
	hdr, err := nextMember(tr, name)
	if err != nil {
		return nil, err
	}
	if hdr.Size < minSize || hdr.Size > maxSize {
		if minSize == maxSize {
			return nil, fmt.Errorf("member %s has %d bytes, want %d", name, hdr.Size, minSize)
		}
		return nil, fmt.Errorf("member %s has %d bytes, want %d to %d", name, hdr.Size, minSize, maxSize)
	}
	if hdr.Size > fileSize-cr.n {
		return nil, fmt.Errorf("truncated: member %s needs %d bytes, %d are left", name, hdr.Size, fileSize-cr.n)
	}
	data := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, data); err != nil {
		return nil, fmt.Errorf("truncated: reading member %s: %v", name, err)
	}
	return data, nil
}

// checkTrailer checks that bytes [from, size) of r are the end-of-archive
// marker: at least two zero blocks, nothing but zeros, at most maxTrailer
// bytes.
func checkTrailer(r io.ReaderAt, from, size int64) error {
	n := size - from
	if n < 2*blockSize {
		return fmt.Errorf("truncated: %d bytes after the payload, the end-of-archive marker needs %d", max(n, 0), 2*blockSize)
	}
	if n > maxTrailer {
		return fmt.Errorf("%d bytes after the payload: more than the end of an archive", n)
	}
	buf := make([]byte, n)
	got, err := r.ReadAt(buf, from)
	switch {
	case got == len(buf):
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return fmt.Errorf("truncated: the file ends at byte %d, not %d", from+int64(got), from+n)
	case err != nil:
		return ioError{err}
	}
	if i := bytes.IndexFunc(buf, func(r rune) bool { return r != 0 }); i >= 0 {
		return fmt.Errorf("data after the payload at byte %d: only %s, %s and %s may be in an image",
			from+int64(i), ManifestName, SignatureName, PayloadName)
	}
	return nil
}

// ioError marks an error of the image's reader itself, not of its content.
type ioError struct{ error }

func (e ioError) Unwrap() error { return e.error }

// countingReader counts the bytes read from r, which is how Open learns
// the payload's offset: archive/tar reads headers and skips data through
// it, and never reads ahead. It keeps the first error of r other than EOF.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// OpenFile opens the image file path (see Open). Close the Image when done.
func OpenFile(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrFormat, path)
	}
	im, err := Open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	im.closer = f
	return im, nil
}

// Close closes the file of an Image from OpenFile; for one from Open it
// does nothing (the caller owns the reader).
func (im *Image) Close() error {
	if im.closer == nil {
		return nil
	}
	c := im.closer
	im.closer = nil
	return c.Close()
}

// Verify checks that one of keys signed the manifest. It does not read
// the payload: the manifest's digests cover it (VerifyPayload,
// VerifyChunk). Its errors wrap ErrSignature.
func (im *Image) Verify(keys []ed25519.PublicKey) error {
	_, err := VerifyManifest(im.RawManifest, im.Signature, keys)
	return err
}

// VerifyManifest parses the manifest raw (ParseManifest) and checks that
// sig is the signature of raw by one of keys, as a board does with the
// manifest and signature it is sent. Errors about the manifest wrap
// ErrFormat; a missing, malformed or untrusted signature wraps
// ErrSignature. A signature by a trusted key over a manifest whose
// key_id names another key is refused as well.
func VerifyManifest(raw, sig []byte, keys []ed25519.PublicKey) (Manifest, error) {
	m, err := ParseManifest(raw)
	if err != nil {
		return Manifest{}, err
	}
	if len(sig) != ed25519.SignatureSize {
		return Manifest{}, fmt.Errorf("%w: the signature has %d bytes, not %d", ErrSignature, len(sig), ed25519.SignatureSize)
	}
	var ids []string
	for _, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			continue // ed25519.Verify panics on those
		}
		id := KeyID(k)
		ids = append(ids, id)
		if !ed25519.Verify(k, raw, sig) {
			continue
		}
		if id != m.KeyID {
			return Manifest{}, fmt.Errorf("%w: signed by key %s, but the manifest names key %s", ErrSignature, id, m.KeyID)
		}
		return m, nil
	}
	switch {
	case len(ids) == 0:
		return Manifest{}, fmt.Errorf("%w: no trusted key to check it with", ErrSignature)
	case slices.Contains(ids, m.KeyID):
		return Manifest{}, fmt.Errorf("%w: the signature does not match the manifest (key %s): the image was altered", ErrSignature, m.KeyID)
	}
	return Manifest{}, fmt.Errorf("%w: the manifest names key %s, which is not trusted (trusted: %s)",
		ErrSignature, m.KeyID, strings.Join(ids, ", "))
}

// PayloadOffset is the offset of the payload's first byte in the image
// file; chunk i lies at PayloadOffset() plus Manifest.ChunkRange(i).
func (im *Image) PayloadOffset() int64 { return im.off }

// Size is the size of the image file.
func (im *Image) Size() int64 { return im.size }

// Payload reads the payload in place in the image file (no copy).
func (im *Image) Payload() *io.SectionReader {
	return io.NewSectionReader(im.r, im.off, im.Manifest.PayloadSize)
}

// Chunk reads chunk i of the payload in place in the image file; for i
// outside [0, len(Manifest.Chunks)) it is empty.
func (im *Image) Chunk(i int) *io.SectionReader {
	off, n := im.Manifest.ChunkRange(i)
	return io.NewSectionReader(im.r, im.off+off, n)
}

// VerifyPayload reads the whole payload once and checks every chunk and
// the whole payload against the manifest. A mismatch is an error wrapping
// ErrChecksum that names the first bad chunk and counts the others; an
// image file that became shorter since Open is an error wrapping ErrFormat.
// It checks the payload against the manifest, not the manifest against a
// key: call Verify too.
func (im *Image) VerifyPayload() error {
	m := im.Manifest
	buf := make([]byte, min(m.ChunkSize, 1<<20))
	whole := sha256.New()
	payload := im.Payload()
	var bad []int
	for i := range m.Chunks {
		sum, err := hashChunk(payload, m, i, whole, buf)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated: %v", ErrFormat, err)
		}
		if err != nil {
			return fmt.Errorf("verify payload: %w", err)
		}
		if sum != m.Chunks[i] {
			bad = append(bad, i)
		}
	}
	if len(bad) > 0 {
		i := bad[0]
		off, n := m.ChunkRange(i)
		more := ""
		if len(bad) > 1 {
			more = fmt.Sprintf(" (%d of %d chunks are bad)", len(bad), len(m.Chunks))
		}
		return fmt.Errorf("%w: chunk %d (payload bytes %d to %d) does not match its sha256 in the manifest%s",
			ErrChecksum, i, off, off+n, more)
	}
	if sum := hex.EncodeToString(whole.Sum(nil)); sum != m.PayloadSHA256 {
		return fmt.Errorf("%w: the payload's sha256 is %s, the manifest says %s", ErrChecksum, sum, m.PayloadSHA256)
	}
	return nil
}

// VerifyChunk checks data against chunk i of m: its length and its sha256.
// A mismatch, or an index m has no chunk for, is an error wrapping
// ErrChecksum.
func VerifyChunk(m Manifest, i int, data []byte) error {
	if i < 0 || i >= len(m.Chunks) {
		return fmt.Errorf("%w: no chunk %d (the manifest has %d)", ErrChecksum, i, len(m.Chunks))
	}
	if _, n := m.ChunkRange(i); int64(len(data)) != n {
		return fmt.Errorf("%w: chunk %d has %d bytes, the manifest says %d", ErrChecksum, i, len(data), n)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != m.Chunks[i] {
		return fmt.Errorf("%w: chunk %d: sha256 %s, the manifest says %s", ErrChecksum, i, got, m.Chunks[i])
	}
	return nil
}
