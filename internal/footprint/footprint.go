// Package footprint gives back memory a long-running process holds but
// does not use: the heap's free pages, and the pages of its own binary
// that it touched once (starting, a rare request) and not since.
package footprint

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Trim returns the heap's free pages to the system and drops this
// binary's code and read-only data pages from the process. Those pages
// are clean copies of the executable: dropping them costs nothing but a
// fault from the page cache if they are needed again, as the kernel does
// anyway under memory pressure. The data segment is left alone.
func Trim() error {
	debug.FreeOSMemory()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	var errs []error
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-00a8c000 r-xp 00000000 fe:00 10641811 /usr/bin/boardlinkd
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || (fields[1] != "r-xp" && fields[1] != "r--p") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED); e != 0 {
			errs = append(errs, fmt.Errorf("madvise %s: %w", fields[0], e))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}
