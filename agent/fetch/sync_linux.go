package fetch

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncTree makes everything written under dir durable: one syncfs of its
// file system instead of an fsync per extracted file.
func syncTree(dir *os.Root) error {
	d, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
