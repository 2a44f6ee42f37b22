package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/image"
)

func TestImageCLI(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "signing.key")
	payload := filepath.Join(dir, "rootfs.ext4")
	img := filepath.Join(dir, "update.img")
	data := make([]byte, 100_000)
	rand.Read(data)
	if err := os.WriteFile(payload, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)

	stdout, stderr, code := cli(t, "", "image", "keygen", "--out", key)
	if code != 0 {
		t.Fatalf("keygen: %d %s", code, stderr)
	}
	pub, err := image.LoadPublicKey(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.LoadPrivateKey(key); err != nil {
		t.Fatal(err)
	}
	keyID := image.KeyID(pub)
	for _, want := range []string{keyID, key + " ", key + ".pub", "--trust-key"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("keygen output lacks %q:\n%s", want, stdout)
		}
	}
	if _, stderr, code := cli(t, "", "image", "keygen", "--out", key); code != 1 || !strings.Contains(stderr, "refusing to overwrite") {
		t.Fatalf("keygen over an existing key: %d %s", code, stderr)
	}
	other := filepath.Join(dir, "other.key")
	if _, stderr, code := cli(t, "", "image", "keygen", "-o", other); code != 0 {
		t.Fatalf("keygen: %d %s", code, stderr)
	}

	stdout, stderr, code = cli(t, "", "image", "build", "--key", key, "--model", "imx8", "-m", "imx8mp",
		"--version", "1.4.2", "--chunk-size", "16KiB", payload, "-o", img)
	if code != 0 {
		t.Fatalf("build: %d %s", code, stderr)
	}
	for _, want := range []string{"built " + img, "1.4.2", "imx8, imx8mp", "97.7 KiB, sha256 " + hex.EncodeToString(sum[:]),
		"7 of 16 KiB (the last 1.7 KiB)", keyID} {
		if !strings.Contains(stdout, want) {
			t.Errorf("build output lacks %q:\n%s", want, stdout)
		}
	}
	im, err := image.OpenFile(img)
	if err != nil {
		t.Fatal(err)
	}
	offset := im.PayloadOffset()
	im.Close()

	// inspect, unchecked, checked, and as JSON.
	stdout, stderr, code = cli(t, "", "image", "inspect", img)
	if code != 0 || !strings.Contains(stdout, "not checked") || !strings.Contains(stdout, "1.4.2") {
		t.Fatalf("inspect: %d %s\n%s", code, stderr, stdout)
	}
	stdout, stderr, code = cli(t, "", "image", "inspect", img, "--verify-with", other+".pub", "--verify-with", key+".pub", "--chunks")
	if code != 0 || !strings.Contains(stdout, "ok, key "+keyID) || !strings.Contains(stdout, "ok, 7 chunks") {
		t.Fatalf("inspect --verify-with: %d %s\n%s", code, stderr, stdout)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if f := strings.Fields(lines[len(lines)-1]); len(f) != 4 || f[0] != "6" || f[1] != fmt.Sprint(offset+6*16384) || f[2] != "1696" || len(f[3]) != 64 {
		t.Errorf("inspect --chunks: the last row is %q:\n%s", f, stdout)
	}
	var rep imageInspectJSON
	stdout, stderr, code = cli(t, "", "image", "inspect", img, "--json", "--verify-with", key+".pub")
	if code != 0 {
		t.Fatalf("inspect --json: %d %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, stdout)
	}
	if rep.PayloadOffset != offset || rep.SignatureOK == nil || !*rep.SignatureOK || rep.PayloadOK == nil || !*rep.PayloadOK ||
		rep.Manifest.Version != "1.4.2" || rep.Manifest.ChunkSize != 16384 || len(rep.Manifest.Chunks) != 7 {
		t.Fatalf("inspect --json: %s", stdout)
	}
	stdout, _, _ = cli(t, "", "image", "inspect", img, "--json")
	if strings.Contains(stdout, "signature_ok") || strings.Contains(stdout, "payload_ok") {
		t.Fatalf("inspect --json without --verify-with reports checks:\n%s", stdout)
	}

	// Failures: another key, a flipped payload byte, a truncated file.
	stdout, stderr, code = cli(t, "", "image", "inspect", img, "--verify-with", other+".pub")
	if code != 1 || !strings.Contains(stdout, "signature      BAD") || !strings.Contains(stderr, "which is not trusted") {
		t.Fatalf("inspect with another key: %d %s\n%s", code, stderr, stdout)
	}
	stdout, _, code = cli(t, "", "image", "inspect", img, "--verify-with", other+".pub", "--json")
	rep = imageInspectJSON{}
	if err := json.Unmarshal([]byte(stdout), &rep); code != 1 || err != nil || rep.SignatureOK == nil || *rep.SignatureOK || !strings.Contains(rep.SignatureError, "not trusted") {
		t.Fatalf("inspect --json with another key: %d %v\n%s", code, err, stdout)
	}
	b, _ := os.ReadFile(img)
	tampered := filepath.Join(dir, "tampered.img")
	b[offset+2*16384+5] ^= 0x40
	os.WriteFile(tampered, b, 0o644)
	stdout, stderr, code = cli(t, "", "image", "inspect", tampered, "--verify-with", key+".pub")
	if code != 1 || !strings.Contains(stderr, "chunk 2 ") || !strings.Contains(stdout, "signature      ok") {
		t.Fatalf("inspect of a tampered payload: %d %s\n%s", code, stderr, stdout)
	}
	b[offset+2*16384+5] ^= 0x40
	truncated := filepath.Join(dir, "truncated.img")
	os.WriteFile(truncated, b[:len(b)-2000], 0o644)
	if _, stderr, code := cli(t, "", "image", "inspect", truncated); code != 1 || !strings.Contains(stderr, "truncated") {
		t.Fatalf("inspect of a truncated image: %d %s", code, stderr)
	}

	// build --json, and reproducible with SOURCE_DATE_EPOCH.
	t.Setenv("SOURCE_DATE_EPOCH", "1767225600") // 2026-01-01
	var out [2][]byte
	for i := range out {
		stdout, stderr, code = cli(t, "", "image", "build", "-k", key, "-m", "sim", "--version", "2.0.0-rc.1", payload, "-o", img, "--json")
		if code != 0 {
			t.Fatalf("build --json: %d %s", code, stderr)
		}
		var res imageBuildJSON
		if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Image != img || res.Manifest.ChunkSize != image.DefaultChunkSize ||
			!res.Manifest.Created.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) || res.Manifest.KeyID != keyID {
			t.Fatalf("build --json: %v\n%s", err, stdout)
		}
		out[i], _ = os.ReadFile(img)
		if int64(len(out[i])) != res.Size {
			t.Fatalf("size %d, file %d bytes", res.Size, len(out[i]))
		}
	}
	if !bytes.Equal(out[0], out[1]) {
		t.Fatal("two builds with SOURCE_DATE_EPOCH differ")
	}
}

func TestImageCLIErrors(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	if _, stderr, code := cli(t, "", "image", "keygen", "--out", key); code != 0 {
		t.Fatalf("keygen: %s", stderr)
	}
	payload := filepath.Join(dir, "payload")
	os.WriteFile(payload, []byte("payload"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	notImage := filepath.Join(dir, "not.img")
	os.WriteFile(notImage, bytes.Repeat([]byte("x"), 5000), 0o644)
	img := filepath.Join(dir, "out.img")
	build := func(extra ...string) []string {
		return append([]string{"image", "build", "--key", key, "--model", "imx8", "--version", "1.0", "-o", img}, extra...)
	}
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown image command", []string{"image", "frobnicate"}, 2, `unknown image command "frobnicate"`},
		{"keygen without --out", []string{"image", "keygen"}, 2, "--out PATH is required"},
		{"keygen with an argument", []string{"image", "keygen", "x", "--out", filepath.Join(dir, "x")}, 2, "takes 0 argument"},
		{"keygen in a missing directory", []string{"image", "keygen", "--out", filepath.Join(dir, "no/such/k")}, 1, "no such file"},
		{"build without a payload", build(), 2, "takes 1 argument"},
		{"build without --key", []string{"image", "build", "--model", "m", "--version", "1", "-o", img, payload}, 2, "--key KEY is required"},
		{"build without -o", []string{"image", "build", "--key", key, "--model", "m", "--version", "1", payload}, 2, "-o IMAGE is required"},
		{"build without --version", []string{"image", "build", "--key", key, "--model", "m", "-o", img, payload}, 2, "--version V is required"},
		{"build without --model", []string{"image", "build", "--key", key, "--version", "1", "-o", img, payload}, 2, "--model M is required"},
		{"bad version", []string{"image", "build", "--key", key, "--model", "m", "--version", "latest", "-o", img, payload}, 2, `--version "latest"`},
		{"chunk size not a size", build("--chunk-size", "big", payload), 2, `"big" is not a size`},
		{"chunk size not a power of two", build("--chunk-size", "3000", payload), 2, "power of two"},
		{"chunk size too large", build("--chunk-size", "128MiB", payload), 2, "power of two"},
		{"chunk size too small", build("--chunk-size", "2K", payload), 2, "power of two"},
		{"bad model", build("--model", "a\nb", payload), 2, "models[1]"},
		{"empty payload", build(empty), 2, "empty payload"},
		{"missing payload", build(filepath.Join(dir, "nope")), 1, "no such file"},
		{"payload is a directory", build(dir), 1, "not a regular file"},
		{"public key as --key", []string{"image", "build", "--key", key + ".pub", "--model", "m", "--version", "1", "-o", img, payload}, 1, `want "PRIVATE KEY"`},
		{"missing key", []string{"image", "build", "--key", key + ".nope", "--model", "m", "--version", "1", "-o", img, payload}, 1, "no such file"},
		{"bad SOURCE_DATE_EPOCH", build(payload), 2, "SOURCE_DATE_EPOCH"},
		{"inspect without an image", []string{"image", "inspect"}, 2, "takes 1 argument"},
		{"inspect a missing image", []string{"image", "inspect", filepath.Join(dir, "nope.img")}, 1, "no such file"},
		{"inspect a non-image", []string{"image", "inspect", notImage}, 1, "not a valid boardlink image"},
		{"inspect with a private key", []string{"image", "inspect", notImage, "--verify-with", key}, 1, `want "PUBLIC KEY"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "bad SOURCE_DATE_EPOCH" {
				t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
			}
			_, stderr, code := cli(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("%q: got %d %q, want %d and %q", tc.args, code, stderr, tc.code, tc.msg)
			}
		})
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Fatalf("a failed build left %s: %v", img, err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("a failed build left %s", e.Name())
		}
	}
}

func TestImageHelp(t *testing.T) {
	stdout, _, code := cli(t, "", "image")
	if code != 0 || !strings.Contains(stdout, "keygen") || !strings.Contains(stdout, "inspect") {
		t.Fatalf("image: %d\n%s", code, stdout)
	}
	stdout, _, _ = cli(t, "", "--help")
	if !strings.Contains(stdout, "image ") {
		t.Errorf("boardlink --help does not list image:\n%s", stdout)
	}
	for verb, wants := range map[string][]string{
		"":        {"manifest.json", "manifest.sig", "openssl pkeyutl -verify", "--trust-key", "1.2.10", "Examples:"},
		"keygen":  {"PATH.pub", "0600", "never overwrites", "Exit status", "Examples:"},
		"build":   {"--model", "--version", "--chunk-size", "4KiB to 64MiB", "SOURCE_DATE_EPOCH", "Exit status", "Examples:"},
		"inspect": {"--verify-with", "payload_offset", "signature_ok", "--chunks", "Exit status", "Examples:"},
	} {
		args := []string{"image", "--help"}
		if verb != "" {
			args = []string{"image", verb, "--help"}
		}
		stdout, _, code := cli(t, "", args...)
		if code != 0 || !strings.Contains(stdout, "Usage:") {
			t.Fatalf("%v: %d\n%s", args, code, stdout)
		}
		for _, want := range wants {
			if !strings.Contains(stdout, want) {
				t.Errorf("%v lacks %q", args, want)
			}
		}
	}
}
