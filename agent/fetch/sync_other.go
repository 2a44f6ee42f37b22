//go:build !linux

package fetch

import "os"

// syncTree makes what was written under dir durable as far as this
// platform allows without an fsync per file: the directory itself.
func syncTree(dir *os.Root) error {
	d, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
