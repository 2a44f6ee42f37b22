package fetch

import (
	"bytes"
	"io"
	"os"
)

// holeBlock is copySparse's unit: a block of zeros this large, at an
// offset that is a multiple of it, becomes a hole.
const holeBlock = 4 << 10

var zeroBlock [holeBlock]byte

// copySparse copies r into the new, empty file f, leaving blocks of zeros
// as holes (as cp --sparse=auto does): the holes of a sparse tar entry,
// which the tar reader yields as zeros, take no disk space. buf's length
// is a multiple of holeBlock; it is filled whole before each write, so
// that every block is seen whole however r splits its reads.
func copySparse(f *os.File, r io.Reader, buf []byte) error {
	var off int64
	for {
		n, rerr := io.ReadFull(r, buf)
		for p := buf[:n]; len(p) > 0; {
			// The data up to the next block of zeros goes in one write...
			data := 0
			for data < len(p) {
				k := min(len(p)-data, holeBlock)
				if k == holeBlock && bytes.Equal(p[data:data+k], zeroBlock[:]) {
					break
				}
				data += k
			}
			if data > 0 {
				if _, err := f.WriteAt(p[:data], off); err != nil {
					return err
				}
			}
			off, p = off+int64(data), p[data:]
			// ...and the blocks of zeros are skipped.
			for len(p) >= holeBlock && bytes.Equal(p[:holeBlock], zeroBlock[:]) {
				off, p = off+holeBlock, p[holeBlock:]
			}
		}
		switch {
		case rerr == io.EOF || rerr == io.ErrUnexpectedEOF: // the end, after a full or a partial buffer
			// A trailing hole leaves the file short of its length.
			return f.Truncate(off)
		case rerr != nil:
			return rerr
		}
	}
}
