package rootpath

import (
	"math"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Free reports the bytes an unprivileged writer may still use on the file
// system holding the open file (or directory) d.
func Free(d *os.File) (free int64, ok bool, err error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &st); err != nil {
		return 0, false, &os.PathError{Op: "fstatfs", Path: d.Name(), Err: err}
	}
	bsize := max(int64(st.Bsize), 1)
	return int64(min(uint64(st.Bavail), uint64(math.MaxInt64/bsize))) * bsize, true, nil
}

// device names the file system holding d.
func device(d *os.File) (uint64, error) {
	st, err := d.Stat()
	if err != nil {
		return 0, err
	}
	return uint64(st.Sys().(*syscall.Stat_t).Dev), nil
}
