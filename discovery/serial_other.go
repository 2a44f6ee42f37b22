//go:build !linux

package discovery

import (
	"io"

	"github.com/boardlink/boardlink/transport/seriallink"
)

// Elsewhere than Linux the probe cannot see other processes' open files
// nor keep the Linux lock files; it relies on the serial library's
// exclusive open.

func portBusy(string) string { return "" }

func openedElsewhere(string) string { return "" }

func lockPort(string) (func(), string) { return func() {}, "" }

func openTTY(dev string, baud int) (io.ReadWriteCloser, error) { return seriallink.OpenPort(dev, baud) }
