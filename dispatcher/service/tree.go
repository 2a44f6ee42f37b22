package service

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// Directory trees through the service (push -r, pull -r) cross as tar
// streams: entries of directories and regular files only, each file's
// sha256 in a PAX record (TreeSHA256), so that the board checks what it
// is sent and the client what it gets. Symlinks go as the direct tree
// transfer takes them: a pushed symlink to a file is sent as the file,
// one to a directory is left out; a pull lists no symlink.

// TreeSHA256 is the PAX record of a tree entry's sha256 (hex).
const TreeSHA256 = "BOARDLINK.sha256"

// MaxTreeEntries bounds the entries of a tree through the service, each
// way.
const MaxTreeEntries = 10000

// maxTreeName bounds a tree entry's name, and each of its elements.
const (
	maxTreeName    = 4096
	maxTreeElement = 255
)

// TreePushRequest is the spec of a tree pushed: its files go under Path
// on the board, or under Path/Name when Path ends in "/" or is a
// directory there (directories are made as the files' parents).
type TreePushRequest struct {
	Path string `json:"path" validate:"required,max=4096,excludes=\x00"`
	Name string `json:"name,omitempty" validate:"omitempty,max=255,excludes=/,excludes=\x00"`
}

// TreeFile is one file of a tree through the service: its name in the
// tree, where it went, and the board's result; Same says the destination
// held these bytes already and nothing moved.
type TreeFile struct {
	Name   string           `json:"name"`
	Result proto.FileResult `json:"result"`
	Same   bool             `json:"same,omitempty"`
}

// TreePushResult answers a tree push.
type TreePushResult struct {
	Files []TreeFile `json:"files"`
}

// treeName checks a tree entry's name (slash-separated, relative,
// clean, no element "..") and returns it without a trailing slash.
func treeName(name string) (string, error) {
	n := strings.TrimSuffix(name, "/")
	switch {
	case n == "" || len(n) > maxTreeName || strings.ContainsRune(n, 0):
		return "", fmt.Errorf("tree entry %q: empty, over %d bytes, or holds a NUL", name, maxTreeName)
	case path.IsAbs(n) || path.Clean(n) != n || n == ".." || strings.HasPrefix(n, "../"):
		return "", fmt.Errorf("tree entry %q: not a clean relative path inside the tree", name)
	}
	for el := range strings.SplitSeq(n, "/") {
		if len(el) > maxTreeElement {
			return "", fmt.Errorf("tree entry %q: an element over %d bytes", name, maxTreeElement)
		}
	}
	return n, nil
}

// PushTree pushes the tree tr reads to board id under lease, below r.Path:
// each file as it arrives, checked by the board against its sha256; a
// file the board holds with the same bytes already is left as it is.
// Directory entries are only checked (the board makes directories as the
// files' parents). It stops at the first entry that fails.
func (s *Service) PushTree(ctx context.Context, who user, id, lease string, tr *tar.Reader, r TreePushRequest) (TreePushResult, error) {
	var out TreePushResult
	c, ctx, done, err := s.attach(ctx, who, id, lease)
	if err != nil {
		return out, err
	}
	defer done()
	top, err := destination(ctx, c, r.Path, r.Name)
	if err != nil {
		return out, err
	}
	var total int64
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, &FieldError{"file", "reading the tree: " + err.Error()}
		}
		if n >= MaxTreeEntries {
			return out, tooLarge(fmt.Sprintf("the tree holds more than %d entries", MaxTreeEntries))
		}
		name, err := treeName(h.Name)
		if err != nil {
			return out, &FieldError{"file", err.Error()}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeReg:
		default:
			return out, &FieldError{"file", fmt.Sprintf("tree entry %s: only directories and regular files are taken", name)}
		}
		sum := h.PAXRecords[TreeSHA256]
		if total += h.Size; total > s.opts.MaxUpload {
			return out, tooLarge(fmt.Sprintf("the tree's files are over the service's limit of %d bytes", s.opts.MaxUpload))
		}
		p := proto.FilePushParams{Path: path.Join(top, name), Size: h.Size, SHA256: sum,
			Mode: uint32(h.Mode) & 0o7777, ModTime: h.ModTime, Parents: true}
		if _, err := hex.DecodeString(sum); err != nil || len(sum) != 64 || strings.ToLower(sum) != sum || len(p.Path) > maxTreeName {
			return out, &FieldError{"file", fmt.Sprintf("tree entry %s: its %s record must be a sha256 (64 lowercase hex), its path on the board at most %d bytes",
				name, TreeSHA256, maxTreeName)}
		}
		f := TreeFile{Name: name}
		if f.Same, err = boardHas(ctx, c, p); err == nil && f.Same {
			f.Result = proto.FileResult{Path: p.Path, Size: p.Size, SHA256: p.SHA256}
			_, err = io.Copy(io.Discard, tr)
		} else if err == nil {
			f.Result, err = c.PushFrom(ctx, tr, p, dispatcher.TransferOptions{Parents: true})
			s.metrics.fileMoved(toBoard, f.Result)
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", p.Path, err)
		}
		out.Files = append(out.Files, f)
	}
}

// boardHas reports whether the board's file at p.Path has p's bytes:
// sizes first, the board's hash only if they match.
func boardHas(ctx context.Context, c *dispatcher.Client, p proto.FilePushParams) (bool, error) {
	info, err := c.Stat(ctx, p.Path, false)
	if err != nil || !info.Exists || info.Dir || info.Size != p.Size {
		return false, err
	}
	info, err = c.Stat(ctx, p.Path, true)
	return err == nil && info.SHA256 == p.SHA256, err
}

// PullTree writes the directory remote of board id as a tar stream to the
// writer start returns, once remote is known to be a directory: its
// directories (mode, mtime), then its files, each with its sha256 (the
// board's, which the bytes were checked against on their way) and as
// the board's file.pull sends it.
func (s *Service) PullTree(ctx context.Context, who user, id, lease, remote string, start func() io.Writer) error {
	c, ctx, done, err := s.attach(ctx, who, id, lease)
	if err != nil {
		return err
	}
	defer done()
	_, dirs, files, err := c.Tree(ctx, remote)
	if err != nil {
		return err
	}
	if len(dirs)+len(files) > MaxTreeEntries {
		return tooLarge(fmt.Sprintf("%s holds more than %d entries", remote, MaxTreeEntries))
	}
	tw := tar.NewWriter(start())
	for _, d := range dirs {
		info, err := c.Stat(ctx, path.Join(remote, d), false)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: int64(info.Mode & 0o7777),
			ModTime: info.ModTime, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, f := range files {
		from := path.Join(remote, f)
		info, err := c.Stat(ctx, from, true)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f, Size: info.Size, Mode: int64(info.Mode & 0o7777),
			ModTime: info.ModTime, Format: tar.FormatPAX, PAXRecords: map[string]string{TreeSHA256: info.SHA256}}); err != nil {
			return err
		}
		res, err := c.PullTo(ctx, from, tw, dispatcher.TransferOptions{})
		s.metrics.fileMoved(fromBoard, res)
		if err == nil && (res.Size != info.Size || res.SHA256 != info.SHA256) {
			err = fmt.Errorf("%s changed on the board while it was pulled", from)
		}
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

func (s *Service) hPushTree(w http.ResponseWriter, r *http.Request, c *call) error {
	var req TreePushRequest
	if _, _, err := s.session(r.Context(), c.user, c.board, c.lease); err != nil {
		return err
	}
	body, err := uploadPart(r, &req)
	if err != nil {
		return err
	}
	c.detail = req.Path
	res, err := s.PushTree(r.Context(), c.user, c.board, c.lease, tar.NewReader(body), req)
	c.detail = fmt.Sprintf("%s: %d files", req.Path, len(res.Files))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Service) hPullTree(w http.ResponseWriter, r *http.Request, c *call) error {
	remote := r.URL.Query().Get("path")
	if remote == "" || len(remote) > maxTreeName {
		return &FieldError{"path", "the directory on the board: required, at most 4096 bytes"}
	}
	c.detail = remote
	started := false
	err := s.PullTree(r.Context(), c.user, c.board, c.lease, remote, func() io.Writer {
		started = true
		w.Header().Set("Content-Type", "application/x-tar")
		w.Header().Set("Trailer", PullError)
		w.WriteHeader(http.StatusOK)
		return w
	})
	if !started || err == nil {
		return err
	}
	j, _ := json.Marshal(apiError(err))
	w.Header().Set(PullError, string(j))
	c.detail += "; " + err.Error()
	return nil
}

// PushTree pushes the local directory dir to remote on a board under
// lease (or none) through the service, as push -r does directly: files
// (a symlink's target), each hashed before it is sent; symlinks to
// directories and other files are left out, told to skip.
func (c *Client) PushTree(ctx context.Context, id, lease, dir string, r TreePushRequest, skip func(p, why string)) (TreePushResult, error) {
	var res TreePushResult
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTree(ctx, tar.NewWriter(pw), dir, skip)) }()
	resp, err := c.uploadFrom(ctx, boardPath(id, "files/tree"), lease, r, filepath.Base(dir)+".tar", pr, -1)
	pr.CloseWithError(errors.New("the service answered"))
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&res); err != nil {
		return res, fmt.Errorf("push -r: reading the answer: %w", err)
	}
	return res, nil
}

// writeTree writes dir's directories and regular files to tw, each file
// with its sha256, and closes it.
func writeTree(ctx context.Context, tw *tar.Writer, dir string, skip func(p, why string)) error {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Stat(p) // follows a symlink: its target is sent
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: int64(st.Mode().Perm()), ModTime: st.ModTime(), Format: tar.FormatPAX}
		switch {
		case st.IsDir() && d.Type()&fs.ModeSymlink != 0:
			skip(p, "a symlink to a directory")
			return nil
		case st.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case !st.Mode().IsRegular():
			skip(p, "not a regular file")
			return nil
		default:
			var sum string
			if h.Size, sum, err = dispatcher.HashFile(ctx, p); err != nil {
				return err
			}
			h.Typeflag, h.PAXRecords = tar.TypeReg, map[string]string{TreeSHA256: sum}
		}
		if n++; n > MaxTreeEntries {
			return fmt.Errorf("%s holds more than %d entries, which the service takes in one push", dir, MaxTreeEntries)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyN(tw, f, h.Size) // a file that grew meanwhile is cut; the board then finds its hash wrong
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// PullTree pulls the directory remote of a board under lease (or none)
// into the local directory dir through the service, as pull -r does
// directly: directories with their mode and mtime, each file written
// beside its place and renamed into it once its bytes match the sha256
// the service sent. Entries are bounded in number and name, and none
// lands outside dir. done is told each file.
func (c *Client) PullTree(ctx context.Context, id, lease, remote, dir string, done func(TreeFile)) error {
	resp, err := c.do(ctx, "GET", boardPath(id, "files/tree")+"?path="+url.QueryEscape(remote), lease, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(resp.Body)
	var dirs []*tar.Header
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return treeEnd(resp, fmt.Errorf("pull -r: %w", err))
		}
		if n >= MaxTreeEntries {
			return fmt.Errorf("pull -r: the service sent more than %d entries", MaxTreeEntries)
		}
		name, err := treeName(h.Name)
		if err != nil {
			return fmt.Errorf("pull -r: %w", err)
		}
		to := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(to, 0o755); err != nil {
				return err
			}
			h.Name = name
			dirs = append(dirs, h)
		case tar.TypeReg:
			res, err := pullTreeFile(tr, h, to)
			if err != nil {
				return treeEnd(resp, fmt.Errorf("%s: %w", path.Join(remote, name), err))
			}
			done(TreeFile{Name: name, Result: res})
		default:
			return fmt.Errorf("pull -r: tree entry %s: neither a directory nor a regular file", name)
		}
	}
	if err := treeEnd(resp, nil); err != nil {
		return err
	}
	// Deepest first: a directory's mtime after its contents.
	slices.Reverse(dirs)
	for _, h := range dirs {
		to := filepath.Join(dir, filepath.FromSlash(h.Name))
		if err := os.Chmod(to, os.FileMode(h.Mode).Perm()|0o700); err != nil { // still ours to write in
			return err
		}
		if err := os.Chtimes(to, time.Time{}, h.ModTime); err != nil {
			return err
		}
	}
	return nil
}

// pullTreeFile writes the entry tr is at to a hidden file beside to and
// renames it into place once its bytes match the entry's sha256.
func pullTreeFile(tr *tar.Reader, h *tar.Header, to string) (proto.FileResult, error) {
	res := proto.FileResult{Path: to, Size: h.Size, SHA256: h.PAXRecords[TreeSHA256]}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return res, err
	}
	f, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+".boardlink-")
	if err != nil {
		return res, err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, sum), tr); err != nil { // the request's ctx ends the body's reads
		return res, err
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != res.SHA256 {
		return res, fmt.Errorf("%w: got sha256 %s, the board's is %s", dispatcher.ErrChecksum, got, res.SHA256)
	}
	if err := f.Chmod(os.FileMode(h.Mode).Perm()); err != nil {
		return res, err
	}
	if err := f.Close(); err != nil {
		return res, err
	}
	if err := os.Chtimes(f.Name(), time.Time{}, h.ModTime); err != nil {
		return res, err
	}
	return res, os.Rename(f.Name(), to)
}

// treeEnd is err, or the error the service gave in its trailer (which
// explains a stream cut short).
func treeEnd(resp *http.Response, err error) error {
	if err != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // the trailer comes after the body
	}
	if e := resp.Trailer.Get(PullError); e != "" {
		var ae APIError
		if json.Unmarshal([]byte(e), &ae) == nil {
			return &ae
		}
		return errors.New(e)
	}
	return err
}
