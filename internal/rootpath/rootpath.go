package rootpath

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/boardlink/boardlink/proto"
)

// Error is the answer for err, from an operation on the request's path p.
// An error that already carries a reason is returned as it is. The result
// still wraps err.
func Error(p string, err error) error {
	switch {
	case err == nil:
		return nil
	case proto.ReasonOf(err) != "":
		return err
	case errors.Is(err, fs.ErrNotExist):
		return proto.WithCause(proto.Errorf(proto.ReasonNotFound, "%s: no such file or directory", p), err)
	case IsEscape(err):
		return proto.WithCause(proto.InvalidField("path", "root",
			"%s leads out of its file root (through a symlink or \"..\"): refused", p), err)
	}
	if rule, ok := Fault(err); ok {
		return proto.WithCause(proto.InvalidField("path", rule, "%s: %v", p, err), err)
	}
	return Local(p, err)
}

// Local is the answer for err from an operation of the agent's own (on its
// cache, or on a file it made): no_space for a full disk or quota, else
// internal. The result wraps err.
func Local(what string, err error) error {
	if proto.ReasonOf(err) != "" {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return proto.WithCause(proto.Errorf(proto.ReasonNoSpace, "%s: %v", what, err), err)
	}
	return proto.WithCause(proto.Errorf(proto.ReasonInternal, "%s: %v", what, err), err)
}

// faults are the errors a request causes, with the rule an invalid_params
// answer names.
var faults = []struct {
	errno syscall.Errno
	rule  string
}{
	{syscall.EACCES, "permission"},
	{syscall.EPERM, "permission"},
	{syscall.ENAMETOOLONG, "name_too_long"}, // an element over NAME_MAX
	{syscall.ENOTDIR, "dir"},                // a path through a file
	{syscall.EISDIR, "file"},                // a directory where a file must be
	{syscall.ELOOP, "symlink"},              // a symlink loop, or a symlink where none may be
	{syscall.EEXIST, "exists"},
	{syscall.E2BIG, "too_long"}, // execve: an argument or the argument list too long
	{syscall.EROFS, "read_only"},
}

// Fault reports whether err is one the request caused, and the rule to
// name in the invalid_params answer. The field depends on the request:
// "path" for a file operation, "argv" for E2BIG from exec.
func Fault(err error) (rule string, ok bool) {
	for _, f := range faults {
		if errors.Is(err, f.errno) {
			return f.rule, true
		}
	}
	return "", false
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

// EnsureParent checks that the parent of rel (p relative to root, slash
// separated) is a directory, or makes it and its parents when parents is
// set. p names the path in the error.
func EnsureParent(root *os.Root, p, rel string, parents bool) error {
	dir := path.Dir(rel)
	if parents {
		return Error(p, root.MkdirAll(dir, 0o755))
	}
	st, err := root.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return proto.Errorf(proto.ReasonNotFound, "%s: parent directory does not exist (ask for parents to create it)", p)
	}
	if err != nil {
		return Error(p, err)
	}
	if !st.IsDir() {
		return proto.InvalidField("path", "dir", "%s: parent is not a directory", p)
	}
	return nil
}

// SyncDir makes a rename in dir (relative to root) durable; its error is
// the agent's own (Local). Some file systems cannot fsync a directory; the
// rename is then as durable as they make it.
func SyncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return Local("fsync "+dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return Local("fsync "+dir, err)
	}
	return nil
}
