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
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

var created = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testKey is a key pair written to a temporary directory.
type testKey struct {
	path string // private key; path+".pub" is the public key
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newKey(t *testing.T) testKey {
	t.Helper()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "signing.key")
	if err := WriteKeyPair(path, pub, priv); err != nil {
		t.Fatal(err)
	}
	return testKey{path, pub, priv}
}

// payloadFile writes size pseudo-random bytes (seeded by size) to a file.
func payloadFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(size), byte(size >> 8), byte(size >> 16)})
	r.Read(data)
	path := filepath.Join(t.TempDir(), "payload.bin")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// buildImage builds an image of data in chunks of chunk bytes and returns
// its bytes.
func buildImage(t testing.TB, k ed25519.PrivateKey, data []byte, chunk int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	_, err := Build(&buf, bytes.NewReader(data), int64(len(data)), BuildOptions{
		Key: k, Models: []string{"imx8"}, Version: "1.2.3", ChunkSize: chunk, Created: created,
	})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	k := newKey(t)
	other := newKey(t)
	tests := []struct {
		size  int
		chunk int64
	}{
		{1, MinChunkSize},
		{4095, MinChunkSize},
		{4096, MinChunkSize},
		{4097, MinChunkSize},
		{3*4096 + 5, MinChunkSize},
		{100_000, 16 << 10},
		{1<<20 + 1, 0}, // the default chunk size
		{3 << 20, DefaultChunkSize},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d bytes in %d", tc.size, tc.chunk), func(t *testing.T) {
			payload, data := payloadFile(t, tc.size)
			out := filepath.Join(t.TempDir(), "update.img")
			m, err := BuildFile(out, payload, BuildOptions{
				Key: k.priv, Models: []string{"imx8", "imx8mp"}, Version: "1.2.3-rc.1", ChunkSize: tc.chunk,
			})
			if err != nil {
				t.Fatal(err)
			}
			wantChunk := tc.chunk
			if wantChunk == 0 {
				wantChunk = DefaultChunkSize
			}
			sum := sha256.Sum256(data)
			if m.PayloadSize != int64(tc.size) || m.ChunkSize != wantChunk || m.PayloadSHA256 != hex.EncodeToString(sum[:]) ||
				m.KeyID != KeyID(k.pub) || m.Version != "1.2.3-rc.1" || int64(len(m.Chunks)) != chunkCount(int64(tc.size), wantChunk) ||
				time.Since(m.Created) > time.Minute || m.Created.Nanosecond() != 0 {
				t.Fatalf("manifest %+v", m)
			}
			if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o644 {
				t.Fatalf("image file: %v %v", st, err)
			}

			im, err := OpenFile(out)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if !manifestsEqual(im.Manifest, m) {
				t.Fatalf("opened manifest %+v, built %+v", im.Manifest, m)
			}
			if err := im.Verify([]ed25519.PublicKey{other.pub, k.pub}); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if err := im.VerifyPayload(); err != nil {
				t.Fatalf("VerifyPayload: %v", err)
			}
			got, err := io.ReadAll(im.Payload())
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("payload differs (%v)", err)
			}
			// The payload is a byte range of the file, and so is every chunk.
			file, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if im.Size() != int64(len(file)) || len(file)%blockSize != 0 {
				t.Fatalf("Size %d, file %d bytes", im.Size(), len(file))
			}
			off := im.PayloadOffset()
			if !bytes.Equal(file[off:off+int64(tc.size)], data) {
				t.Fatal("the payload is not at PayloadOffset")
			}
			for i := range m.Chunks {
				chunk, err := io.ReadAll(im.Chunk(i))
				if err != nil {
					t.Fatal(err)
				}
				co, cn := m.ChunkRange(i)
				if !bytes.Equal(chunk, data[co:co+cn]) || !bytes.Equal(chunk, file[off+co:off+co+cn]) {
					t.Fatalf("chunk %d differs", i)
				}
				if err := VerifyChunk(m, i, chunk); err != nil {
					t.Fatalf("VerifyChunk(%d): %v", i, err)
				}
			}
			if n := im.Chunk(len(m.Chunks)).Size(); n != 0 {
				t.Fatalf("chunk past the end has %d bytes", n)
			}
			if err := im.Close(); err != nil {
				t.Fatal(err)
			}
			if err := im.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

func manifestsEqual(a, b Manifest) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

func TestBuildIsReproducible(t *testing.T) {
	k := newKey(t)
	_, data := payloadFile(t, 50_000)
	a := buildImage(t, k.priv, data, MinChunkSize)
	b := buildImage(t, k.priv, data, MinChunkSize)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds with the same inputs differ")
	}
	// Open on a bytes.Reader (not a file) works the same.
	im, err := Open(bytes.NewReader(a), int64(len(a)))
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Verify([]ed25519.PublicKey{k.pub}); err != nil {
		t.Fatal(err)
	}
	if err := im.VerifyPayload(); err != nil {
		t.Fatal(err)
	}
	if !im.Manifest.Created.Equal(created) {
		t.Fatalf("created %v", im.Manifest.Created)
	}
}

// TestStandardTar checks the image with GNU tar: it lists and extracts the
// three members, and an image re-made by tar from them opens and verifies.
func TestStandardTar(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		testenv.SkipOrFail(t, "no tar on PATH")
	}
	k := newKey(t)
	payload, data := payloadFile(t, 10_000)
	img := filepath.Join(t.TempDir(), "update.img")
	m, err := BuildFile(img, payload, BuildOptions{Key: k.priv, Models: []string{"imx8"}, Version: "2.0", ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tarBin, "tvf", img).CombinedOutput()
	if err != nil {
		t.Fatalf("tar tvf: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("tar tvf lists %d members:\n%s", len(lines), out)
	}
	for i, want := range []struct {
		name string
		size int
	}{{ManifestName, -1}, {SignatureName, 64}, {PayloadName, 10_000}} {
		f := strings.Fields(lines[i])
		if f[len(f)-1] != want.name || !strings.HasPrefix(f[0], "-rw-r--r--") || (want.size >= 0 && f[2] != fmt.Sprint(want.size)) {
			t.Errorf("tar tvf line %d: %q, want %s", i, lines[i], want.name)
		}
	}

	dir := t.TempDir()
	if out, err := exec.Command(tarBin, "xf", img, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar xf: %v\n%s", err, out)
	}
	im, err := OpenFile(img)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for name, want := range map[string][]byte{ManifestName: im.RawManifest, SignatureName: im.Signature, PayloadName: data} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("extracted %s differs (%v)", name, err)
		}
	}
	if pm, err := ParseManifest(im.RawManifest); err != nil || !manifestsEqual(pm, m) {
		t.Errorf("extracted manifest: %v", err)
	}

	// Re-made by tar, in each format tar writes: the same image to Open.
	for _, format := range []string{"gnu", "ustar", "pax", "posix"} {
		t.Run("repacked "+format, func(t *testing.T) {
			re := filepath.Join(t.TempDir(), "re.img")
			cmd := exec.Command(tarBin, "--format="+format, "-cf", re, ManifestName, SignatureName, PayloadName)
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("tar cf: %v\n%s", err, out)
			}
			im, err := OpenFile(re)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if err := im.Verify([]ed25519.PublicKey{k.pub}); err != nil {
				t.Fatal(err)
			}
			if err := im.VerifyPayload(); err != nil {
				t.Fatal(err)
			}
		})
	}
	// In another order, tar's image is refused.
	re := filepath.Join(t.TempDir(), "re.img")
	cmd := exec.Command(tarBin, "-cf", re, SignatureName, ManifestName, PayloadName)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar cf: %v\n%s", err, out)
	}
	if _, err := OpenFile(re); !errors.Is(err, ErrFormat) {
		t.Fatalf("members out of order: %v", err)
	}
}

// TestSparseTarRefused: tar can store a payload with holes as a sparse
// member, whose bytes are not contiguous in the file; Open refuses it in
// both of GNU tar's encodings.
func TestSparseTarRefused(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		testenv.SkipOrFail(t, "no tar on PATH")
	}
	k := newKey(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, PayloadName)
	data := make([]byte, 4096)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.WriteFile(payload, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(payload, 1<<20); err != nil { // a hole
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "update.img")
	if _, err := BuildFile(img, payload, BuildOptions{Key: k.priv, Models: []string{"imx8"}, Version: "1.0", ChunkSize: MinChunkSize}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(tarBin, "xf", img, "-C", dir, ManifestName, SignatureName).CombinedOutput(); err != nil {
		t.Fatalf("tar xf: %v\n%s", err, out)
	}
	for format, says := range map[string]string{"posix": "is a sparse file", "gnu": "not a regular file"} {
		re := filepath.Join(t.TempDir(), "re.img")
		cmd := exec.Command(tarBin, "--sparse", "--format="+format, "-cf", re, ManifestName, SignatureName, PayloadName)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tar cf: %v\n%s", err, out)
		}
		if _, err := OpenFile(re); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), says) {
			t.Errorf("sparse payload, --format=%s: %v; want ErrFormat saying %q", format, err, says)
		}
	}
}

// TestOpenSSL checks what doc.go promises: openssl verifies an image's
// signature with the .pub file, and reads and writes our key formats.
func TestOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		testenv.SkipOrFail(t, "no openssl on PATH")
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(openssl, args...).CombinedOutput()
		return string(out), err
	}
	k := newKey(t)
	_, data := payloadFile(t, 20_000)
	img := buildImage(t, k.priv, data, MinChunkSize)
	im, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	manifest, sig := filepath.Join(dir, ManifestName), filepath.Join(dir, SignatureName)
	os.WriteFile(manifest, im.RawManifest, 0o644)
	os.WriteFile(sig, im.Signature, 0o644)
	verify := func(pub string) (string, error) {
		return run("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", manifest, "-sigfile", sig)
	}
	if out, err := verify(k.path + ".pub"); err != nil || !strings.Contains(out, "Signature Verified Successfully") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	// The wrong key, and an altered manifest, fail openssl's check too.
	other := newKey(t)
	if out, err := verify(other.path + ".pub"); err == nil {
		t.Fatalf("openssl verified with another key:\n%s", out)
	}
	os.WriteFile(manifest, bytes.Replace(im.RawManifest, []byte("1.2.3"), []byte("1.2.4"), 1), 0o644)
	if out, err := verify(k.path + ".pub"); err == nil {
		t.Fatalf("openssl verified an altered manifest:\n%s", out)
	}

	// openssl derives the same public key file from our private key.
	out, err := run("pkey", "-in", k.path, "-pubout")
	if err != nil {
		t.Fatalf("openssl pkey: %v\n%s", err, out)
	}
	if want, _ := os.ReadFile(k.path + ".pub"); out != string(want) {
		t.Fatalf("openssl's public key:\n%s\nours:\n%s", out, want)
	}
	// A key made by openssl signs images that verify with its public key.
	okey := filepath.Join(dir, "openssl.key")
	if out, err := run("genpkey", "-algorithm", "ed25519", "-out", okey); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	if out, err := run("pkey", "-in", okey, "-pubout", "-out", okey+".pub"); err != nil {
		t.Fatalf("openssl pkey: %v\n%s", err, out)
	}
	priv, err := LoadPrivateKey(okey)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(okey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	img = buildImage(t, priv, data, MinChunkSize)
	im2, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if err := im2.Verify([]ed25519.PublicKey{pub}); err != nil {
		t.Fatal(err)
	}
}

func TestTamper(t *testing.T) {
	k := newKey(t)
	other := newKey(t)
	_, data := payloadFile(t, 5*4096+100) // 6 chunks, the last one short
	img := buildImage(t, k.priv, data, MinChunkSize)
	good, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	off := good.PayloadOffset()
	manifestAt := int64(bytes.Index(img, good.RawManifest))
	sigAt := int64(bytes.Index(img, good.Signature))
	keys := []ed25519.PublicKey{k.pub}

	// open, verify and verifyPayload run the three checks in turn on the
	// altered image and return the first error.
	check := func(b []byte, keys []ed25519.PublicKey) error {
		im, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return err
		}
		if err := im.Verify(keys); err != nil {
			return err
		}
		return im.VerifyPayload()
	}
	flip := func(at int64) []byte {
		b := bytes.Clone(img)
		b[at] ^= 0x01
		return b
	}
	replace := func(old, new string) []byte {
		if len(old) != len(new) || !bytes.Contains(img, []byte(old)) {
			t.Fatalf("cannot replace %q", old)
		}
		return bytes.Replace(bytes.Clone(img), []byte(old), []byte(new), 1)
	}
	// Two bad chunks: the first is named and the others counted.
	two := flip(off + 4096)
	two[off+4*4096] ^= 0x80
	tests := []struct {
		name  string
		image []byte
		keys  []ed25519.PublicKey
		want  error
		says  string
	}{
		{"intact", img, keys, nil, ""},
		{"payload byte 0", flip(off), keys, ErrChecksum, "chunk 0 (payload bytes 0 to 4096)"},
		{"payload byte in chunk 3", flip(off + 3*4096 + 17), keys, ErrChecksum, "chunk 3 "},
		{"last payload byte", flip(off + int64(len(data)) - 1), keys, ErrChecksum, "chunk 5 (payload bytes 20480 to 20580)"},
		{"two chunks", two, keys, ErrChecksum, "chunk 1 (payload bytes 4096 to 8192) does not match its sha256 in the manifest (2 of 6 chunks are bad)"},
		{"manifest version", replace(`"version": "1.2.3"`, `"version": "1.2.4"`), keys, ErrSignature, "altered"},
		{"manifest chunk digest", replace(good.Manifest.Chunks[2], strings.Repeat("0", 64)), keys, ErrSignature, "altered"},
		{"manifest white space", replace("{\n  \"format\"", "{\n \t\"format\""), keys, ErrSignature, "altered"},
		{"manifest byte making bad JSON", flip(manifestAt), keys, ErrFormat, "manifest"},
		{"signature byte", flip(sigAt + 10), keys, ErrSignature, "altered"},
		{"wrong key", img, []ed25519.PublicKey{other.pub}, ErrSignature, "names key " + KeyID(k.pub) + ", which is not trusted (trusted: " + KeyID(other.pub) + ")"},
		{"no keys", img, nil, ErrSignature, "no trusted key"},
		{"a malformed key", img, []ed25519.PublicKey{k.pub[:31]}, ErrSignature, "no trusted key"},
		{"tar padding after the payload", flip(off + int64(len(data)) + 1), keys, nil, ""},
		{"trailer", flip(int64(len(img)) - 1), keys, ErrFormat, "data after the payload"},
		{"garbage appended", append(bytes.Clone(img), "garbage"...), keys, ErrFormat, "data after the payload"},
		{"another archive appended", append(bytes.Clone(img), img...), keys, ErrFormat, "after the payload"},
		{"zeros appended", append(bytes.Clone(img), make([]byte, 10240)...), keys, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := check(tc.image, tc.keys)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v; want %v saying %q", err, tc.want, tc.says)
			}
			for _, other := range []error{ErrFormat, ErrSignature, ErrChecksum} {
				if other != tc.want && errors.Is(err, other) {
					t.Fatalf("%v wraps %v as well", err, other)
				}
			}
		})
	}
}

func TestTruncated(t *testing.T) {
	k := newKey(t)
	_, data := payloadFile(t, 3*4096+100)
	img := buildImage(t, k.priv, data, MinChunkSize)
	im, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	off, end := im.PayloadOffset(), im.PayloadOffset()+int64(len(data))
	for _, n := range []int64{0, 1, 100, 511, 512, 513, 1024, 1100, off - 512, off - 1, off, off + 1, off + 4096,
		end - 1, end, end + 1, (end + 511) &^ 511, (end+511)&^511 + 512, int64(len(img)) - 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			_, err := Open(bytes.NewReader(img[:n]), n)
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Open of the first %d of %d bytes: %v; want ErrFormat", n, len(img), err)
			}
			if n > 512*3 && !strings.Contains(err.Error(), "truncated") {
				t.Errorf("error does not say truncated: %v", err)
			}
		})
	}
	// An image file cut after Open: VerifyPayload reports a format error.
	path := filepath.Join(t.TempDir(), "cut.img")
	os.WriteFile(path, img, 0o644)
	fim, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fim.Close()
	if err := os.Truncate(path, end-10); err != nil {
		t.Fatal(err)
	}
	if err := fim.VerifyPayload(); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("VerifyPayload of a cut file: %v", err)
	}
}

// member is one tar member of a hand-made archive.
type member struct {
	name string
	typ  byte
	data []byte
}

func makeTar(t *testing.T, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		typ := m.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		size := int64(len(m.data))
		if typ != tar.TypeReg {
			size = 0
		}
		hdr := &tar.Header{Name: m.name, Typeflag: typ, Mode: 0o644, Size: size, ModTime: created}
		if typ == tar.TypeSymlink {
			hdr.Linkname = "elsewhere"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write(m.data)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestOpenRefusesOtherArchives(t *testing.T) {
	k := newKey(t)
	_, data := payloadFile(t, 9000)
	img := buildImage(t, k.priv, data, MinChunkSize)
	im, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	man := member{name: ManifestName, data: im.RawManifest}
	sig := member{name: SignatureName, data: im.Signature}
	pay := member{name: PayloadName, data: data}
	extra := member{name: "README", data: []byte("hello\n")}
	longer := append(bytes.Clone(data), 'x')

	// The hand-made archive of the same members is a valid image; text
	// is not.
	if err := check(makeTar(t, man, sig, pay)); err != nil {
		t.Fatalf("hand-made image: %v", err)
	}
	if err := check(bytes.Repeat([]byte("not a tar archive\n"), 200)); !errors.Is(err, ErrFormat) {
		t.Fatalf("text: %v", err)
	}
	tests := []struct {
		name    string
		members []member
		says    string
	}{
		{"empty archive", nil, "no member manifest.json"},
		{"manifest only", []member{man}, "no member manifest.sig"},
		{"no payload", []member{man, sig}, "no member payload"},
		{"signature first", []member{sig, man, pay}, `member "manifest.sig" where manifest.json belongs`},
		{"payload before signature", []member{man, pay, sig}, `member "payload" where manifest.sig belongs`},
		{"extra member first", []member{extra, man, sig, pay}, `member "README"`},
		{"extra member in the middle", []member{man, sig, extra, pay}, `member "README" where payload belongs`},
		{"extra member after the payload", []member{man, sig, pay, extra}, "data after the payload"},
		{"payload twice", []member{man, sig, pay, pay}, "data after the payload"},
		{"dot-slash name", []member{{name: "./" + ManifestName, data: im.RawManifest}, sig, pay}, `member "./manifest.json"`},
		{"directory", []member{{name: ManifestName, typ: tar.TypeDir}, sig, pay}, "not a regular file"},
		{"symlink", []member{man, sig, {name: PayloadName, typ: tar.TypeSymlink}}, "not a regular file"},
		{"short signature", []member{man, {name: SignatureName, data: im.Signature[:63]}, pay}, "manifest.sig has 63 bytes, want 64"},
		{"base64 signature", []member{man, {name: SignatureName, data: []byte(strings.Repeat("QUJD", 22))}, pay}, "want 64"},
		{"empty manifest", []member{{name: ManifestName, data: []byte{}}, sig, pay}, "manifest.json has 0 bytes"},
		{"manifest not JSON", []member{{name: ManifestName, data: []byte("hello")}, sig, pay}, "manifest"},
		{"payload too short", []member{man, sig, {name: PayloadName, data: data[:8999]}}, "holds 8999 bytes, the manifest says 9000"},
		{"payload too long", []member{man, sig, {name: PayloadName, data: longer}}, "holds 9001 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := check(makeTar(t, tc.members...))
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v; want ErrFormat saying %q", err, tc.says)
			}
		})
	}
}

// check opens b as an image.
func check(b []byte) error {
	_, err := Open(bytes.NewReader(b), int64(len(b)))
	return err
}

// errReaderAt fails every read after the first n bytes with an I/O error.
type errReaderAt struct {
	b []byte
	n int64
}

var errIO = errors.New("input/output error")

func (e errReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > e.n {
		return 0, errIO
	}
	return copy(p, e.b[off:]), nil
}

func TestOpenIOError(t *testing.T) {
	k := newKey(t)
	_, data := payloadFile(t, 9000)
	img := buildImage(t, k.priv, data, MinChunkSize)
	for _, n := range []int64{0, 700, int64(len(img)) - 100} {
		_, err := Open(errReaderAt{img, n}, int64(len(img)))
		if !errors.Is(err, errIO) || errors.Is(err, ErrFormat) {
			t.Errorf("I/O error after %d bytes: %v; want the I/O error, not ErrFormat", n, err)
		}
	}
}

func TestVerifyChunk(t *testing.T) {
	k := newKey(t)
	_, data := payloadFile(t, 9000)
	img := buildImage(t, k.priv, data, MinChunkSize)
	im, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	m := im.Manifest
	bad := bytes.Clone(data[4096:8192])
	bad[0] ^= 1
	tests := []struct {
		i    int
		data []byte
		says string // "" for no error
	}{
		{0, data[:4096], ""},
		{1, data[4096:8192], ""},
		{2, data[8192:], ""},
		{1, bad, "chunk 1: sha256"},
		{1, data[4096:8191], "chunk 1 has 4095 bytes, the manifest says 4096"},
		{2, data[8192:8999], "chunk 2 has 807 bytes, the manifest says 808"},
		{0, data[4096:8192], "chunk 0: sha256"},
		{3, data[:1], "no chunk 3 (the manifest has 3)"},
		{-1, data[:1], "no chunk -1"},
		{0, nil, "chunk 0 has 0 bytes"},
	}
	for _, tc := range tests {
		err := VerifyChunk(m, tc.i, tc.data)
		if tc.says == "" {
			if err != nil {
				t.Errorf("VerifyChunk(%d): %v", tc.i, err)
			}
			continue
		}
		if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("VerifyChunk(%d) = %v; want ErrChecksum saying %q", tc.i, err, tc.says)
		}
	}
}

func TestVerifyManifest(t *testing.T) {
	k := newKey(t)
	other := newKey(t)
	_, data := payloadFile(t, 9000)
	img := buildImage(t, k.priv, data, MinChunkSize)
	im, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := VerifyManifest(im.RawManifest, im.Signature, []ed25519.PublicKey{k.pub}); err != nil || m.Version != "1.2.3" {
		t.Fatalf("VerifyManifest: %+v %v", m, err)
	}
	// A trusted key that signed a manifest naming another key.
	m := im.Manifest
	m.KeyID = KeyID(other.pub)
	raw := bytes.Replace(im.RawManifest, []byte(im.Manifest.KeyID), []byte(m.KeyID), 1)
	sig := ed25519.Sign(k.priv, raw)
	if _, err := VerifyManifest(raw, sig, []ed25519.PublicKey{k.pub}); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "manifest names key "+m.KeyID) {
		t.Fatalf("mismatched key id: %v", err)
	}
	if _, err := VerifyManifest(im.RawManifest, im.Signature[:10], []ed25519.PublicKey{k.pub}); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "10 bytes, not 64") {
		t.Fatalf("short signature: %v", err)
	}
	if _, err := VerifyManifest([]byte("{}"), im.Signature, []ed25519.PublicKey{k.pub}); !errors.Is(err, ErrFormat) {
		t.Fatalf("bad manifest: %v", err)
	}
}

// changingReaderAt returns other bytes on its second pass over the payload.
type changingReaderAt struct {
	data  []byte
	reads int64
}

func (c *changingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads += int64(len(p))
	n := copy(p, c.data[off:])
	if c.reads > int64(len(c.data)) && n > 0 {
		p[0] ^= 0xff
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestBuildRefuses(t *testing.T) {
	k := newKey(t)
	opts := func(f func(o *BuildOptions)) BuildOptions {
		o := BuildOptions{Key: k.priv, Models: []string{"imx8"}, Version: "1.0", ChunkSize: MinChunkSize, Created: created}
		f(&o)
		return o
	}
	data := make([]byte, 10_000)
	tests := []struct {
		name    string
		payload io.ReaderAt
		size    int64
		opts    BuildOptions
		want    error // nil: any error
		says    string
	}{
		{"empty payload", bytes.NewReader(nil), 0, opts(func(o *BuildOptions) {}), ErrFormat, "empty payload"},
		{"no models", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.Models = nil }), ErrFormat, "at least one board model"},
		{"bad model", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.Models = []string{"a\tb"} }), ErrFormat, "models[0]"},
		{"bad version", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.Version = "latest" }), ErrFormat, `version "latest"`},
		{"chunk size 3000", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.ChunkSize = 3000 }), ErrFormat, "chunk_size 3000"},
		{"chunk size 2 KiB", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.ChunkSize = 2048 }), ErrFormat, "chunk_size 2048"},
		{"chunk size 128 MiB", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.ChunkSize = 128 << 20 }), ErrFormat, "chunk_size"},
		{"too many chunks", bytes.NewReader(data), 1 << 40, opts(func(o *BuildOptions) {}), ErrFormat, "use a larger chunk size"},
		{"no key", bytes.NewReader(data), 10_000, opts(func(o *BuildOptions) { o.Key = nil }), nil, "no ed25519 signing key"},
		{"payload shorter than size", bytes.NewReader(data), 10_001, opts(func(o *BuildOptions) {}), io.ErrUnexpectedEOF, "chunk 2"},
		{"payload changes", &changingReaderAt{data: data}, 10_000, opts(func(o *BuildOptions) {}), nil, "the payload changed while the image was being built"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := Build(&out, tc.payload, tc.size, tc.opts)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Build: %v; want %v saying %q", err, tc.want, tc.says)
			}
			if tc.want == ErrFormat && out.Len() != 0 {
				t.Fatalf("refused options, yet %d bytes written", out.Len())
			}
		})
	}
}

func TestBuildFileIsAtomic(t *testing.T) {
	k := newKey(t)
	payload, _ := payloadFile(t, 10_000)
	dir := t.TempDir()
	out := filepath.Join(dir, "update.img")
	os.WriteFile(out, []byte("the previous image"), 0o644)
	o := BuildOptions{Key: k.priv, Models: []string{"imx8"}, Version: "1.0"}

	bad := o
	bad.Version = "x"
	if _, err := BuildFile(out, payload, bad); !errors.Is(err, ErrFormat) {
		t.Fatalf("bad version: %v", err)
	}
	if _, err := BuildFile(out, filepath.Join(dir, "missing"), o); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing payload: %v", err)
	}
	if _, err := BuildFile(out, dir, o); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory payload: %v", err)
	}
	if _, err := BuildFile(payload, payload, o); err == nil || !strings.Contains(err.Error(), "is the payload itself") {
		t.Fatalf("out = payload: %v", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "the previous image" {
		t.Fatalf("a failed build changed the output: %q", b)
	}
	if _, err := BuildFile(out, payload, o); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
	im, err := OpenFile(out)
	if err != nil {
		t.Fatal(err)
	}
	im.Close()
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "k")
	if err := WriteKeyPair(path, pub, priv); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]fs.FileMode{path: 0o600, path + ".pub": 0o644} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", p, st.Mode(), err, mode)
		}
	}
	if b, _ := os.ReadFile(path); !strings.HasPrefix(string(b), "-----BEGIN PRIVATE KEY-----\n") {
		t.Errorf("private key file:\n%s", b)
	}
	if b, _ := os.ReadFile(path + ".pub"); !strings.HasPrefix(string(b), "-----BEGIN PUBLIC KEY-----\n") {
		t.Errorf("public key file:\n%s", b)
	}
	gotPriv, err := LoadPrivateKey(path)
	if err != nil || !gotPriv.Equal(priv) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	gotPub, err := LoadPublicKey(path + ".pub")
	if err != nil || !gotPub.Equal(pub) {
		t.Fatalf("LoadPublicKey: %v", err)
	}
	if id := KeyID(pub); !isHex(id, 16) || id != KeyID(gotPub) {
		t.Fatalf("KeyID %q", id)
	}

	// Never overwrite: not the private key, not the public key (and then
	// write no private key either).
	if err := WriteKeyPair(path, pub, priv); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("overwrite: %v", err)
	}
	p2 := filepath.Join(dir, "k2")
	os.WriteFile(p2+".pub", []byte("someone's key"), 0o644)
	if err := WriteKeyPair(p2, pub, priv); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("overwrite .pub: %v", err)
	}
	if _, err := os.Stat(p2); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a private key was written beside an existing .pub: %v", err)
	}
	otherPub, _, _ := GenerateKey()
	if err := WriteKeyPair(filepath.Join(dir, "k3"), otherPub, priv); err == nil {
		t.Fatal("a mismatched pair was written")
	}

	// Loading the wrong thing.
	os.WriteFile(filepath.Join(dir, "junk"), []byte("not a key"), 0o600)
	for _, tc := range []struct {
		load func(string) error
		path string
		says string
	}{
		{func(p string) error { _, err := LoadPublicKey(p); return err }, path, `PEM block "PRIVATE KEY", want "PUBLIC KEY"`},
		{func(p string) error { _, err := LoadPrivateKey(p); return err }, path + ".pub", `PEM block "PUBLIC KEY", want "PRIVATE KEY"`},
		{func(p string) error { _, err := LoadPublicKey(p); return err }, filepath.Join(dir, "junk"), "no PEM block"},
		{func(p string) error { _, err := LoadPrivateKey(p); return err }, filepath.Join(dir, "missing"), "no such file"},
	} {
		if err := tc.load(tc.path); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("load %s: %v, want %q", tc.path, err, tc.says)
		}
	}
}
