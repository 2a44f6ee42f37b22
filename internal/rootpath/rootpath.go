// Package rootpath turns the errors of os.Root operations on a request's
// path into protocol errors: a missing path is not_found, and a way out of
// the root (through a symlink or "..") is invalid params on "path", never
// followed. The agent's file methods and its downloader share it.
package rootpath

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/boardlink/boardlink/proto"
)

// Error is the answer for err, from an operation on the request's path p.
// An error that already carries a reason is returned as it is; one that is
// none of the above is internal. The result still wraps err.
func Error(p string, err error) error {
	switch {
	case err == nil:
		return nil
	case proto.ReasonOf(err) != "":
		return err
	case errors.Is(err, fs.ErrNotExist):
		return proto.WithCause(proto.Errorf(proto.ReasonNotFound, "%s: no such file or directory", p), err)
	case errors.Is(err, fs.ErrPermission):
		return proto.WithCause(proto.InvalidField("path", "permission", "%s: permission denied", p), err)
	case IsEscape(err):
		return proto.WithCause(proto.InvalidField("path", "root",
			"%s leads out of its file root (through a symlink or \"..\"): refused", p), err)
	}
	return proto.WithCause(proto.Errorf(proto.ReasonInternal, "%s: %v", p, err), err)
}

// IsEscape reports an os.Root refusal. The os package does not export the
// error, so it is recognised as the one PathError not caused by a syscall.
func IsEscape(err error) bool {
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		return false
	}
	var errno syscall.Errno
	if errors.As(pe.Err, &errno) {
		return false
	}
	return strings.Contains(pe.Err.Error(), "escapes")
}

// SyncDir makes a rename in dir (relative to root) durable. Some file
// systems cannot fsync a directory; the rename is then as durable as they
// make it.
func SyncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return nil
}
