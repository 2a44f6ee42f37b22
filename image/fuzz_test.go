package image

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// fuzzKey is a fixed key, so that seeds built with it verify in every run.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// FuzzOpen feeds arbitrary bytes to Open as an image. It must never panic;
// every error wraps ErrFormat; an image it accepts is self-consistent, and
// Verify and VerifyPayload fail only with their own sentinels.
//
//	go test -run '^$' -fuzz FuzzOpen -fuzztime 30s ./image
//
// Go's fuzzer minimizes each input that reaches new code for up to
// -fuzzminimizetime (60s by default), in time that grows with the square
// of the input's size, showing "0/sec" meanwhile; an image is at least
// 3.5 KB, so add -fuzzminimizetime 100x for more inputs in a short run.
// FuzzOpenMembers reaches the checks after the tar layer faster.
func FuzzOpen(f *testing.F) {
	for _, size := range []int{1, 4097} {
		img := buildImage(f, fuzzKey, bytes.Repeat([]byte("payload!"), size/8+1)[:size], MinChunkSize)
		f.Add(img)
		f.Add(img[:len(img)-1024]) // no end-of-archive marker
		f.Add(img[:len(img)/2])
	}
	f.Add([]byte{})
	f.Add(make([]byte, 1024))
	f.Add([]byte("manifest.json"))
	pub := fuzzKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		im, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Open error does not wrap ErrFormat: %v", err)
			}
			return
		}
		m := im.Manifest
		if err := m.Validate(); err != nil {
			t.Fatalf("Open accepted an invalid manifest: %v", err)
		}
		if len(im.Signature) != ed25519.SignatureSize {
			t.Fatalf("signature of %d bytes", len(im.Signature))
		}
		if off := im.PayloadOffset(); off < 0 || off+m.PayloadSize > int64(len(b)) || off%blockSize != 0 {
			t.Fatalf("payload at %d+%d in %d bytes", off, m.PayloadSize, len(b))
		}
		payload, err := io.ReadAll(im.Payload())
		if err != nil || int64(len(payload)) != m.PayloadSize {
			t.Fatalf("payload: %d bytes, %v", len(payload), err)
		}
		var total int64
		for i := range m.Chunks {
			c, err := io.ReadAll(im.Chunk(i))
			if err != nil {
				t.Fatal(err)
			}
			off, n := m.ChunkRange(i)
			if off != total || int64(len(c)) != n || !bytes.Equal(c, payload[off:off+n]) {
				t.Fatalf("chunk %d at %d+%d", i, off, n)
			}
			total += n
			if err := VerifyChunk(m, i, c); err != nil && !errors.Is(err, ErrChecksum) {
				t.Fatalf("VerifyChunk: %v", err)
			}
		}
		if total != m.PayloadSize {
			t.Fatalf("chunks cover %d of %d bytes", total, m.PayloadSize)
		}
		if err := im.Verify([]ed25519.PublicKey{pub}); err != nil && !errors.Is(err, ErrSignature) {
			t.Fatalf("Verify: %v", err)
		}
		if err := im.VerifyPayload(); err != nil && !errors.Is(err, ErrChecksum) {
			t.Fatalf("VerifyPayload: %v", err)
		}
	})
}

// FuzzParseManifest feeds arbitrary bytes to ParseManifest. It must never
// panic; every error wraps ErrFormat; a manifest it accepts is valid and
// survives a JSON round trip.
//
//	go test -run '^$' -fuzz FuzzParseManifest -fuzztime 30s ./image
func FuzzParseManifest(f *testing.F) {
	good, _ := json.MarshalIndent(validManifest(), "", "  ")
	f.Add(good)
	compact, _ := json.Marshal(validManifest())
	f.Add(compact)
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":1,"format":1}`))
	f.Add([]byte(`{"Format":1}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"chunk_size":9223372036854775807,"payload_size":9223372036854775807}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := ParseManifest(raw)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error does not wrap ErrFormat: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid manifest: %v", err)
		}
		var total int64
		for i := range m.Chunks {
			off, n := m.ChunkRange(i)
			if off != total || n <= 0 || n > m.ChunkSize {
				t.Fatalf("chunk %d at %d+%d", i, off, n)
			}
			total += n
		}
		if total != m.PayloadSize {
			t.Fatalf("chunks cover %d of %d bytes", total, m.PayloadSize)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(again)
		if err != nil || !manifestsEqual(m, m2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, m, m2)
		}
	})
}

// FuzzOpenMembers builds well-formed tar archives from a fuzzed manifest,
// payload and layout, the manifest signed by a trusted key, so that the
// fuzzer spends its time on the manifest and on the sizes and order of
// members rather than on tar checksums. Open must never panic and fail
// only with ErrFormat; for an image it accepts, VerifyPayload must agree
// with an independent hash of the payload.
//
//	go test -run '^$' -fuzz FuzzOpenMembers -fuzztime 30s ./image
func FuzzOpenMembers(f *testing.F) {
	pub := fuzzKey.Public().(ed25519.PublicKey)
	for _, payload := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("ab"), 2049)} {
		m := manifestFor(payload, MinChunkSize)
		m.KeyID = KeyID(pub)
		raw, _ := json.MarshalIndent(m, "", "  ")
		for _, layout := range []uint8{0, 1, 2, 4, 8, 16} {
			f.Add(raw, payload, layout)
		}
	}
	f.Fuzz(func(t *testing.T, raw, payload []byte, layout uint8) {
		if len(raw) > 1<<16 || len(payload) > 1<<16 {
			return
		}
		sig := ed25519.Sign(fuzzKey, raw)
		members := []struct {
			name string
			data []byte
		}{{ManifestName, raw}, {SignatureName, sig}, {PayloadName, payload}}
		if layout&1 != 0 { // signature first
			members[0], members[1] = members[1], members[0]
		}
		if layout&2 != 0 { // an extra member
			members = append(members, members[0])
		}
		if layout&4 != 0 { // a short signature
			members[1].data = members[1].data[:len(members[1].data)/2]
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, mb := range members {
			format := tar.FormatUSTAR
			if layout&8 != 0 {
				format = tar.FormatPAX
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: mb.name, Size: int64(len(mb.data)), Mode: 0o644, Format: format}); err != nil {
				t.Fatal(err)
			}
			tw.Write(mb.data)
		}
		tw.Close()
		b := buf.Bytes()
		if layout&16 != 0 { // truncated
			b = b[:len(b)-1-int(layout)]
		}

		im, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Open error does not wrap ErrFormat: %v", err)
			}
			return
		}
		if layout&(1|2|4|16) != 0 {
			t.Fatalf("Open accepted layout %#x", layout)
		}
		if !bytes.Equal(im.RawManifest, raw) || !bytes.Equal(im.Signature, sig) || im.Manifest.PayloadSize != int64(len(payload)) {
			t.Fatal("Open read other members than were written")
		}
		if err := im.Verify([]ed25519.PublicKey{pub}); err != nil && !(errors.Is(err, ErrSignature) && strings.Contains(err.Error(), "names key")) {
			t.Fatalf("Verify of a manifest signed by the trusted key: %v", err)
		}
		want := manifestFor(payload, im.Manifest.ChunkSize)
		consistent := want.PayloadSHA256 == im.Manifest.PayloadSHA256 && strings.Join(want.Chunks, ",") == strings.Join(im.Manifest.Chunks, ",")
		if err := im.VerifyPayload(); (err == nil) != consistent || (err != nil && !errors.Is(err, ErrChecksum)) {
			t.Fatalf("VerifyPayload = %v, but the manifest matches the payload: %v", err, consistent)
		}
	})
}

// manifestFor returns a valid manifest for payload, but for its key id.
func manifestFor(payload []byte, chunk int64) Manifest {
	sum := sha256.Sum256(payload)
	m := Manifest{
		Format: Format, Models: []string{"imx8"}, Version: "1.0", PayloadSize: int64(len(payload)),
		PayloadSHA256: hex.EncodeToString(sum[:]), ChunkSize: chunk, Created: created, KeyID: strings.Repeat("0", 16),
	}
	for i := range chunkCount(m.PayloadSize, chunk) {
		off, n := int64(i)*chunk, min(chunk, m.PayloadSize-int64(i)*chunk)
		c := sha256.Sum256(payload[off : off+n])
		m.Chunks = append(m.Chunks, hex.EncodeToString(c[:]))
	}
	return m
}
