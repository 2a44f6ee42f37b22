package qemuboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ErrUnavailable is wrapped by the errors of a tool that is not installed
// or a download that failed: what a test skips on (and fails on under
// BOARDLINK_E2E=1), unlike a wrong result.
var ErrUnavailable = errors.New("unavailable")

// Cache is the directory the parts of the boards are built into, each
// under a name that ends with a hash of what it was made from, so that a
// rerun reuses what did not change and a change rebuilds only what
// depends on it. Entries are made in a temporary directory and renamed
// into place, so concurrent test processes never see half of one.
type Cache struct {
	Dir  string
	Logf func(format string, args ...any) // what is built or downloaded; nil: nothing
}

// DefaultCacheDir is $BOARDLINK_QEMU_CACHE, else boardlink/qemuboard in the
// user's cache directory (~/.cache/boardlink/qemuboard).
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("BOARDLINK_QEMU_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("qemuboard: no cache directory: %w", err)
	}
	return filepath.Join(d, "boardlink", "qemuboard"), nil
}

func (c *Cache) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// key hashes the parts something is made from into a short name suffix.
func key(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// fileKey hashes the content of files.
func fileKey(files ...string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		in, err := os.Open(f)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, in)
		in.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// pruneAge is how long an entry may go unused before the build of another
// of its kind removes it: every change of the agent makes a new initramfs
// and ESP (tens of MiB), which would otherwise pile up.
const pruneAge = 24 * time.Hour

// entry returns the directory name-k in the cache, calling build to fill
// it in a temporary directory first when it is not there yet. A hit marks
// the entry used (its mtime); a build removes the entries of the same name
// left unused for pruneAge.
func (c *Cache) entry(name, k string, build func(dir string) error) (string, error) {
	final := filepath.Join(c.Dir, name+"-"+k)
	if _, err := os.Stat(final); err == nil {
		now := time.Now()
		_ = os.Chtimes(final, now, now) // best effort: a read-only cache is still a cache
		return final, nil
	}
	defer c.prune(name, final)
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", fmt.Errorf("qemuboard: cache: %w", err)
	}
	tmp, err := os.MkdirTemp(c.Dir, ".build-"+name+"-")
	if err != nil {
		return "", fmt.Errorf("qemuboard: cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	c.logf("qemuboard: building %s into %s", name, final)
	if err := build(tmp); err != nil {
		return "", fmt.Errorf("qemuboard: building %s: %w", name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		if _, statErr := os.Stat(final); statErr == nil {
			return final, nil // another process made it first
		}
		return "", fmt.Errorf("qemuboard: cache: %w", err)
	}
	return final, nil
}

// prune removes the entries name-KEY other than keep left unused for
// pruneAge.
func (c *Cache) prune(name, keep string) {
	old, _ := filepath.Glob(filepath.Join(c.Dir, name+"-"+strings.Repeat("?", 16)))
	for _, e := range old {
		if fi, err := os.Stat(e); err == nil && e != keep && time.Since(fi.ModTime()) > pruneAge {
			c.logf("qemuboard: removing %s, unused since %s", e, fi.ModTime().Format(time.DateTime))
			os.RemoveAll(e)
		}
	}
}

// tools names the Debian package of each host tool the boards are built
// or run with, for the error when one is missing.
var tools = map[string]string{
	"apt-get":            "apt",
	"apt-cache":          "apt",
	"dpkg-deb":           "dpkg",
	"grub-mkimage":       "grub-common",
	"grub-editenv":       "grub-common",
	"mkfs.vfat":          "dosfstools",
	"mcopy":              "mtools",
	"mmd":                "mtools",
	"mke2fs":             "e2fsprogs",
	"ldd":                "libc-bin",
	"qemu-system-x86_64": "qemu-system-x86",
	"go":                 "golang (or Go from go.dev)",
}

// lookTool finds a host tool, or says which package has it.
func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	// Debian keeps mkfs.vfat and mke2fs in /usr/sbin, not on a user's PATH.
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s not found (Debian package %s)", ErrUnavailable, name, tools[name])
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// run runs a host tool in dir and returns its standard output; a failure
// names the command and says what it printed.
func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	path, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
