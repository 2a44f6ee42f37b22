// Package bulk moves a transfer's bytes: a pipeline that reads and hashes
// the next block while the one before is written (Copy), the same in one
// goroutine where the kernel already buffers (CopyInline), and a file writer that starts
// the disk's write-back as it goes.
package bulk

import (
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Block is the size of one read or write of a transfer: large enough that
// per-call costs vanish beside the bytes, and a whole frame of a transfer
// that negotiated them (proto.MaxBulkFrame).
const Block = 256 << 10

// blocks is how many blocks a Copy holds: one being read and hashed, one
// waiting, one being written. A transfer holds blocks*Block bytes.
const blocks = 3

type block struct {
	b   []byte
	err error // the read's error, after the bytes of b
}

// Copy copies src to dst until src's EOF (or limit bytes, if limit >= 0)
// and feeds h, if not nil, with the same bytes. Reading and hashing run in
// a goroutine of their own, a block ahead of the writes, so that on two
// cores hashing costs no time of the writer's. When a write fails, abort
// (if not nil) is called to unblock a src that may be waiting for data (a
// stream to reset), and Copy waits for the reader before it returns: h is
// the caller's again.
func Copy(dst io.Writer, src io.Reader, limit int64, h hash.Hash, abort func()) (int64, error) {
	free := make(chan []byte, blocks)
	for range blocks {
		free <- make([]byte, Block)
	}
	full := make(chan block, blocks)
	stop := make(chan struct{})
	go func() {
		defer close(full)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			n, err := fill(src, b, &limit, h)
			full <- block{b: b[:n], err: err}
			if err != nil {
				return
			}
		}
	}()
	var written int64
	var err error
	for blk := range full {
		if len(blk.b) > 0 && err == nil {
			var n int
			n, err = dst.Write(blk.b)
			written += int64(n)
			if err != nil {
				close(stop)
				if abort != nil {
					abort()
				}
			}
		}
		if err == nil && blk.err != nil && blk.err != io.EOF {
			err = blk.err
		}
		free <- blk.b[:cap(blk.b)]
	}
	return written, err
}

// fill reads the next block into b (at most *limit bytes, if *limit >= 0)
// and hashes it; io.EOF once src or the limit ends.
func fill(src io.Reader, b []byte, limit *int64, h hash.Hash) (int, error) {
	if *limit >= 0 && int64(len(b)) > *limit {
		b = b[:*limit]
	}
	n, err := io.ReadFull(src, b)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	if n == 0 && err == nil { // limit reached
		err = io.EOF
	}
	*limit -= int64(n)
	if h != nil {
		h.Write(b[:n])
	}
	return n, err
}

// CopyInline is Copy in the caller's goroutine, for a copy whose other
// side the kernel already buffers (a socket's send buffer, a stream's
// window, the page cache): that buffer carries bytes on while the next
// block is read and hashed, and a second goroutine would only add its
// hand-offs (two wake-ups per block, and the runtime taking the P of
// every write that blocks). Measured on a pull, both ends on two cores:
// a tenth to a fifth of each end's CPU. A src that is an io.WriterTo (a
// transport.Stream) writes from its own buffers: a pull's frames are
// hashed and written where the link read them, with no copy into a block.
func CopyInline(dst io.Writer, src io.Reader, h hash.Hash) (int64, error) {
	if wt, ok := src.(io.WriterTo); ok {
		if h != nil {
			dst = io.MultiWriter(h, dst)
		}
		return wt.WriteTo(dst)
	}
	b := make([]byte, Block)
	limit := int64(-1)
	var written int64
	for {
		n, err := fill(src, b, &limit, h)
		if n > 0 {
			m, werr := dst.Write(b[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
		}
		if err == io.EOF {
			return written, nil
		}
		if err != nil {
			return written, err
		}
	}
}

// writebackChunk is how much a DiskWriter writes before it asks the disk
// to start writing it out.
const writebackChunk = 8 << 20

// DiskWriter writes to F at its current offset, Off, and keeps its error,
// which is the disk's, not the link's. Every writebackChunk it starts the
// disk's write of what it wrote (sync_file_range, not waited for), so the
// disk works while the link does and the fsync at the end finds little
// left.
type DiskWriter struct {
	F        *os.File
	Off      int64 // where the next write goes: F's offset when it was made
	unsynced int64 // where the bytes not yet handed to the disk begin
	started  bool
	Err      error
}

func (w *DiskWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.unsynced, w.started = w.Off, true
	}
	n, err := w.F.Write(p)
	w.Off += int64(n)
	if w.Off-w.unsynced >= writebackChunk {
		if rc, cerr := w.F.SyscallConn(); cerr == nil {
			_ = rc.Control(func(fd uintptr) {
				// Only a hint: the fsync at the end is what counts.
				_ = unix.SyncFileRange(int(fd), w.unsynced, w.Off-w.unsynced, unix.SYNC_FILE_RANGE_WRITE)
			})
		}
		w.unsynced = w.Off
	}
	if err != nil {
		w.Err = err
	}
	return n, err
}
