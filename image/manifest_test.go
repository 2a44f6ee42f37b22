package image

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	digestA = strings.Repeat("a", 64)
	digestB = strings.Repeat("b", 64)
)

// validManifest is a valid manifest of 10000 bytes in 4 KiB chunks.
func validManifest() Manifest {
	return Manifest{
		Format:        Format,
		Models:        []string{"imx8", "sim"},
		Version:       "1.2.3",
		PayloadSize:   10000,
		PayloadSHA256: digestA,
		ChunkSize:     4096,
		Chunks:        []string{digestA, digestB, digestA},
		Created:       time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		KeyID:         "0123456789abcdef",
	}
}

func TestParseManifest(t *testing.T) {
	good, err := json.Marshal(validManifest())
	if err != nil {
		t.Fatal(err)
	}
	if m, err := ParseManifest(good); err != nil || m.Version != "1.2.3" || len(m.Chunks) != 3 {
		t.Fatalf("valid manifest: %+v, %v", m, err)
	}
	// edit returns the valid manifest as JSON with one change.
	edit := func(f func(m *Manifest)) string {
		m := validManifest()
		f(&m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// raw returns the valid manifest's JSON with a string replaced.
	raw := func(old, new string) string {
		if !strings.Contains(string(good), old) {
			t.Fatalf("%q not in %s", old, good)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	tests := []struct {
		name, json, want string // want: part of the error
	}{
		{"format 0", edit(func(m *Manifest) { m.Format = 0 }), "format 0"},
		{"format 2", edit(func(m *Manifest) { m.Format = 2 }), "this build reads format 1"},
		{"no models", edit(func(m *Manifest) { m.Models = nil }), "at least one board model"},
		{"empty models", edit(func(m *Manifest) { m.Models = []string{} }), "at least one board model"},
		{"empty model", edit(func(m *Manifest) { m.Models = []string{"imx8", ""} }), "models[1]"},
		{"model with a newline", edit(func(m *Manifest) { m.Models = []string{"imx\n8"} }), "printable"},
		{"model too long", edit(func(m *Manifest) { m.Models = []string{strings.Repeat("m", 250)} }), "1 to 249"},
		{"model twice", edit(func(m *Manifest) { m.Models = []string{"imx8", "sim", "imx8"} }), "listed twice"},
		{"no version", edit(func(m *Manifest) { m.Version = "" }), "version"},
		{"bad version", edit(func(m *Manifest) { m.Version = "v1.2" }), "version \"v1.2\""},
		{"size 0", edit(func(m *Manifest) { m.PayloadSize = 0; m.Chunks = nil }), "empty payload"},
		{"negative size", edit(func(m *Manifest) { m.PayloadSize = -1 }), "payload_size -1"},
		{"uppercase payload digest", edit(func(m *Manifest) { m.PayloadSHA256 = strings.ToUpper(digestA) }), "payload_sha256"},
		{"short payload digest", edit(func(m *Manifest) { m.PayloadSHA256 = digestA[:63] }), "payload_sha256"},
		{"chunk size 0", edit(func(m *Manifest) { m.ChunkSize = 0 }), "chunk_size 0"},
		{"chunk size not a power of two", edit(func(m *Manifest) { m.ChunkSize = 5000; m.Chunks = m.Chunks[:2] }), "power of two"},
		{"chunk size too small", edit(func(m *Manifest) { m.ChunkSize = 2048; m.Chunks = append(m.Chunks, digestA, digestB) }), "chunk_size 2048"},
		{"chunk size too large", edit(func(m *Manifest) { m.ChunkSize = 128 << 20; m.Chunks = m.Chunks[:1] }), "chunk_size 134217728"},
		{"one chunk too few", edit(func(m *Manifest) { m.Chunks = m.Chunks[:2] }), "2 digests for 10000 bytes in chunks of 4096, want 3"},
		{"one chunk too many", edit(func(m *Manifest) { m.Chunks = append(m.Chunks, digestA) }), "want 3"},
		{"bad chunk digest", edit(func(m *Manifest) { m.Chunks[2] = "xyz" }), "chunks[2]"},
		{"uppercase chunk digest", edit(func(m *Manifest) { m.Chunks[1] = strings.ToUpper(digestB) }), "chunks[1]"},
		{"no created", edit(func(m *Manifest) { m.Created = time.Time{} }), "created"},
		{"short key id", edit(func(m *Manifest) { m.KeyID = "0123" }), "key_id"},
		{"uppercase key id", edit(func(m *Manifest) { m.KeyID = "0123456789ABCDEF" }), "key_id"},
		{"unknown field", raw(`"format":1`, `"format":1,"extra":true`), `unknown field "extra"`},
		{"duplicate field", raw(`"version":"1.2.3"`, `"version":"1.2.3","version":"9.9.9"`), `"version" appears twice`},
		{"differently-cased field", raw(`"version"`, `"Version"`), `unknown field "Version"`},
		{"missing field", raw(`,"key_id":"0123456789abcdef"`, ``), "key_id"},
		{"null models", raw(`"models":["imx8","sim"]`, `"models":null`), "at least one board model"},
		{"trailing data", string(good) + "{}", "data after the JSON object"},
		{"two objects", string(good) + string(good), "data after the JSON object"},
		{"array", `[1,2]`, "not a JSON object"},
		{"string", `"manifest"`, "not a JSON object"},
		{"empty", ``, "EOF"},
		{"truncated", string(good[:len(good)-1]), "manifest"},
		{"wrong type", raw(`"payload_size":10000`, `"payload_size":"10000"`), "payload_size"},
		{"float size", raw(`"payload_size":10000`, `"payload_size":1e4`), "payload_size"},
		{"bad time", raw(`"created":"2026-03-01T12:00:00Z"`, `"created":"yesterday"`), "yesterday"},
		{"too large", `{"format":1,"version":"` + strings.Repeat("1", MaxManifestSize) + `"}`, "more than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest([]byte(tc.json))
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("ParseManifest = %+v, %v; want an ErrFormat", m, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
	// White space around the object is fine (Build writes a final newline).
	if _, err := ParseManifest([]byte("\n " + string(good) + "\n\n")); err != nil {
		t.Fatalf("white space around the manifest: %v", err)
	}
}

func TestChunkRange(t *testing.T) {
	type rng struct{ off, n int64 }
	tests := []struct {
		name        string
		size, chunk int64
		want        []rng
	}{
		{"one byte", 1, 4096, []rng{{0, 1}}},
		{"one short chunk", 4095, 4096, []rng{{0, 4095}}},
		{"exactly one chunk", 4096, 4096, []rng{{0, 4096}}},
		{"one byte over", 4097, 4096, []rng{{0, 4096}, {4096, 1}}},
		{"not a multiple", 10000, 4096, []rng{{0, 4096}, {4096, 4096}, {8192, 1808}}},
		{"a multiple", 3 << 20, 1 << 20, []rng{{0, 1 << 20}, {1 << 20, 1 << 20}, {2 << 20, 1 << 20}}},
		{"large", 5<<30 + 7, 64 << 20, nil}, // checked by sum below
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := Manifest{PayloadSize: tc.size, ChunkSize: tc.chunk, Chunks: make([]string, chunkCount(tc.size, tc.chunk))}
			if tc.want != nil && len(m.Chunks) != len(tc.want) {
				t.Fatalf("%d chunks, want %d", len(m.Chunks), len(tc.want))
			}
			var next int64
			for i := range m.Chunks {
				off, n := m.ChunkRange(i)
				if tc.want != nil && (rng{off, n}) != tc.want[i] {
					t.Errorf("ChunkRange(%d) = %d, %d; want %v", i, off, n, tc.want[i])
				}
				if off != next || n <= 0 || n > tc.chunk {
					t.Errorf("ChunkRange(%d) = %d, %d after %d", i, off, n, next)
				}
				next = off + n
			}
			if next != tc.size {
				t.Errorf("chunks cover %d bytes, want %d", next, tc.size)
			}
			for _, i := range []int{-1, len(m.Chunks), len(m.Chunks) + 100} {
				if off, n := m.ChunkRange(i); off != 0 || n != 0 {
					t.Errorf("ChunkRange(%d) = %d, %d; want 0, 0", i, off, n)
				}
			}
		})
	}
	// A size 0 payload has no chunks, and such a manifest is invalid.
	m := validManifest()
	m.PayloadSize, m.Chunks = 0, nil
	if off, n := m.ChunkRange(0); off != 0 || n != 0 {
		t.Errorf("size 0: ChunkRange(0) = %d, %d", off, n)
	}
	if err := m.Validate(); !errors.Is(err, ErrFormat) {
		t.Errorf("size 0 validates: %v", err)
	}
}

func TestFits(t *testing.T) {
	m := validManifest()
	for model, want := range map[string]bool{"imx8": true, "sim": true, "IMX8": false, "imx": false, "": false, "imx8 ": false} {
		if got := m.Fits(model); got != want {
			t.Errorf("Fits(%q) = %v, want %v", model, got, want)
		}
	}
}

func TestValidVersion(t *testing.T) {
	for v, want := range map[string]bool{
		"1": true, "1.2": true, "1.2.3": true, "0.0.0": true, "2026.03.01": true, "1.2.3.4.5": true,
		"2.0.0-rc.1": true, "1.4-beta2": true, "1.0-x-y": true, "1.0--": true, "1.0-0.3.7": true,
		"": false, "v1.2": false, "1.": false, ".1": false, "1..2": false, "1.2-": false, "1.2-rc..1": false,
		"1.2+build": false, "1.2-rc+b": false, "1.x": false, "1.2 ": false, " 1.2": false, "-rc1": false,
		"1.2-rc_1": false, "1.2-ünï": false, strings.Repeat("1", 128): true, strings.Repeat("1", 129): false,
	} {
		if got := ValidVersion(v); got != want {
			t.Errorf("ValidVersion(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.2.3", "1.2.3", 0},
		{"1.2.10", "1.2.9", +1},
		{"1.2.9", "1.2.10", -1},
		{"2.0", "2.0.0", 0},
		{"2", "2.0.0.0", 0},
		{"2.0.1", "2.0", +1},
		{"1.02", "1.2", 0},
		{"10.0", "9.99.99", +1},
		{"1.0.0", "0.9", +1},
		{"99999999999999999999999.1", "99999999999999999999998.9", +1}, // beyond int64
		{"2.0.0-rc.1", "2.0.0", -1},
		{"2.0-rc.1", "2.0.0-rc.1", 0},
		{"2.0.0", "2.0.0-rc.1", +1},
		{"2.0.1-rc.1", "2.0.0", +1},
		{"1.0.0-alpha", "1.0.0-alpha.1", -1},
		{"1.0.0-alpha.1", "1.0.0-alpha.beta", -1},
		{"1.0.0-alpha.beta", "1.0.0-beta", -1},
		{"1.0.0-beta", "1.0.0-beta.2", -1},
		{"1.0.0-beta.2", "1.0.0-beta.11", -1},
		{"1.0.0-beta.11", "1.0.0-rc.1", -1},
		{"1.0.0-rc.1", "1.0.0", -1},
		{"1.0-RC1", "1.0-rc1", -1}, // ASCII order
		{"1.0-1", "1.0-a", -1},     // numeric before alphanumeric
		{"bogus", "0.0.1", -1},     // invalid sorts first
		{"0.0.1", "bogus", +1},
		{"a", "b", -1}, // two invalid ones: string order
		{"", "", 0},
	}
	for _, tc := range tests {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := CompareVersions(tc.b, tc.a); got != -tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d (antisymmetry)", tc.b, tc.a, got, -tc.want)
		}
	}
}
