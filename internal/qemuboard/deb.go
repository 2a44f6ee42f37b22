package qemuboard

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Deb returns the directory pkg's Debian package is unpacked in (with
// dpkg-deb -x, no root needed): the version apt would install now, fetched
// with apt-get download (which needs the apt lists: apt-get update) and
// checked against the sha256 of the lists, once per version.
func (c *Cache) Deb(ctx context.Context, pkg string) (string, error) {
	out, err := run(ctx, "", nil, "apt-get", "download", "--print-uris", pkg)
	if err != nil {
		return "", fmt.Errorf("%w: %w (the apt lists may be missing: apt-get update)", ErrUnavailable, err)
	}
	// 'URI' FILE SIZE SHA256:HEX
	f := strings.Fields(string(bytes.TrimSpace(out)))
	if len(f) != 4 || !strings.HasPrefix(f[3], "SHA256:") {
		return "", fmt.Errorf("%w: apt-get download --print-uris %s said %q", ErrUnavailable, pkg, out)
	}
	file, sum := f[1], strings.TrimPrefix(f[3], "SHA256:")
	debs := filepath.Join(c.Dir, "debs")
	deb := filepath.Join(debs, file)
	if _, err := os.Stat(deb); err != nil {
		if err := c.download(ctx, debs, pkg, file, sum); err != nil {
			return "", err
		}
	}
	return c.entry("deb-"+pkg, sum[:16], func(dir string) error {
		_, err := run(ctx, "", nil, "dpkg-deb", "-x", deb, dir)
		return err
	})
}

// download fetches pkg into debs as file, checking its sha256.
func (c *Cache) download(ctx context.Context, debs, pkg, file, sum string) error {
	c.logf("qemuboard: apt-get download %s", pkg)
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// apt-get sandboxes downloads as _apt, who cannot write a user's
	// directory: as root it says so and goes on unsandboxed, which is
	// what we want for a private temporary directory.
	if _, err := run(ctx, tmp, nil, "apt-get", "download", "-q", pkg); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	got, err := sha256File(filepath.Join(tmp, file))
	if err != nil {
		return fmt.Errorf("%w: apt-get download %s: %w", ErrUnavailable, pkg, err)
	}
	if got != sum {
		return fmt.Errorf("%w: apt-get download %s: sha256 %s, the apt lists say %s", ErrUnavailable, pkg, got, sum)
	}
	return os.Rename(filepath.Join(tmp, file), filepath.Join(debs, file))
}

// KernelPackage is the versioned kernel package the metapackage meta
// depends on (linux-image-cloud-amd64: linux-image-6.1.0-NN-cloud-amd64).
func KernelPackage(ctx context.Context, meta string) (string, error) {
	out, err := run(ctx, "", nil, "apt-cache", "depends", "--important", meta)
	if err != nil {
		return "", fmt.Errorf("%w: %w (the apt lists may be missing: apt-get update)", ErrUnavailable, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") {
			return dep, nil
		}
	}
	return "", fmt.Errorf("%w: %s depends on no linux-image package: %q", ErrUnavailable, meta, out)
}

func sha256File(path string) (string, error) {
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
