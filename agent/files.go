package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/internal/bulk"
	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// transferWindow is the stream window a transfer's receiver grants: four
// times the default, so that the sender goes on while the receiver writes
// to disk or waits for the CPU.
const transferWindow = 4 * proto.StreamWindow

// transfer is one push or pull, owned by the session that started it.
type transfer struct {
	done   chan struct{}
	result proto.FileResult
	err    error
}

func (t *transfer) finish(res proto.FileResult, err error) {
	t.result, t.err = res, err
	close(t.done)
}

// newTransfer registers a transfer in the session under a fresh id.
func (s *session) newTransfer() (string, *transfer) {
	id := "f" + strconv.FormatUint(s.a.seq.Add(1), 10)
	t := &transfer{done: make(chan struct{})}
	s.mu.Lock()
	s.transfers[id] = t
	s.mu.Unlock()
	return id, t
}

func (s *session) fileWait(ctx context.Context, params json.RawMessage) (any, error) {
	var p proto.FileWaitParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	s.mu.Lock()
	t := s.transfers[p.ID]
	s.mu.Unlock()
	if t == nil {
		return nil, proto.Errorf(proto.ReasonNotFound, "no transfer %q on this connection", p.ID)
	}
	select {
	case <-t.done:
	case <-ctx.Done():
		return nil, proto.Errorf(proto.ReasonCanceled, "connection closed")
	}
	s.mu.Lock()
	delete(s.transfers, p.ID)
	s.mu.Unlock()
	return t.result, t.err
}

func (s *session) fileStat(params json.RawMessage) (any, error) {
	var p proto.FileStatParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	root, rel, err := s.a.openRoot(p.Path)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	st, err := root.Stat(rel)
	if errors.Is(err, os.ErrNotExist) {
		return proto.FileInfo{Path: p.Path}, nil
	}
	if err != nil {
		return nil, rootpath.Error(p.Path, err)
	}
	info := fileInfo(p.Path, st)
	if p.Hash && st.Mode().IsRegular() {
		f, _, err := openRegular(root, p.Path, rel)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return nil, rootpath.Error(p.Path, err)
		}
		info.SHA256 = hex.EncodeToString(h.Sum(nil))
	}
	return info, nil
}

// openRegular opens rel for reading and refuses anything but a regular
// file (a FIFO, a device, a socket) as invalid_params on "path" before a
// byte is read: first by name, so that a device is not even opened (an
// open can have effects: a watchdog starts), then on the open file, as
// the name may have been swapped in between. The open does not block, so a
// FIFO swapped in cannot hold it.
func openRegular(root *os.Root, p, rel string) (*os.File, os.FileInfo, error) {
	st, err := root.Stat(rel)
	if err == nil {
		err = regular(p, st)
	}
	if err != nil {
		return nil, nil, rootpath.Error(p, err)
	}
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, rootpath.Error(p, err)
	}
	if st, err = f.Stat(); err == nil {
		err = regular(p, st)
	}
	if err != nil {
		f.Close()
		return nil, nil, rootpath.Error(p, err)
	}
	return f, st, nil
}

// regular refuses st, the file at p, unless it is a regular file.
func regular(p string, st fs.FileInfo) error {
	if st.Mode().IsRegular() {
		return nil
	}
	what := "not a regular file"
	switch m := st.Mode(); {
	case m.IsDir():
		what = "a directory"
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeDevice != 0:
		what = "a device"
	case m&fs.ModeSymlink != 0:
		what = "a symlink"
	}
	return proto.InvalidField("path", "file", "%s is %s, not a regular file", p, what)
}

// maxPartialBase is the longest target name kept whole in its partial
// file's name, which adds 36 bytes and must stay under NAME_MAX (255).
const maxPartialBase = 200

// partialName is where a push of content sum into rel collects its bytes:
// hidden beside the target, and keyed by the content so that only a push of
// the same file resumes from it. A long target name is cut, and a hash of
// it keeps the partial files of names alike in their first bytes apart.
func partialName(rel, sum string) string {
	base := filepath.Base(rel)
	if len(base) > maxPartialBase {
		h := sha256.Sum256([]byte(base))
		base = base[:maxPartialBase-17] + "~" + hex.EncodeToString(h[:8])
	}
	return filepath.Join(filepath.Dir(rel), "."+base+"."+sum[:16]+".boardlink-partial")
}

// hashPrefix hashes the first n bytes of f into a new hash, which the
// caller goes on feeding.
func hashPrefix(f *os.File, n int64) (hash.Hash, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, n)); err != nil {
		return nil, err
	}
	return h, nil
}

func sumHex(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func (s *session) filePush(c *transport.Conn, r *transport.Request) (any, error) {
	var p proto.FilePushParams
	if err := proto.DecodeParams(r.Params, &p); err != nil {
		return nil, err
	}
	root, rel, err := s.a.openRoot(p.Path)
	if err != nil {
		return nil, err
	}
	if rel == "." {
		root.Close()
		return nil, proto.InvalidField("path", "file", "%s is a file root, not a file in one", p.Path)
	}
	if err := checkPushTarget(root, p.Path, rel); err != nil {
		root.Close()
		return nil, err
	}
	if err := rootpath.EnsureParent(root, p.Path, rel, p.Parents); err != nil {
		root.Close()
		return nil, err
	}
	partial := partialName(rel, p.SHA256)
	if !s.a.claim(p.Path + "\x00" + partial) {
		root.Close()
		return nil, proto.Errorf(proto.ReasonBusy, "%s: the same content is being pushed there already", p.Path)
	}
	release := func() {
		s.a.release(p.Path + "\x00" + partial)
		root.Close()
	}
	f, offset, h, err := openPartial(root, p.Path, partial, p.Size, p.Restart)
	if err == nil {
		if err = rootpath.CheckRoom(rootpath.Room{File: f, Bytes: p.Size - offset}); err != nil {
			f.Close()
			if offset == 0 {
				root.Remove(partial)
			}
		}
	}
	if err != nil {
		release()
		return nil, rootpath.Error(p.Path, err)
	}
	st, err := attach(c, "stream", p.Stream)
	if err != nil {
		f.Close()
		release()
		return nil, err
	}
	id, t := s.newTransfer()
	res := proto.FilePushResult{ID: id, Offset: offset, Frame: proto.MaxBulkFrame}
	if offset > 0 {
		res.OffsetSHA256 = sumHex(h)
	}
	go func() {
		start := time.Now()
		res, err := s.a.receive(root, rel, partial, f, h, st, p, offset)
		release() // before file.wait can answer: a retry may claim it at once
		s.logTransfer("push", p.Path, res, err, start)
		t.finish(res, err)
	}()
	return res, nil
}

// checkPushTarget refuses a push into what a file cannot replace: a
// directory, a FIFO, a device or a socket (a caller naming one means to
// write into it, which a push does not do), or a symlink that leads out of
// the root (the rename would replace the link, not write through it;
// still, the caller means a place we refuse).
func checkPushTarget(root *os.Root, p, rel string) error {
	st, err := root.Lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return nil // ensureParent tells about the parent
	case err != nil:
		return rootpath.Error(p, err)
	case st.Mode()&fs.ModeSymlink != 0:
		if _, err := root.Stat(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return rootpath.Error(p, err)
		}
		return nil
	}
	return regular(p, st)
}

// openPartial opens (or starts) the partial file of a push of size bytes
// into p and returns how much of it is kept and the hash of that much.
func openPartial(root *os.Root, p, partial string, size int64, restart bool) (*os.File, int64, hash.Hash, error) {
	f, err := root.OpenFile(partial, os.O_RDWR|os.O_CREATE|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0o600)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err == nil {
		err = ownPartial(root, p, partial, st)
	}
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	offset := st.Size()
	if restart || offset > size {
		offset = 0
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, 0, nil, err
		}
	}
	h, err := hashPrefix(f, offset)
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, offset, h, nil
}

// ownPartial checks that st, of the file open as the partial file of a
// push into p, is a regular file and is what the partial's name holds: the
// os.Root follows symlinks inside the root, and another user of the board
// may have put one (or a FIFO) there, before the push or while it ran. The
// push is then refused, and nothing written through the link or installed.
func ownPartial(root *os.Root, p, partial string, st fs.FileInfo) error {
	lst, err := root.Lstat(partial)
	switch {
	case err != nil:
		return err
	case lst.Mode()&fs.ModeSymlink != 0:
		return proto.InvalidField("path", "symlink", "%s: its partial file %s is a symlink: refused", p, partial)
	case !os.SameFile(st, lst):
		return proto.InvalidField("path", "file", "%s: its partial file %s was replaced while the push ran: nothing installed", p, partial)
	case !st.Mode().IsRegular():
		return proto.InvalidField("path", "file", "%s: its partial file %s is not a regular file: refused", p, partial)
	}
	return nil
}

// receive copies a push's bytes from st into f after offset, then checks
// and installs the file. A cut link leaves the partial file, synced, for
// the next push to resume from.
func (a *Agent) receive(root *os.Root, rel, partial string, f *os.File, h hash.Hash,
	st *transport.Stream, p proto.FilePushParams, offset int64) (proto.FileResult, error) {
	start := time.Now()
	defer st.Close()
	st.Grow(transferWindow - proto.StreamWindow)
	closed := false
	defer func() {
		if !closed {
			f.Close()
		}
	}()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return proto.FileResult{}, rootpath.Local(p.Path, err)
	}
	// One byte past the size is read so a sender of too much is caught.
	w := &bulk.DiskWriter{F: f, Off: offset}
	// A failed write resets the stream at once, with the disk's reason.
	abort := func() { st.Reset(string(proto.ReasonOf(rootpath.Local(p.Path, w.Err)))) }
	n, err := bulk.Copy(w, st, p.Size-offset+1, h, abort)
	total := offset + n
	if serr := f.Sync(); w.Err == nil {
		w.Err = serr
	}
	if w.Err != nil {
		// The disk failed, not the link (a full disk: no_space); what is
		// there stays for a resume.
		err := rootpath.Local(p.Path, w.Err)
		st.Reset(string(proto.ReasonOf(err)))
		return proto.FileResult{}, err
	}
	if err != nil {
		a.log.Debug("push cut", "path", p.Path, "held", total, "err", err)
		return proto.FileResult{}, proto.Errorf(proto.ReasonCanceled, "%s: push cut at %d of %d bytes (kept for resume): %v",
			p.Path, total, p.Size, err)
	}
	if total != p.Size {
		st.Reset("invalid_params")
		if total > p.Size {
			f.Close()
			closed = true
			root.Remove(partial)
		}
		if total > p.Size {
			return proto.FileResult{}, proto.InvalidField("size", "size", "%s: the stream carried more than the %d bytes announced", p.Path, p.Size)
		}
		return proto.FileResult{}, proto.InvalidField("size", "size", "%s: the stream ended after %d of the %d bytes announced", p.Path, total, p.Size)
	}
	if got := sumHex(h); got != p.SHA256 {
		f.Close()
		closed = true
		root.Remove(partial)
		return proto.FileResult{}, proto.Errorf(proto.ReasonChecksumMismatch,
			"%s: sha256 of the received bytes is %s, want %s; nothing was installed", p.Path, got, p.SHA256)
	}
	mode := os.FileMode(p.Mode)
	if mode == 0 {
		mode = 0o644
	}
	if err := f.Chmod(mode); err != nil {
		return proto.FileResult{}, rootpath.Local(p.Path, err)
	}
	fst, err := f.Stat()
	if err != nil {
		return proto.FileResult{}, rootpath.Local(p.Path, err)
	}
	f.Close()
	closed = true
	// From here on the partial is reached by name.
	if err := ownPartial(root, p.Path, partial, fst); err != nil {
		return proto.FileResult{}, rootpath.Error(p.Path, err)
	}
	mtime := p.ModTime
	if !mtime.IsZero() {
		if err := root.Chtimes(partial, mtime, mtime); err != nil {
			return proto.FileResult{}, rootpath.Error(p.Path, err)
		}
	}
	if err := root.Rename(partial, rel); err != nil {
		return proto.FileResult{}, rootpath.Error(p.Path, err)
	}
	if err := rootpath.SyncDir(root, filepath.Dir(rel)); err != nil {
		return proto.FileResult{}, err
	}
	info, err := root.Stat(rel)
	if err != nil {
		return proto.FileResult{}, rootpath.Error(p.Path, err)
	}
	return proto.FileResult{Path: p.Path, Size: p.Size, SHA256: p.SHA256, Offset: offset, Bytes: n,
		Mode: uint32(mode), ModTime: info.ModTime().UTC(), DurationMs: msSince(start)}, nil
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func (s *session) filePull(c *transport.Conn, r *transport.Request) (any, error) {
	var p proto.FilePullParams
	if err := proto.DecodeParams(r.Params, &p); err != nil {
		return nil, err
	}
	root, rel, err := s.a.openRoot(p.Path)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, info, err := openRegular(root, p.Path, rel)
	if err != nil {
		return nil, err
	}
	offset := p.Offset
	if offset > info.Size() {
		offset = 0
	}
	h, err := hashPrefix(f, offset)
	if err == nil && offset > 0 && sumHex(h) != p.OffsetSHA256 {
		offset = 0 // the board's file does not begin with the caller's bytes
		h.Reset()
	}
	if err != nil {
		f.Close()
		return nil, rootpath.Error(p.Path, err)
	}
	st, err := attach(c, "stream", p.Stream)
	if err != nil {
		f.Close()
		return nil, err
	}
	st.SetChunk(p.Frame)
	id, t := s.newTransfer()
	// The data follows the answer, which tells the caller where it starts.
	r.AfterReply = func() {
		go func() {
			defer f.Close()
			start := time.Now()
			res, err := send(f, h, st, p.Path, info, offset)
			s.logTransfer("pull", p.Path, res, err, start)
			t.finish(res, err)
		}()
	}
	return proto.FilePullResult{ID: id, Size: info.Size(), Offset: offset,
		Mode: uint32(info.Mode().Perm()), ModTime: info.ModTime().UTC()}, nil
}

// logTransfer logs a push or a pull as it ends, at INFO (the agent's log
// names the board): the path, the bytes that crossed, who asked and how long it took; a cut one
// with its error.
func (s *session) logTransfer(verb, p string, res proto.FileResult, err error, start time.Time) {
	attrs := []any{"path", p, "peer", s.peer.Addr, "link", s.peer.Link,
		"duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		s.a.log.Info(verb+" cut", append(attrs, "err", err)...)
		return
	}
	s.a.log.Info(verb, append(attrs, "bytes", res.Bytes, "size", res.Size, "offset", res.Offset, "sha256", res.SHA256)...)
}

// send writes f's bytes from offset to the size it had when the pull
// began, then FIN.
func send(f *os.File, h hash.Hash, st *transport.Stream, p string, info os.FileInfo, offset int64) (proto.FileResult, error) {
	start := time.Now()
	defer st.Close()
	n, err := bulk.CopyInline(st, io.NewSectionReader(f, offset, info.Size()-offset), h)
	if err == nil && n < info.Size()-offset {
		err = fmt.Errorf("%s shrank to %d bytes while being read", p, offset+n)
	}
	if err == nil {
		err = st.CloseWrite()
	}
	if err != nil {
		st.Reset("canceled")
		return proto.FileResult{}, proto.Errorf(proto.ReasonCanceled, "%s: pull cut after %d bytes: %v", p, offset+n, err)
	}
	return proto.FileResult{Path: p, Size: info.Size(), SHA256: sumHex(h), Offset: offset, Bytes: n,
		Mode: uint32(info.Mode().Perm()), ModTime: info.ModTime().UTC(), DurationMs: msSince(start)}, nil
}
