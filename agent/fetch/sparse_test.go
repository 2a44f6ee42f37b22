package fetch

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// chunkReader returns at most n bytes a read.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// TestCopySparse: what copySparse writes reads back the same, however its
// reader splits the bytes, and its blocks of zeros take no disk space.
func TestCopySparse(t *testing.T) {
	var want []byte
	data := content(40, 3*holeBlock+100)
	for _, piece := range [][]byte{data[:10], make([]byte, 5*holeBlock), data, make([]byte, 64*holeBlock+7), data[:1], make([]byte, 32*holeBlock)} {
		want = append(want, piece...)
	}
	for _, chunk := range []int{1000, holeBlock, 3*holeBlock + 1, len(want)} {
		p := filepath.Join(t.TempDir(), "f")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := copySparse(f, chunkReader{bytes.NewReader(want), chunk}, make([]byte, copyBuffer)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got := readFile(t, p); !bytes.Equal(got, want) {
			t.Fatalf("reads of %d: the file differs (%d bytes, want %d)", chunk, len(got), len(want))
		}
		st, _ := os.Stat(p)
		if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 16*holeBlock {
			t.Errorf("reads of %d: %d bytes on disk for %d bytes of which 101 blocks are zeros", chunk, used, len(want))
		}
	}
}
