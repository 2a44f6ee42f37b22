package agent

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/boardlink/boardlink/proto"
)

// openRoot finds the file root holding p (an absolute, clean board path,
// checked by the request's validation) and opens it. rel is p relative to
// the root, "." for the root itself. Every access then goes through the
// os.Root, which refuses to leave it by ".." or by a symlink, so a check
// made here cannot be raced by a symlink swapped in later.
func (a *Agent) openRoot(p string) (root *os.Root, rel string, err error) {
	best := ""
	for _, dir := range a.cfg.Roots {
		dir = filepath.Clean(dir)
		if len(dir) <= len(best) {
			continue
		}
		switch {
		case p == dir:
			best, rel = dir, "."
		case strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/"):
			best, rel = dir, strings.TrimPrefix(p[len(dir):], "/")
		}
	}
	if best == "" {
		return nil, "", proto.InvalidField("path", "root", "%s is outside the agent's file roots (%s)",
			p, strings.Join(a.cfg.Roots, ", "))
	}
	root, err = os.OpenRoot(best)
	if err != nil {
		return nil, "", proto.Errorf(proto.ReasonInternal, "file root %s: %v", best, err)
	}
	return root, rel, nil
}

// fileInfo is the answer for an existing path.
func fileInfo(p string, st fs.FileInfo) proto.FileInfo {
	return proto.FileInfo{Path: p, Exists: true, Dir: st.IsDir(), Size: st.Size(),
		Mode: uint32(st.Mode().Perm()), ModTime: st.ModTime().UTC()}
}
