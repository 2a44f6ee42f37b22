package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path"

	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
)

// install puts the content of src (size bytes from offset 0) at Dest: a
// file, or with Extract the unpacked tree. With verify, the content is
// hashed on the way and, if it does not match, nothing is installed and
// the error wraps errCorrupt. It returns the entries extracted.
func (f *Fetcher) install(ctx context.Context, req Request, mode fs.FileMode, src *os.File, size int64, verify bool, pr *reporter) (int, error) {
	unlock, err := f.locks.lock(ctx, destKey(req))
	if err != nil {
		return 0, ctxError(ctx, "waiting for another install into "+req.Dest)
	}
	defer unlock()
	phase := "install"
	if req.Extract {
		phase = "extract"
	}
	pr.report(phase, 0, size, true)
	h := sha256.New()
	r := &ctxReader{ctx: ctx, r: &countReader{r: io.TeeReader(io.NewSectionReader(src, 0, size), h), fn: func(n int64) {
		pr.report(phase, n, size, false)
	}}}
	check := func() error {
		if got := hex.EncodeToString(h.Sum(nil)); verify && got != req.SHA256 {
			return mismatch(req.SHA256, got)
		}
		return nil
	}

	if req.Extract {
		tmp, n, err := stageExtract(ctx, req.Root, req.Dest, r, req.SHA256, req.bounds().unpack, f.log)
		if verify {
			// A corrupt blob may fail as an archive before its hash is
			// known: read it all, and let the hash decide which error it is.
			_, verr := io.Copy(io.Discard, r)
			if verr == nil {
				verr = check()
			} else if ctx.Err() != nil {
				verr = ctxError(ctx, "extract into "+req.Dest)
			} else {
				verr = rootpath.Local("read cache blob", verr)
			}
			if verr != nil && err == nil {
				_ = removeTree(req.Root, tmp)
			}
			if verr != nil && (err == nil || errors.Is(verr, errCorrupt)) {
				return 0, verr
			}
		}
		if err != nil {
			return 0, err
		}
		if err := commitDir(req.Root, tmp, req.Dest, f.log); err != nil {
			if rerr := removeTree(req.Root, tmp); rerr != nil {
				f.log.Warn("leftover extraction directory", "path", tmp, "err", rerr)
			}
			return 0, err
		}
		return n, nil
	}

	tmp := tempName(req.Dest, "tmp")
	out, err := req.Root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, rootpath.Error(req.Dest, err)
	}
	committed := false
	defer func() {
		if !committed {
			out.Close()
			_ = req.Root.Remove(tmp)
		}
	}()
	if _, err := io.Copy(out, r); err != nil {
		if ctx.Err() != nil {
			return 0, ctxError(ctx, "install "+req.Dest)
		}
		return 0, rootpath.Local("install "+req.Dest, err)
	}
	if err := check(); err != nil {
		return 0, err
	}
	if err := out.Chmod(mode); err != nil {
		return 0, rootpath.Local("chmod "+req.Dest, err)
	}
	if err := out.Sync(); err != nil {
		return 0, rootpath.Local("fsync "+req.Dest, err)
	}
	if err := out.Close(); err != nil {
		return 0, rootpath.Local("install "+req.Dest, err)
	}
	if err := req.Root.Rename(tmp, req.Dest); err != nil {
		return 0, rootpath.Error(req.Dest, err)
	}
	committed = true
	return 0, rootpath.SyncDir(req.Root, path.Dir(req.Dest))
}

// commitDir replaces dest (absent or a directory) with the directory tmp:
// the old one is renamed aside, the new one renamed in, the old one removed.
func commitDir(root *os.Root, tmp, dest string, log *slog.Logger) error {
	old := ""
	if st, err := root.Lstat(dest); err == nil {
		if !st.IsDir() {
			return proto.InvalidField("path", "dir", "%s exists and is not a directory", dest)
		}
		old = tempName(dest, "old")
		if err := root.Rename(dest, old); err != nil {
			return rootpath.Error(dest, err)
		}
	}
	if err := root.Rename(tmp, dest); err != nil {
		if old != "" {
			if rerr := root.Rename(old, dest); rerr != nil {
				log.Error("could not put the old directory back", "path", dest, "aside", old, "err", rerr)
			}
		}
		return rootpath.Error(dest, err)
	}
	if err := rootpath.SyncDir(root, path.Dir(dest)); err != nil {
		log.Warn("fsync after replacing a directory", "path", dest, "err", err)
	}
	if old != "" {
		if err := removeTree(root, old); err != nil {
			log.Warn("leftover replaced directory", "path", old, "err", err)
		}
	}
	return nil
}

// tempName is a fresh hidden name beside dest for a file or directory of
// the given kind.
func tempName(dest, kind string) string {
	base := path.Base(dest)
	if len(base) > 64 {
		base = base[:64] // leave room under NAME_MAX
	}
	return path.Join(path.Dir(dest), fmt.Sprintf(".%s.boardlink-%s-%016x", base, kind, rand.Uint64()))
}

// removeTree removes name and everything under it, including directories
// an archive made read-only.
func removeTree(root *os.Root, name string) error {
	if err := root.RemoveAll(name); err == nil {
		return nil
	}
	makeWritable(root, name, 0)
	return root.RemoveAll(name)
}

// makeWritable gives the owner full access to name and every directory
// below it, so that their entries can be removed. Symlinks are not
// followed.
func makeWritable(root *os.Root, name string, depth int) {
	st, err := root.Lstat(name)
	if err != nil || !st.IsDir() || depth > 4096 {
		return
	}
	_ = root.Chmod(name, st.Mode().Perm()|0o700)
	d, err := root.Open(name)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		makeWritable(root, name+"/"+n, depth+1)
	}
}
