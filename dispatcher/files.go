package dispatcher

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/internal/bulk"
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
	// Phase, if set, is told each phase of the transfer as it begins.
	Phase func(TransferPhase)
}

func (o TransferOptions) phase(p TransferPhase) {
	if o.Phase != nil {
		o.Phase(p)
	}
}

// TransferPhase is a stage of a push or a pull.
type TransferPhase string

// The phases of a transfer, in order; a resumed pull hashes what it kept,
// a fresh one starts with PhaseSend.
const (
	// PhaseHash: local bytes are hashed before any is sent: the whole
	// file to push, or what an earlier pull kept.
	PhaseHash TransferPhase = "hashing"
	// PhaseSend: the bytes cross the link (Progress counts them).
	PhaseSend TransferPhase = "sending"
	// PhaseVerify: every byte crossed; the receiving end syncs the file,
	// checks its sha256 and puts it in place.
	PhaseVerify TransferPhase = "verifying"
)

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
// verified. Canceling ctx stops the transfer at once; the board keeps
// what it received for the next push to resume from.
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
	opts.phase(PhaseHash)
	sum, err := hashRange(ctx, f, st.Size())
	if err != nil {
		return proto.FileResult{}, fmt.Errorf("%s: %w", local, err)
	}
	p := proto.FilePushParams{Path: remote, Size: st.Size(), SHA256: sum, Mode: uint32(st.Mode().Perm()),
		ModTime: st.ModTime(), Parents: opts.Parents}
	for {
		res, err := c.push(ctx, fileSource{f, p.Size}, p, opts)
		if errors.Is(err, errRestart) && !p.Restart {
			p.Restart = true // the board's partial copy is not a prefix of ours
			continue
		}
		return res, err
	}
}

// PushFrom copies the p.Size bytes r yields, read once as they come (an
// upload on its way), to p.Path on the board, as p says: their sha256 is
// p.SHA256, which the board checks before the file appears. p.Stream is
// set here. A push the board kept a part of is resumed: r's first bytes,
// as many as the board holds, are read and checked against the board's
// hash of them, not sent. If they differ the board's part is discarded
// and the push fails with ErrPartialDiffers: the bytes are gone, so the
// caller sends them again. r must end after p.Size bytes: one more
// fails the push before the file is placed.
func (c *Client) PushFrom(ctx context.Context, r io.Reader, p proto.FilePushParams, opts TransferOptions) (proto.FileResult, error) {
	res, err := c.push(ctx, &streamSource{r: r, size: p.Size}, p, opts)
	if errors.Is(err, errRestart) {
		p.Restart = true
		_, derr := c.push(ctx, &streamSource{r: eofReader{}}, p, opts) // discards the board's part; an empty push fails
		if ctx.Err() != nil {
			derr = nil
		}
		return res, fmt.Errorf("%s: %w (%w)", p.Path, ErrPartialDiffers, errors.Join(derr, ctx.Err()))
	}
	return res, err
}

// ErrPartialDiffers: the board held a part of a file pushed from a
// stream, whose bytes the stream's do not match; the board's part was
// discarded, and the push must be sent again.
var ErrPartialDiffers = errors.New("the board's partial copy differs from these bytes: discarded, push again")

var errRestart = errors.New("the board's partial file differs: restart")

// pushSource is what a push sends from: rest returns the bytes after the
// first off, once those were checked against the board's sum of them
// (errRestart if they differ).
type pushSource interface {
	rest(ctx context.Context, off int64, sum string) (io.Reader, error)
}

// fileSource is a local file of size bytes.
type fileSource struct {
	f    *os.File
	size int64
}

func (s fileSource) rest(ctx context.Context, off int64, sum string) (io.Reader, error) {
	if off > 0 {
		have, err := hashRange(ctx, s.f, off)
		if err == nil && have != sum {
			err = errRestart
		}
		if err != nil {
			return nil, err
		}
	}
	return io.NewSectionReader(s.f, off, s.size-off), nil
}

// streamSource is a stream of size bytes, read once.
type streamSource struct {
	r    io.Reader
	size int64
}

func (s *streamSource) rest(ctx context.Context, off int64, sum string) (io.Reader, error) {
	if off > 0 {
		h := sha256.New()
		if _, err := io.CopyN(h, ctxReader{ctx, s.r}, off); err != nil {
			return nil, err
		}
		if hex.EncodeToString(h.Sum(nil)) != sum {
			return nil, errRestart
		}
	}
	return &exactReader{r: s.r, left: s.size - off}, nil
}

// exactReader is r, which must end after left bytes.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left == 0 {
		var one [1]byte
		n, err := io.ReadFull(e.r, one[:])
		if n > 0 {
			return 0, errors.New("the stream holds more bytes than its size")
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF
		}
		return 0, err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	// Filled: an upload's reader gives a few KiB a read, and each read
	// is one message on the link.
	n, err := io.ReadFull(e.r, p)
	e.left -= int64(n)
	switch {
	case err == nil:
	case n > 0 && errors.Is(err, io.ErrUnexpectedEOF):
		err = nil // the next read says how it ended
	case errors.Is(err, io.EOF):
		err = io.ErrUnexpectedEOF // short of its size
	}
	return n, err
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func (c *Client) push(ctx context.Context, from pushSource, p proto.FilePushParams, opts TransferOptions) (proto.FileResult, error) {
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		return proto.FileResult{}, err
	}
	p.Stream = s.ID()
	var started proto.FilePushResult
	if err := conn.Call(ctx, proto.MethodFilePush, p, &started); err != nil {
		s.Close()
		return proto.FileResult{}, err
	}
	s.SetChunk(started.Frame) // what the board reads in one frame, if it said
	src, err := from.rest(ctx, started.Offset, started.OffsetSHA256)
	if err != nil {
		s.Reset("canceled")
		if ctx.Err() == nil {
			_ = c.waitFile(ctx, conn, started.ID, nil) // lets the board release the partial file
		}
		return proto.FileResult{}, err
	}
	opts.phase(PhaseSend)
	copyErr := make(chan error, 1)
	go func() {
		var err error
		dst := newCounter(s, started.Offset, p.Size, opts.Progress)
		if _, ok := from.(fileSource); ok {
			_, err = bulk.Copy(dst, src, -1, nil, nil) // the next block read while one is sent
		} else {
			// A stream as it comes: a reader ahead of a failed send
			// could wait on its client for ever.
			_, err = io.CopyBuffer(dst, src, make([]byte, 256<<10))
		}
		if err == nil {
			err = s.CloseWrite()
		}
		if err != nil {
			s.Reset("canceled")
		} else {
			opts.phase(PhaseVerify)
		}
		copyErr <- err
	}()
	var res proto.FileResult
	err = c.waitFile(ctx, conn, started.ID, &res)
	if ctx.Err() != nil {
		// The reset stops the board's end, which keeps what it has for a
		// resume, and the copy here at its next write. That write may be
		// held by a stalled link: it is not waited for (the copy only
		// reads its source, and fails once that is closed).
		s.Reset("canceled")
		return res, ctx.Err()
	}
	if cerr := <-copyErr; err == nil && cerr != nil {
		err = cerr
	}
	s.Close()
	if proto.IsReason(err, proto.ReasonChecksumMismatch) {
		err = fmt.Errorf("%w: %w", ErrChecksum, err)
	}
	return res, err
}

// waitFile collects a transfer's result.
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
// with them. local appears only complete and verified. Canceling ctx
// stops the transfer at once and keeps what arrived for the next pull.
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
	if held > 0 {
		opts.phase(PhaseHash)
		if _, err := io.Copy(h, ctxReader{ctx, io.NewSectionReader(f, 0, held)}); err != nil {
			keep = true
			return proto.FileResult{}, err
		}
	}
	dw := &bulk.DiskWriter{F: f}
	sink := pullSink{w: dw, held: held, h: h, flush: f.Sync, begin: func(offset int64) error {
		if offset == 0 {
			if err := f.Truncate(0); err != nil {
				return err
			}
		}
		dw.Off = offset
		_, err := f.Seek(offset, io.SeekStart)
		return err
	}}
	started, res, got, err := c.pull(ctx, remote, sink, opts)
	if err != nil {
		keep = got > 0 // what arrived is synced: the next pull resumes after it
		return res, err
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

// PullTo copies remote from the board to w, which gets every byte as it
// arrives (so nothing to resume from); the error says when they did not
// hash to what the board sent.
func (c *Client) PullTo(ctx context.Context, remote string, w io.Writer, opts TransferOptions) (proto.FileResult, error) {
	_, res, _, err := c.pull(ctx, remote, pullSink{w: w, h: sha256.New()}, opts)
	return res, err
}

// pullSink is where a pull's bytes go.
type pullSink struct {
	w    io.Writer
	held int64     // bytes w already holds, for a resume
	h    hash.Hash // the hash of those bytes, fed with the rest
	// begin, if set, is called once the board said where its bytes
	// start: held, or 0 when the board's file does not begin with them.
	begin func(offset int64) error
	flush func() error // makes what w got durable, if set
}

// pull runs file.pull of remote into sink and checks the result. It
// returns the board's answer, its result and how many bytes the sink
// holds at the end.
func (c *Client) pull(ctx context.Context, remote string, sink pullSink, opts TransferOptions) (proto.FilePullResult, proto.FileResult, int64, error) {
	var (
		started proto.FilePullResult
		res     proto.FileResult
	)
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		return started, res, sink.held, err
	}
	// Canceled: the reset ends the copy below at once, and the board's
	// sending end. A close would wait for a link that may be stalled.
	stop := context.AfterFunc(ctx, func() { s.Reset("canceled") })
	defer func() {
		if stop() {
			s.Close()
		} else {
			s.Reset("canceled")
		}
	}()
	p := proto.FilePullParams{Path: remote, Offset: sink.held, Stream: s.ID()}
	if slices.Contains(c.Hello().Capabilities, proto.CapFrames) {
		p.Frame = proto.MaxBulkFrame // a quarter of the frames, writes and wake-ups
	}
	if sink.held > 0 {
		p.OffsetSHA256 = hex.EncodeToString(sink.h.Sum(nil))
	}
	if err := conn.Call(ctx, proto.MethodFilePull, p, &started); err != nil {
		return started, res, sink.held, err
	}
	if started.Offset == 0 && sink.held > 0 {
		sink.h.Reset()
	}
	if sink.begin != nil {
		if err := sink.begin(started.Offset); err != nil {
			return started, res, 0, err
		}
	}
	opts.phase(PhaseSend)
	// A larger window than the default (twice what the board grants for a
	// push): the board goes on sending while this side hashes and writes.
	s.Grow(7 * proto.StreamWindow)
	w := newCounter(sink.w, started.Offset, started.Size, opts.Progress)
	_, copyErr := bulk.CopyInline(w, s, sink.h)
	if copyErr != nil {
		s.Reset("canceled") // the board's end stops at once, and file.wait answers
	}
	if copyErr == nil {
		opts.phase(PhaseVerify)
	}
	if sink.flush != nil {
		if err := sink.flush(); copyErr == nil {
			copyErr = err
		}
	}
	werr := c.waitFile(ctx, conn, started.ID, &res)
	if err = cmp.Or(ctx.Err(), werr, copyErr); err != nil {
		return started, res, w.n, err
	}
	if got := hex.EncodeToString(sink.h.Sum(nil)); got != res.SHA256 || w.n != res.Size {
		return started, res, w.n, fmt.Errorf("%w: %s: received %d bytes hashing %s, the board sent %d hashing %s",
			ErrChecksum, remote, w.n, got, res.Size, res.SHA256)
	}
	return started, res, w.n, nil
}

// hashRange returns the hex sha256 of f's first n bytes; it stops when
// ctx ends.
func hashRange(ctx context.Context, f *os.File, n int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, io.NewSectionReader(f, 0, n)}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader is r until ctx ends: a long hash stops on Ctrl-C.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// counter counts bytes on their way to w and reports progress.
type counter struct {
	w        io.Writer
	n, total int64
	progress func(int64, int64)
}

// newCounter counts what goes to w from offset on, and tells progress
// where it starts: the total is known before the first byte moves.
func newCounter(w io.Writer, offset, total int64, progress func(int64, int64)) *counter {
	if progress != nil {
		progress(offset, total)
	}
	return &counter{w: w, n: offset, total: total, progress: progress}
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
	conn := c.Conn()
	err := conn.Call(ctx, proto.MethodFileDownload, p, &res)
	if r.Progress != nil {
		conn.SyncNotes(ctx) // the last figures came before the answer
	}
	return res, err
}
