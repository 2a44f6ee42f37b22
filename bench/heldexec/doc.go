// Package heldexec measures the floor of a ControlMaster-like path for a
// fresh CLI call (docs/benchmarks.md, issue 16 item 3): a process that
// holds one authenticated session to a board (holder) and a client as
// small as a Go program gets (client: net and os only) that asks it to run
// a command over a unix socket. bench/peers times the client beside the
// CLI with -cli-also; the holder starts on the client's first call, as a
// line mux does, and ends after 30 s without a client.
//
// It measures, it is not a feature: the command's output is not passed
// back, only its exit code.
package heldexec

import (
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
)

// Socket is the holder's socket for the board at url.
func Socket(url string) string {
	h := fnv.New64a()
	h.Write([]byte(url))
	return filepath.Join(os.TempDir(), "heldexec-"+strconv.FormatUint(h.Sum64(), 36)+".sock")
}
