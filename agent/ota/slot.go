package ota

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// capacity is how many bytes a slot can hold, and how that was found.
type capacity struct {
	bytes int64
	what  string
}

// slotCapacity reads the size of the slot at path through what
// board.BootControl gives, its path: a block device holds its size; a
// regular file (the sim board's slots), or one not created yet, holds what
// it has plus what its file system has free.
func slotCapacity(path string) (capacity, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		free, err := freeBytes(filepath.Dir(path))
		return capacity{free, "the free space of the file system it would be created on"}, err
	case err != nil:
		return capacity{}, err
	case fi.Mode().IsRegular():
		free, err := freeBytes(filepath.Dir(path))
		return capacity{fi.Size() + free, "the file's size and the free space of its file system"}, err
	case fi.Mode().Type() == fs.ModeDevice:
		f, err := os.Open(path)
		if err != nil {
			return capacity{}, err
		}
		defer f.Close()
		n, err := f.Seek(0, io.SeekEnd)
		return capacity{n, "the size of block device " + path}, err
	}
	return capacity{}, fmt.Errorf("%s is a %s, not a block device or a file", path, fi.Mode().Type())
}

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
