package bulk

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"testing"
)

// Every byte arrives once and in order, and the hash is of those bytes,
// for sizes around the block, by Copy and by CopyInline, from a source
// that writes its own buffers (bytes.Reader is an io.WriterTo) and from
// one that is only read.
func TestCopyIntact(t *testing.T) {
	copies := map[string]func(io.Writer, io.Reader, hash.Hash) (int64, error){
		"Copy":       func(dst io.Writer, src io.Reader, h hash.Hash) (int64, error) { return Copy(dst, src, -1, h, nil) },
		"CopyInline": CopyInline,
		"CopyInline, read": func(dst io.Writer, src io.Reader, h hash.Hash) (int64, error) {
			return CopyInline(dst, struct{ io.Reader }{src}, h)
		},
	}
	for name, copyFn := range copies {
		for _, size := range []int{0, 1, Block - 1, Block, Block + 1, 7*Block + 13} {
			data := make([]byte, size)
			rand.Read(data)
			var dst bytes.Buffer
			h := sha256.New()
			n, err := copyFn(&dst, bytes.NewReader(data), h)
			if err != nil || n != int64(size) || !bytes.Equal(dst.Bytes(), data) {
				t.Fatalf("%s, size %d: copied %d, %v; equal %v", name, size, n, err, bytes.Equal(dst.Bytes(), data))
			}
			if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("%s, size %d: hash differs", name, size)
			}
		}
	}
}

// A limit stops the copy there, one byte past what a push announced
// included.
func TestCopyLimit(t *testing.T) {
	data := make([]byte, 3*Block)
	rand.Read(data)
	var dst bytes.Buffer
	n, err := Copy(&dst, bytes.NewReader(data), Block+5, nil, nil)
	if err != nil || n != Block+5 || !bytes.Equal(dst.Bytes(), data[:Block+5]) {
		t.Fatalf("copied %d, %v", n, err)
	}
}

type failWriter struct{ after int }

var errDisk = errors.New("disk full")

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errDisk
	}
	w.after--
	return len(p), nil
}

// A failed write aborts a reader blocked on its source, and Copy returns
// the write's error only once the reader is done.
func TestCopyWriteErrorAborts(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 2*Block)) // then nothing: the reader blocks
	}()
	n, err := Copy(&failWriter{after: 1}, pr, -1, sha256.New(), func() { pr.CloseWithError(errors.New("aborted")) })
	if !errors.Is(err, errDisk) || n != Block {
		t.Fatalf("copied %d, %v; want %d, the disk's error", n, err, Block)
	}
}

// A read error after some bytes is the copy's error, after those bytes.
func TestCopyReadError(t *testing.T) {
	boom := errors.New("link cut")
	src := io.MultiReader(bytes.NewReader(make([]byte, Block/2)), errReader{boom})
	var dst bytes.Buffer
	n, err := Copy(&dst, src, -1, nil, nil)
	if !errors.Is(err, boom) || n != Block/2 {
		t.Fatalf("copied %d, %v", n, err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
