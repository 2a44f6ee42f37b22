package fetch

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
)

// kind is what the extraction made at a name.
type kind uint8

const (
	kindNone kind = iota
	kindFile
	kindDir
	kindSymlink
)

// archiveError refuses the archive: the content is what was asked for, but
// it cannot be unpacked safely.
func archiveError(format string, args ...any) *proto.Error {
	return proto.InvalidField("url", "archive", format, args...)
}

// stageExtract unpacks the tarball r into a new hidden directory beside
// dest, writes the marker naming sum into it, and returns the directory's
// name (relative to root) and the number of entries written. On error
// nothing is left behind.
//
// An archive with more entries, or entries of more bytes in all, than lim
// allows is refused when the header that goes over is read: a
// decompression bomb costs no more than lim. Files are written sparse
// (blocks of zeros become holes), so a sparse entry takes the disk space
// of its data, though its holes count against lim.
//
// Every write goes through an os.Root opened on the new directory, so no
// entry can reach outside it even through a symlink. On top of that the
// archive is refused if any entry is absolute or has a ".." element, if a
// symlink's target is absolute or leads out of the directory, if a hard
// link names anything but a regular file earlier in the archive, or if an
// entry's path passes through a symlink the archive made. Symlinks are
// created with their targets in clean form, so a ".." can only come first
// and count up from the link's own (real) directory: no chain of symlinks
// resolves outside the directory.
func stageExtract(ctx context.Context, root *os.Root, dest string, r io.Reader, sum string, lim unpackLimits, log *slog.Logger) (tmp string, n int, err error) {
	// The first header is read before anything is created: a stream that
	// is no archive leaves no trace.
	tr, err := openArchive(r)
	var first *tar.Header
	if err == nil {
		first, err = nextEntry(ctx, tr)
	}
	if err != nil && err != io.EOF {
		if ctx.Err() != nil {
			err = ctxError(ctx, "extract into "+dest)
		}
		return "", 0, err
	}
	tmp = tempName(dest, "extract")
	if err := root.Mkdir(tmp, 0o755); err != nil {
		return "", 0, rootpath.Error(dest, err)
	}
	defer func() {
		if err != nil {
			if ctx.Err() != nil {
				err = ctxError(ctx, "extract into "+dest)
			}
			if rerr := removeTree(root, tmp); rerr != nil {
				log.Warn("leftover extraction directory", "path", tmp, "err", rerr)
			}
			tmp, n = "", 0
		}
	}()
	dir, err := root.OpenRoot(tmp)
	if err != nil {
		return tmp, 0, rootpath.Local("extract", err)
	}
	defer dir.Close()
	x := &extractor{dir: dir, kinds: map[string]kind{}, dirs: map[string]*tar.Header{}, lim: lim, log: log,
		buf: make([]byte, copyBuffer)}
	if err := x.run(ctx, tr, first); err != nil {
		return tmp, 0, err
	}
	m, err := dir.OpenFile(markerName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return tmp, 0, rootpath.Local("extract marker", err)
	}
	_, err = m.WriteString(sum + "\n")
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return tmp, 0, rootpath.Local("extract marker", err)
	}
	x.finishDirs()
	if err := syncTree(dir); err != nil {
		return tmp, 0, rootpath.Local("extract: sync", err)
	}
	return tmp, x.n, nil
}

// openArchive sniffs the compression from the first bytes.
func openArchive(r io.Reader) (*tar.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(3)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, proto.WithCause(archiveError("not a gzip stream: %v", err), err)
		}
		return tar.NewReader(zr), nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return tar.NewReader(bzip2.NewReader(br)), nil
	}
	return tar.NewReader(br), nil
}

// extractor writes the entries of one archive into dir.
type extractor struct {
	dir   *os.Root
	kinds map[string]kind        // what each entry name holds now
	dirs  map[string]*tar.Header // directory entries, whose modes and times are set last
	n     int                    // entries written
	lim   unpackLimits
	bytes int64 // the sizes of the entries read
	buf   []byte
	log   *slog.Logger
}

// run writes first (nil for an empty archive) and the entries after it.
func (x *extractor) run(ctx context.Context, tr *tar.Reader, first *tar.Header) error {
	for hdr, count := first, 1; hdr != nil; count++ {
		// Every entry counts, the skipped ones too: reading them costs.
		if count > x.lim.entries {
			return archiveError("holds more than %d entries, the agent's unpack limit", x.lim.entries)
		}
		if x.bytes += max(hdr.Size, 0); x.bytes > x.lim.bytes {
			return archiveError("unpacks to more than %d bytes, the agent's unpack limit", x.lim.bytes)
		}
		if err := x.entry(hdr, tr); err != nil {
			return err
		}
		var err error
		if hdr, err = nextEntry(ctx, tr); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
	return nil
}

// nextEntry reads the next header: io.EOF at the end, an archive error for
// a stream that is not a valid tar, or ctx's error once it ends.
func nextEntry(ctx context.Context, tr *tar.Reader) (*tar.Header, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	hdr, err := tr.Next()
	switch {
	case err == nil, err == io.EOF:
		return hdr, err
	case errors.Is(err, tar.ErrInsecurePath) && hdr != nil:
		return hdr, nil // entry's own checks refuse it
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	return nil, proto.WithCause(archiveError("not a valid tar archive (plain, gzip or bzip2): %v", err), err)
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, why := entryName(hdr.Name)
	if why != "" {
		return archiveError("entry %q %s", hdr.Name, why)
	}
	if name == "." {
		return nil // the directory itself
	}
	if name == markerName || strings.HasPrefix(name, markerName+"/") {
		x.log.Info("archive entry skipped: the name is the extraction marker's", "entry", hdr.Name)
		return nil
	}
	for i := range len(name) {
		if name[i] == '/' && x.kinds[name[:i]] == kindSymlink {
			return archiveError("entry %q passes through the symlink %q", hdr.Name, name[:i])
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.mkdir(name, hdr)
	case tar.TypeReg, tar.TypeGNUSparse:
		return x.file(name, hdr, r)
	case tar.TypeSymlink:
		return x.symlink(name, hdr)
	case tar.TypeLink:
		return x.hardlink(name, hdr)
	case tar.TypeXGlobalHeader:
		return nil
	}
	x.log.Info("archive entry skipped: unsupported type", "entry", hdr.Name, "type", string(hdr.Typeflag))
	return nil
}

// entryName cleans an entry's name, or says why it is refused.
func entryName(n string) (string, string) {
	switch {
	case n == "":
		return "", "has an empty name"
	case strings.IndexByte(n, 0) >= 0:
		return "", "has a NUL byte in its name"
	case strings.HasPrefix(n, "/"):
		return "", "is absolute"
	}
	for el := range strings.SplitSeq(n, "/") {
		if el == ".." {
			return "", `has a ".." element`
		}
	}
	return path.Clean(n), ""
}

// prepare makes name's parent directories and clears name for a new entry:
// a later entry replaces an earlier one of the same name, as tar does, but
// never a directory (unless the new entry is one: it returns true then).
// Removing what is there first means no write ever follows a link.
func (x *extractor) prepare(name string, dir bool) (exists bool, err error) {
	if parent := path.Dir(name); parent != "." {
		if err := x.dir.MkdirAll(parent, 0o755); err != nil {
			return false, x.fsError(name, err)
		}
	}
	st, err := x.dir.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, x.fsError(name, err)
	}
	if st.IsDir() {
		if dir {
			return true, nil
		}
		return false, archiveError("entry %q would replace a directory", name)
	}
	if err := x.dir.Remove(name); err != nil {
		return false, x.fsError(name, err)
	}
	delete(x.kinds, name)
	return false, nil
}

func (x *extractor) mkdir(name string, hdr *tar.Header) error {
	exists, err := x.prepare(name, true)
	if err != nil {
		return err
	}
	if !exists {
		// Writable until finishDirs: a read-only directory must still
		// take the entries that follow.
		if err := x.dir.Mkdir(name, 0o755); err != nil {
			return x.fsError(name, err)
		}
	}
	x.kinds[name] = kindDir
	x.dirs[name] = hdr
	x.n++
	return nil
}

func (x *extractor) file(name string, hdr *tar.Header, r io.Reader) error {
	if _, err := x.prepare(name, false); err != nil {
		return err
	}
	f, err := x.dir.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return x.fsError(name, err)
	}
	x.kinds[name] = kindFile
	err = copySparse(f, readTagger{r}, x.buf)
	if err == nil {
		err = f.Chmod(fs.FileMode(hdr.Mode) & fs.ModePerm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	var re *readError
	if errors.As(err, &re) {
		return proto.WithCause(archiveError("entry %q: %v", hdr.Name, re.err), re.err)
	}
	if err != nil {
		return x.fsError(name, err)
	}
	if !hdr.ModTime.IsZero() {
		_ = x.dir.Chtimes(name, hdr.ModTime, hdr.ModTime) // cosmetic
	}
	x.n++
	return nil
}

func (x *extractor) symlink(name string, hdr *tar.Header) error {
	target := hdr.Linkname
	switch {
	case target == "":
		return archiveError("entry %q is a symlink with an empty target", hdr.Name)
	case strings.IndexByte(target, 0) >= 0:
		return archiveError("entry %q is a symlink with a NUL byte in its target", hdr.Name)
	case path.IsAbs(target):
		return archiveError("entry %q is a symlink to the absolute path %q", hdr.Name, target)
	}
	target = path.Clean(target)
	if to := path.Join(path.Dir(name), target); to == ".." || strings.HasPrefix(to, "../") {
		return archiveError("entry %q is a symlink leading out of the directory (to %q)", hdr.Name, hdr.Linkname)
	}
	if _, err := x.prepare(name, false); err != nil {
		return err
	}
	if err := x.dir.Symlink(target, name); err != nil {
		return x.fsError(name, err)
	}
	x.kinds[name] = kindSymlink
	x.n++
	return nil
}

func (x *extractor) hardlink(name string, hdr *tar.Header) error {
	target, why := entryName(hdr.Linkname)
	if why != "" {
		return archiveError("entry %q is a hard link to %q, which %s", hdr.Name, hdr.Linkname, why)
	}
	if target == name || x.kinds[target] != kindFile {
		return archiveError("entry %q is a hard link to %q, which is not a regular file earlier in the archive", hdr.Name, hdr.Linkname)
	}
	if _, err := x.prepare(name, false); err != nil {
		return err
	}
	if err := x.dir.Link(target, name); err != nil {
		return x.fsError(name, err)
	}
	x.kinds[name] = kindFile
	x.n++
	return nil
}

// finishDirs gives directory entries their modes and times, deepest first
// so that a directory closed to its owner is not on the way to another.
func (x *extractor) finishDirs() {
	names := make([]string, 0, len(x.dirs))
	for n := range x.dirs {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, n := range names {
		hdr := x.dirs[n]
		if !hdr.ModTime.IsZero() {
			_ = x.dir.Chtimes(n, time.Now(), hdr.ModTime)
		}
		if err := x.dir.Chmod(n, fs.FileMode(hdr.Mode)&fs.ModePerm); err != nil {
			x.log.Warn("archive directory mode", "entry", n, "err", err)
		}
	}
}

// fsError classifies a failed write of an entry: one the archive's layout
// causes (a file where a directory must go, say) refuses the archive;
// anything else is a local failure.
func (x *extractor) fsError(name string, err error) error {
	for _, e := range []error{syscall.ENOTDIR, syscall.EEXIST, syscall.EISDIR, syscall.ELOOP,
		syscall.ENAMETOOLONG, syscall.EINVAL, syscall.ENOENT, syscall.EMLINK} {
		if errors.Is(err, e) {
			return proto.WithCause(archiveError("entry %q: %v", name, err), err)
		}
	}
	if rootpath.IsEscape(err) {
		return proto.WithCause(archiveError("entry %q leads out of the directory", name), err)
	}
	return rootpath.Local("extract "+name, err)
}

// readError marks a failure to read the archive, as opposed to writing it.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

type readTagger struct{ r io.Reader }

func (t readTagger) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		err = &readError{err}
	}
	return n, err
}
