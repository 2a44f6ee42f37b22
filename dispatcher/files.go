package dispatcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// TransferOptions tune Push and Pull.
type TransferOptions struct {
	// Parents creates missing parent directories on the board (Push).
	Parents bool
	// Progress, if set, is called as bytes cross the link with the count
	// so far (starting at the resume offset) and the file's size.
	Progress func(done, total int64)
}

// ErrChecksum is wrapped by transfer errors whose bytes arrived but hashed
// wrong: retrying moves the whole file again.
var ErrChecksum = errors.New("checksum mismatch")

// Stat describes a path on the board; with hash, a regular file's sha256.
func (c *Client) Stat(ctx context.Context, remote string, hash bool) (proto.FileInfo, error) {
	var info proto.FileInfo
	err := c.Conn().Call(ctx, proto.MethodFileStat, proto.FileStatParams{Path: remote, Hash: hash}, &info)
	return info, err
}

// Push copies the local file to remote on the board, keeping its mode and
// mtime. What the board kept of an earlier, cut push of the same content
// is not sent again. The file appears under remote only complete and
// verified.
func (c *Client) Push(ctx context.Context, local, remote string, opts TransferOptions) (proto.FileResult, error) {
	f, err := os.Open(local)
	if err != nil {
		return proto.FileResult{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return proto.FileResult{}, err
	}
	if !st.Mode().IsRegular() {
		return proto.FileResult{}, fmt.Errorf("%s: not a regular file", local)
	}
	sum, err := hashRange(f, st.Size())
	if err != nil {
		return proto.FileResult{}, fmt.Errorf("%s: %w", local, err)
	}
	p := proto.FilePushParams{Path: remote, Size: st.Size(), SHA256: sum, Mode: uint32(st.Mode().Perm()),
		ModTime: st.ModTime(), Parents: opts.Parents}
	for {
		res, err := c.push(ctx, f, p, opts.Progress)
		if errors.Is(err, errRestart) && !p.Restart {
			p.Restart = true // the board's partial copy is not a prefix of ours
			continue
		}
		return res, err
	}
}

var errRestart = errors.New("the board's partial file differs: restart")

func (c *Client) push(ctx context.Context, f *os.File, p proto.FilePushParams, progress func(int64, int64)) (proto.FileResult, error) {
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		return proto.FileResult{}, err
	}
	defer s.Close()
	p.Stream = s.ID()
	var started proto.FilePushResult
	if err := conn.Call(ctx, proto.MethodFilePush, p, &started); err != nil {
		return proto.FileResult{}, err
	}
	if started.Offset > 0 {
		have, err := hashRange(f, started.Offset)
		if err != nil {
			return proto.FileResult{}, err
		}
		if have != started.OffsetSHA256 {
			s.Reset("canceled")
			_ = c.waitFile(ctx, conn, started.ID, nil) // lets the board release the partial file
			return proto.FileResult{}, errRestart
		}
	}
	copyErr := make(chan error, 1)
	go func() {
		src := io.NewSectionReader(f, started.Offset, p.Size-started.Offset)
		_, err := io.CopyBuffer(&counter{w: s, n: started.Offset, total: p.Size, progress: progress}, src, make([]byte, 256<<10))
		if err == nil {
			err = s.CloseWrite()
		}
		if err != nil {
			s.Reset("canceled")
		}
		copyErr <- err
	}()
	var res proto.FileResult
	err = c.waitFile(ctx, conn, started.ID, &res)
	if cerr := <-copyErr; err == nil && cerr != nil {
		err = cerr
	}
	if proto.IsReason(err, proto.ReasonChecksumMismatch) {
		err = fmt.Errorf("%w: %w", ErrChecksum, err)
	}
	return res, err
}

// waitFile collects a transfer's result. When ctx ends first, the stream's
// Reset (by the caller's defer) ends the transfer on the board.
func (c *Client) waitFile(ctx context.Context, conn *transport.Conn, id string, res *proto.FileResult) error {
	var out any
	if res != nil { // a typed nil would be decoded into
		out = res
	}
	return conn.Call(ctx, proto.MethodFileWait, proto.FileWaitParams{ID: id}, out)
}

// partialPath is where Pull collects a file before it is complete.
func partialPath(local string) string {
	return filepath.Join(filepath.Dir(local), "."+filepath.Base(local)+".boardlink-partial")
}

// Pull copies remote from the board into the local file, keeping mode
// and mtime. Bytes kept from an earlier, cut pull (in a hidden partial file
// beside local) are not fetched again if the board's file still begins
// with them. local appears only complete and verified.
func (c *Client) Pull(ctx context.Context, remote, local string, opts TransferOptions) (proto.FileResult, error) {
	partial := partialPath(local)
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return proto.FileResult{}, err
	}
	keep := false
	defer func() {
		f.Close()
		if !keep {
			os.Remove(partial)
		}
	}()
	held, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return proto.FileResult{}, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, held)); err != nil {
		return proto.FileResult{}, err
	}
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		return proto.FileResult{}, err
	}
	defer s.Close()
	p := proto.FilePullParams{Path: remote, Offset: held, Stream: s.ID()}
	if held > 0 {
		p.OffsetSHA256 = hex.EncodeToString(h.Sum(nil))
	}
	var started proto.FilePullResult
	if err := conn.Call(ctx, proto.MethodFilePull, p, &started); err != nil {
		keep = held > 0 // the board may answer again later
		return proto.FileResult{}, err
	}
	if started.Offset == 0 && held > 0 {
		h.Reset()
		if err := f.Truncate(0); err != nil {
			return proto.FileResult{}, err
		}
	}
	if _, err := f.Seek(started.Offset, io.SeekStart); err != nil {
		return proto.FileResult{}, err
	}
	w := &counter{w: io.MultiWriter(f, h), n: started.Offset, total: started.Size, progress: opts.Progress}
	_, copyErr := io.CopyBuffer(w, s, make([]byte, 256<<10))
	if err := f.Sync(); copyErr == nil {
		copyErr = err
	}
	var res proto.FileResult
	err = c.waitFile(ctx, conn, started.ID, &res)
	if err == nil {
		err = copyErr
	}
	if err != nil {
		keep = w.n > 0 // what arrived is synced: the next pull resumes after it
		return res, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != res.SHA256 || w.n != res.Size {
		return res, fmt.Errorf("%w: %s: received %d bytes hashing %s, the board sent %d hashing %s",
			ErrChecksum, remote, w.n, got, res.Size, res.SHA256)
	}
	if err := f.Chmod(os.FileMode(started.Mode)); err != nil {
		return res, err
	}
	if err := f.Close(); err != nil {
		return res, err
	}
	if err := os.Chtimes(partial, time.Time{}, started.ModTime); err != nil {
		return res, err
	}
	if err := os.Rename(partial, local); err != nil {
		return res, err
	}
	keep = true // renamed: nothing to remove
	return res, atomicfile.SyncDir(filepath.Dir(local))
}

// hashRange returns the hex sha256 of f's first n bytes.
func hashRange(f *os.File, n int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, n)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// counter counts bytes on their way to w and reports progress.
type counter struct {
	w        io.Writer
	n, total int64
	progress func(int64, int64)
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.progress != nil {
		c.progress(c.n, c.total)
	}
	return n, err
}

// DownloadRequest asks the board to fetch a URL itself.
type DownloadRequest struct {
	URL     string
	Path    string // on the board: the file, or with Extract the directory
	SHA256  string // required
	Extract bool
	Mode    os.FileMode
	Parents bool
	// Size, MaxSize and Timeout, when not 0, bound the download beside the
	// board's own limits: content of another size than Size, or larger
	// than MaxSize, is refused, and the board gives up after Timeout.
	Size, MaxSize int64
	Timeout       time.Duration
	// Progress, if set, receives the agent's progress notifications.
	Progress func(proto.Progress)
}

// Download has the board fetch r.URL into r.Path, verified by r.SHA256. The
// result says Skipped when the board already held that content.
func (c *Client) Download(ctx context.Context, r DownloadRequest) (proto.DownloadResult, error) {
	p := proto.FileDownloadParams{URL: r.URL, Path: r.Path, SHA256: r.SHA256, Extract: r.Extract,
		Mode: uint32(r.Mode.Perm()), Parents: r.Parents, Size: r.Size, MaxSize: r.MaxSize,
		TimeoutMs: (r.Timeout + time.Millisecond - 1).Milliseconds()} // rounded up: 1ns stays a bound
	if r.Progress != nil {
		tok, done := c.notes.subscribe(r.Progress)
		defer done()
		p.Progress = tok
	}
	var res proto.DownloadResult
	err := c.Conn().Call(ctx, proto.MethodFileDownload, p, &res)
	return res, err
}
