package rootpath

import (
	"fmt"
	"os"

	"github.com/boardlink/boardlink/proto"
)

// Room is space a write is about to take: Bytes more on the file system
// holding File (open: a directory, or the file being written).
type Room struct {
	File  *os.File
	Bytes int64
}

// CheckRoom refuses, with no_space, writes the file systems holding them
// have no room for. Rooms on one file system add up. Where free space is
// not known (another OS), nothing is refused: the write itself then fails
// with no_space when the disk fills.
func CheckRoom(rooms ...Room) error {
	type fsys struct {
		need, free int64
		name       string
	}
	var seen []*fsys
	byDev := map[uint64]*fsys{}
	for _, r := range rooms {
		if r.Bytes <= 0 {
			continue
		}
		dev, err := device(r.File)
		if err != nil {
			return Local(r.File.Name(), err)
		}
		s := byDev[dev]
		if s == nil {
			free, ok, err := Free(r.File)
			if err != nil {
				return Local(r.File.Name(), err)
			}
			if !ok {
				continue
			}
			s = &fsys{free: free, name: r.File.Name()}
			byDev[dev] = s
			seen = append(seen, s)
		}
		s.need += r.Bytes
	}
	for _, s := range seen {
		if s.need > s.free {
			return proto.Errorf(proto.ReasonNoSpace, "not enough disk space: %s needed on the file system of %s, %s free",
				size(s.need), s.name, size(s.free))
		}
	}
	return nil
}

// size prints n bytes for people.
func size(n int64) string {
	const unit = 1 << 10
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}
