package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode"
)

// Format is the image format this package writes and reads: the manifest's
// "format" field. A manifest of another format is refused with ErrFormat.
const Format = 1

// The tar members of an image, in the order they must appear.
const (
	ManifestName  = "manifest.json" // the manifest, the signed bytes
	SignatureName = "manifest.sig"  // the raw 64-byte ed25519 signature of the manifest
	PayloadName   = "payload"       // the payload
)

// Chunk sizes: a power of two from MinChunkSize to MaxChunkSize;
// DefaultChunkSize when BuildOptions leaves it 0.
const (
	DefaultChunkSize = 1 << 20
	MinChunkSize     = 4 << 10
	MaxChunkSize     = 64 << 20
)

// MaxManifestSize bounds the manifest (it is read into memory and sent to
// the board in one message). It allows about 58,000 chunks: 56 GiB of
// payload at the default chunk size.
const MaxManifestSize = 4 << 20

// Limits on the manifest's strings.
const (
	maxModelLen   = 249 // a model must fit an mDNS TXT entry "model=MODEL" (255 bytes)
	maxVersionLen = 128
	keyIDLen      = 16
)

// Sentinel errors; every error of this package that is about an image's
// content wraps one of them.
var (
	// ErrFormat: not an image, a truncated or malformed one, or a
	// manifest that breaks an invariant.
	ErrFormat = errors.New("not a valid boardlink image")
	// ErrSignature: the manifest is not signed by any trusted key.
	ErrSignature = errors.New("bad image signature")
	// ErrChecksum: a chunk or the payload does not match the manifest.
	ErrChecksum = errors.New("image checksum mismatch")
)

// formatError is an error that wraps ErrFormat without repeating its text,
// for the errors of Validate and ParseManifest, which are as much about a
// manifest being built as about an image being read.
type formatError struct{ msg string }

func (e *formatError) Error() string        { return e.msg }
func (e *formatError) Is(target error) bool { return target == ErrFormat }

func formatErrorf(format string, args ...any) error {
	return &formatError{fmt.Sprintf(format, args...)}
}

// Manifest describes an image's payload. It is what is signed, as JSON
// with exactly these fields.
type Manifest struct {
	// Format is the image format, Format.
	Format int `json:"format"`
	// Models are the board models the image fits, at least one, each 1
	// to 249 printable bytes, no duplicates. A board installs the image
	// only if its model is one of them (Fits).
	Models []string `json:"models"`
	// Version is the payload's version (see CompareVersions).
	Version string `json:"version"`
	// PayloadSize is the payload's size in bytes, at least 1.
	PayloadSize int64 `json:"payload_size"`
	// PayloadSHA256 is the sha256 of the whole payload, 64 lowercase hex digits.
	PayloadSHA256 string `json:"payload_sha256"`
	// ChunkSize is the size of each chunk but the last, a power of two
	// from MinChunkSize to MaxChunkSize.
	ChunkSize int64 `json:"chunk_size"`
	// Chunks are the sha256 of each chunk, in order, 64 lowercase hex
	// digits each; there are ceil(PayloadSize/ChunkSize) of them and the
	// last chunk may be short.
	Chunks []string `json:"chunks"`
	// Created is when the image was built (not zero).
	Created time.Time `json:"created"`
	// KeyID names the key that signed the manifest: KeyID of its public key.
	KeyID string `json:"key_id"`
}

// manifestFields are the JSON names of Manifest's fields, the only keys a
// manifest may have.
var manifestFields = []string{"format", "models", "version", "payload_size", "payload_sha256", "chunk_size", "chunks", "created", "key_id"}

// Validate checks every invariant of a manifest: the format, at least one
// model (each printable, 1 to 249 bytes, no duplicates), a valid version,
// a positive payload size, a chunk size that is a power of two from
// MinChunkSize to MaxChunkSize, exactly ceil(PayloadSize/ChunkSize) chunk
// digests, every digest 64 lowercase hex digits, a creation time and a
// 16-hex-digit key id. Its errors wrap ErrFormat and name the field.
func (m Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return formatErrorf("manifest: "+format, args...)
	}
	if m.Format != Format {
		return bad("format %d: this build reads format %d", m.Format, Format)
	}
	if len(m.Models) == 0 {
		return bad("models: at least one board model is required")
	}
	for i, model := range m.Models {
		if model == "" || len(model) > maxModelLen || !printable(model) {
			return bad("models[%d] %q: must be 1 to %d printable bytes", i, model, maxModelLen)
		}
		if slices.Contains(m.Models[:i], model) {
			return bad("models[%d] %q: listed twice", i, model)
		}
	}
	if !ValidVersion(m.Version) {
		return bad("version %q: want dot-separated numbers with an optional -suffix, e.g. 1.4.2 or 2.0.0-rc1", m.Version)
	}
	if m.PayloadSize <= 0 {
		return bad("payload_size %d: must be at least 1 (an empty payload is a mistake)", m.PayloadSize)
	}
	if !isHex(m.PayloadSHA256, 64) {
		return bad("payload_sha256 %q: must be 64 lowercase hex digits", m.PayloadSHA256)
	}
	if !ValidChunkSize(m.ChunkSize) {
		return bad("chunk_size %d: must be a power of two from %d to %d", m.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if want := chunkCount(m.PayloadSize, m.ChunkSize); int64(len(m.Chunks)) != want {
		return bad("chunks: %d digests for %d bytes in chunks of %d, want %d", len(m.Chunks), m.PayloadSize, m.ChunkSize, want)
	}
	for i, c := range m.Chunks {
		if !isHex(c, 64) {
			return bad("chunks[%d] %q: must be 64 lowercase hex digits", i, c)
		}
	}
	if m.Created.IsZero() {
		return bad("created: missing")
	}
	if !isHex(m.KeyID, keyIDLen) {
		return bad("key_id %q: must be %d lowercase hex digits", m.KeyID, keyIDLen)
	}
	return nil
}

// ValidChunkSize reports whether n is a power of two from MinChunkSize to
// MaxChunkSize.
func ValidChunkSize(n int64) bool {
	return n >= MinChunkSize && n <= MaxChunkSize && n&(n-1) == 0
}

// chunkCount is ceil(size/chunk) for size >= 0 and chunk > 0.
func chunkCount(size, chunk int64) int64 {
	return size/chunk + min(size%chunk, 1)
}

// Fits reports whether the image is for board model model: one of Models,
// compared exactly (case matters).
func (m Manifest) Fits(model string) bool {
	return model != "" && slices.Contains(m.Models, model)
}

// ChunkRange returns where chunk i lies in the payload: its offset and its
// length (ChunkSize, or less for the last chunk). For i outside
// [0, len(Chunks)) it returns 0, 0.
func (m Manifest) ChunkRange(i int) (off, n int64) {
	if i < 0 || i >= len(m.Chunks) || m.ChunkSize <= 0 {
		return 0, 0
	}
	off = int64(i) * m.ChunkSize
	if off < 0 || off >= m.PayloadSize || off/m.ChunkSize != int64(i) {
		return 0, 0
	}
	return off, min(m.ChunkSize, m.PayloadSize-off)
}

// ParseManifest decodes and validates a manifest. It is strict: the input
// must be one JSON object whose keys are exactly Manifest's JSON field
// names (no unknown, duplicate or differently-cased keys; missing keys
// read as zero values and then fail Validate), with nothing after it but
// white space, at most MaxManifestSize bytes. Every error wraps ErrFormat.
// It never panics.
func ParseManifest(raw []byte) (Manifest, error) {
	var m Manifest
	if len(raw) > MaxManifestSize {
		return m, formatErrorf("manifest: %d bytes, more than %d", len(raw), MaxManifestSize)
	}
	if err := checkKeys(raw); err != nil {
		return m, formatErrorf("manifest: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, formatErrorf("manifest: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, formatErrorf("manifest: data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// checkKeys walks the top-level object of raw and refuses keys that are not
// Manifest's field names spelled exactly, and duplicates: encoding/json
// would match them case-insensitively and let the last one win, so two
// parsers could read one signed manifest differently.
func checkKeys(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	seen := make(map[string]bool, len(manifestFields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return errors.New("malformed object")
		}
		if !slices.Contains(manifestFields, key) {
			return fmt.Errorf("unknown field %q", key)
		}
		if seen[key] {
			return fmt.Errorf("field %q appears twice", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	_, err = dec.Token() // the closing brace
	return err
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func printable(s string) bool {
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
