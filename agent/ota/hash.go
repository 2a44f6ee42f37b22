package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// The active slot is a source of chunks only if the agent knows what it
// holds. A slot the agent wrote has its chunk hashes in slots.json; any
// other (flashed in the factory or by hand, or written with another chunk
// size) is read and hashed on the board, chunk by chunk at the manifest's
// chunk size, and the hashes are kept in hashesFile, by slot, with the
// stamp of the slot they were read from, so that the next plan does not
// read it again. Nothing is trusted blindly: every chunk copied from the
// active slot is verified against the manifest first (copyChunks).

// hashBuf bounds the memory a hash takes, whatever the chunk size.
const hashBuf = 1 << 20

// slotStamp tells, without reading a slot, whether it is still the one
// that was hashed: a file's device, inode, size and times (any write
// moves its ctime); a block device's number and size (its node's times do
// not follow writes); and for both the times the agent began writing the
// slot (slotMeta.Writes), so that a slot the agent rewrote is never taken
// for the one it hashed. A block device rewritten in place by other hands
// keeps its stamp: the copy's verification catches it, and its chunks are
// sent instead.
type slotStamp struct {
	Dev    uint64 `json:"dev,omitempty"`
	Ino    uint64 `json:"ino,omitempty"`
	Rdev   uint64 `json:"rdev,omitempty"`
	Size   int64  `json:"size"`
	Mtime  int64  `json:"mtime_ns,omitempty"`
	Ctime  int64  `json:"ctime_ns,omitempty"`
	Writes int    `json:"writes,omitempty"`
}

// stampSlot stamps the slot at path; a slot that does not exist yet
// yields an error wrapping fs.ErrNotExist.
func stampSlot(path string, writes int) (slotStamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return slotStamp{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return slotStamp{Dev: uint64(st.Dev), Ino: uint64(st.Ino), Size: st.Size, Mtime: st.Mtim.Nano(),
			Ctime: st.Ctim.Nano(), Writes: writes}, nil
	case unix.S_IFBLK:
		c, err := slotCapacity(path)
		return slotStamp{Rdev: uint64(st.Rdev), Size: c.bytes, Writes: writes}, err
	}
	return slotStamp{}, fmt.Errorf("%s is not a block device or a file", path)
}

// hashRead is one read of a slot: its first Length bytes, in chunks of
// ChunkSize (the last one short when Length is not a multiple), while the
// slot had Stamp.
type hashRead struct {
	Stamp     slotStamp `json:"stamp"`
	ChunkSize int64     `json:"chunk_size"`
	Length    int64     `json:"length"`
}

func (r hashRead) chunks() int64 { return (r.Length + r.ChunkSize - 1) / r.ChunkSize }

// slotHashes are the sha256 of each chunk of a read.
type slotHashes struct {
	hashRead
	Chunks []string `json:"chunks"`
}

// answers reports whether h holds the read want.
func (h slotHashes) answers(want hashRead) bool {
	return h.hashRead == want && int64(len(h.Chunks)) == want.chunks()
}

// sourceChunk is a chunk of the active slot, by offset and length.
type sourceChunk struct{ off, n int64 }

// indexChunks maps chunk hashes to the first place they are, in a slot
// whose first size bytes hashed to chunks of chunkSize.
func indexChunks(chunks []string, chunkSize, size int64) map[string]*sourceChunk {
	out := map[string]*sourceChunk{}
	for i, sum := range chunks {
		if out[sum] == nil {
			out[sum] = &sourceChunk{off: int64(i) * chunkSize, n: chunkLen(size, chunkSize, i)}
		}
	}
	return out
}

// hashJob is one read of the active slot. It is the machine's work, not
// one request's: a request that asks for the same read joins it, and it
// goes on while any request waits for it. When the last one gives up (a
// client's Ctrl-C, a dropped link) or the update is aborted, it stops
// within 1 MiB of reading, and the chunks it hashed are kept in memory
// (Updater.partial) for the next read of the same slot to go on from.
type hashJob struct {
	work
	want    hashRead
	cancel  context.CancelCauseFunc
	waiters int        // requests waiting for it, under Updater.mu
	got     slotHashes // set, with err, before done is closed
	err     error
}

// errNoWaiter ends a read of a slot that no request waits for any more.
var errNoWaiter = fmt.Errorf("no request waits for the hashes any more: %w", context.Canceled)

// sourceIndex maps the chunk hashes of the active slot to where they are,
// at m's chunk size: from the agent's record of a slot it wrote, else
// from the hashes it keeps of the slot, else by reading the slot, which
// it reports as ProgressHash. It returns the bytes it read.
func (u *Updater) sourceIndex(ctx context.Context, slot string, m image.Manifest, progress Progress) (map[string]*sourceChunk, int64, error) {
	for {
		u.mu.Lock()
		src, want, path, err := u.knownSourceLocked(slot, m)
		if src != nil || err != nil {
			u.mu.Unlock()
			return src, 0, err
		}
		j := u.hashing
		if j == nil {
			j = u.startHashLocked(slot, path, want)
		}
		j.waiters++
		u.mu.Unlock()
		err = j.await(ctx, proto.ProgressHash, progress)
		u.mu.Lock()
		if j.waiters--; j.waiters == 0 && err != nil {
			j.cancel(errNoWaiter)
		}
		u.mu.Unlock()
		switch {
		case err != nil:
			return nil, 0, err
		case j.want != want:
			continue // another read, of another length or chunk size, was under way
		case errors.Is(j.err, context.Canceled):
			return nil, 0, proto.Errorf(proto.ReasonCanceled, "hashing slot %s: %v", slot, j.err)
		case j.err != nil:
			return nil, 0, proto.Errorf(proto.ReasonInternal, "hashing slot %s: %v", slot, j.err)
		}
		return indexChunks(j.got.Chunks, want.ChunkSize, want.Length), j.bytes.Load(), nil
	}
}

// knownSourceLocked is sourceIndex without reading the slot: the index,
// or (nil) what must be read to make it: the first m.PayloadSize bytes of
// the slot at path, or all of it if it is shorter.
func (u *Updater) knownSourceLocked(slot string, m image.Manifest) (map[string]*sourceChunk, hashRead, string, error) {
	rec := u.slots[slot]
	if !rec.Writing && rec.ChunkSize == m.ChunkSize && len(rec.Chunks) > 0 {
		return indexChunks(rec.Chunks, rec.ChunkSize, rec.Size), hashRead{}, "", nil
	}
	path, err := u.cfg.Boot.SlotPath(slot)
	if err != nil {
		return nil, hashRead{}, "", proto.Errorf(proto.ReasonInternal, "slot %s: %v", slot, err)
	}
	stamp, err := stampSlot(path, rec.Writes)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return map[string]*sourceChunk{}, hashRead{}, "", nil // nothing to copy from
	case err != nil:
		return nil, hashRead{}, "", proto.Errorf(proto.ReasonInternal, "slot %s: %v", slot, err)
	}
	want := hashRead{Stamp: stamp, ChunkSize: m.ChunkSize, Length: min(stamp.Size, m.PayloadSize)}
	if want.Length <= 0 {
		return map[string]*sourceChunk{}, hashRead{}, "", nil
	}
	if h, ok := u.hashes[slot]; ok && h.answers(want) {
		return indexChunks(h.Chunks, h.ChunkSize, h.Length), hashRead{}, "", nil
	}
	return nil, want, path, nil
}

// startHashLocked reads and hashes slot in the machine's work group,
// going on from the chunks an interrupted read of the same slot hashed,
// and keeps the hashes if the slot did not change meanwhile.
func (u *Updater) startHashLocked(slot, path string, want hashRead) *hashJob {
	from := slotHashes{hashRead: want}
	if p := u.partial; p != nil && p.hashRead == want {
		from.Chunks = p.Chunks
	}
	u.partial = nil
	left := want.Length - min(int64(len(from.Chunks))*want.ChunkSize, want.Length)
	j := &hashJob{work: work{done: make(chan struct{}), total: left}, want: want}
	var ctx context.Context
	ctx, j.cancel = context.WithCancelCause(u.ctx)
	u.hashing = j
	u.work.Go(func() {
		defer j.cancel(nil)
		got, err := u.hashSlot(ctx, slot, path, from, &j.bytes)
		after, serr := stampSlot(path, want.Stamp.Writes)
		u.mu.Lock()
		defer u.mu.Unlock()
		j.got, j.err = got, err
		u.hashing = nil
		switch {
		case serr != nil || after != want.Stamp:
			// Used for this plan (every copy is verified), never kept.
			u.log.Warn("ota: the slot changed while it was hashed: its hashes are not kept", "slot", slot)
		case err != nil:
			if len(got.Chunks) > 0 {
				u.partial = &got
			}
		default:
			u.keepHashesLocked(slot, got)
		}
		close(j.done)
	})
	return j
}

// cancelHashLocked ends the read of a slot under way, if any.
func (u *Updater) cancelHashLocked(cause error) {
	if u.hashing != nil {
		u.hashing.cancel(cause)
	}
}

// hashSlot reads the slot at path and hashes its first want.Length bytes
// in chunks of want.ChunkSize, after the chunks from already holds,
// through one buffer of hashBuf bytes (a read may span chunks: small
// chunks cost no more syscalls), counting the bytes hashed in done.
// Cancelled, it returns the whole chunks it hashed, with the cause.
func (u *Updater) hashSlot(ctx context.Context, slot, path string, from slotHashes, done *atomic.Int64) (slotHashes, error) {
	want := from.hashRead
	got := slotHashes{hashRead: want, Chunks: make([]string, 0, want.chunks())}
	got.Chunks = append(got.Chunks, from.Chunks...)
	f, err := os.Open(path)
	if err != nil {
		return got, err
	}
	defer f.Close()
	start, first := time.Now(), int64(len(got.Chunks))*want.ChunkSize
	u.log.Info("ota: hashing the active slot: the agent did not write it, or it changed", "slot", slot,
		"bytes", want.Length, "from", first)
	buf := make([]byte, min(hashBuf, want.Length-first))
	h := sha256.New()
	for off := first; off < want.Length; {
		if ctx.Err() != nil {
			return got, context.Cause(ctx)
		}
		n, err := f.ReadAt(buf[:min(int64(len(buf)), want.Length-off)], off)
		if err != nil && (off+int64(n) < want.Length || !errors.Is(err, io.EOF)) {
			return got, fmt.Errorf("reading %s at %d: %w", path, off+int64(n), err)
		}
		for data := buf[:n]; len(data) > 0; {
			// The rest of the chunk at off, or of what was read.
			take := min(int64(len(data)), want.ChunkSize-off%want.ChunkSize)
			h.Write(data[:take])
			data, off = data[take:], off+take
			done.Add(take)
			if off%want.ChunkSize != 0 && off != want.Length {
				continue
			}
			got.Chunks = append(got.Chunks, hex.EncodeToString(h.Sum(nil)))
			h.Reset()
			u.crashHashed()
			if u.hashHook != nil {
				u.hashHook(len(got.Chunks))
			}
			if ctx.Err() != nil {
				return got, context.Cause(ctx)
			}
		}
	}
	took, n := time.Since(start), want.Length-first
	u.log.Info("ota: hashed the active slot", "slot", slot, "bytes", n, "chunks", len(got.Chunks),
		"took", took.Round(time.Millisecond), "mb_per_s", fmt.Sprintf("%.0f", float64(n)/1e6/max(took.Seconds(), 1e-9)))
	return got, nil
}

// keepHashesLocked keeps a slot's hashes, on disk too: a cache that cannot
// be saved costs a second read of the slot, nothing more.
func (u *Updater) keepHashesLocked(slot string, h slotHashes) {
	u.hashes[slot] = h
	if err := u.st.saveHashes(u.hashes); err != nil {
		u.log.Warn("ota: keeping the slot's hashes", "slot", slot, "err", err)
	}
}

// Progress reports the work a request waits on: phase (proto.ProgressHash,
// proto.ProgressCopy), bytes done of total. It is called from the
// request's goroutine, never concurrently.
type Progress func(phase string, bytes, total int64)

// progressEvery spaces progress reports: a few a second fit a serial line.
const progressEvery = 250 * time.Millisecond

// work is background work of the machine that a request waits on.
type work struct {
	done  chan struct{}
	total int64
	bytes atomic.Int64
}

// await waits until w is done, reporting its progress as phase, or until
// ctx ends.
func (w *work) await(ctx context.Context, phase string, progress Progress) error {
	var tick <-chan time.Time
	if progress != nil {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-w.done:
			if progress != nil {
				progress(phase, w.bytes.Load(), w.total)
			}
			return nil
		case <-ctx.Done():
			return proto.Errorf(proto.ReasonCanceled, "waiting for the board to %s: %v", phase, context.Cause(ctx))
		case <-tick:
			progress(phase, w.bytes.Load(), w.total)
		}
	}
}
