package fetch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
)

// Limits are what one Fetch may take; zero fields take the defaults.
type Limits struct {
	// MaxSize bounds the content, in bytes: a body announced or found to
	// be larger is refused at once and its partial download removed.
	MaxSize int64
	// MaxUnpack bounds what Extract unpacks: the sum of the entries'
	// sizes, a sparse file's holes included (they are written as holes,
	// so they take no disk space, but they count).
	MaxUnpack int64
	// MaxUnpackEntries bounds the entries of an archive.
	MaxUnpackEntries int
	// Deadline bounds one Fetch as a whole: waiting for another Fetch of
	// the same content, every request and retry, installing or
	// extracting. An ended deadline is reason timeout, and a partial
	// download stays in the cache for a later resume.
	Deadline time.Duration
}

// Defaults of Limits.
const (
	DefaultMaxSize          = 4 << 30
	DefaultMaxUnpack        = 16 << 30
	DefaultMaxUnpackEntries = 100_000
	DefaultDeadline         = time.Hour
)

// bounds are what one Fetch may take: the smaller of the caller's ask and
// the owner's limit, remembering whose it is so that an error names it.
type bounds struct {
	max       int64 // the content's size
	callerMax bool  // max is the caller's MaxSize
	size      int64 // the content's expected size; 0: unknown
	unpack    unpackLimits
	deadline  time.Duration
	callerDue bool // deadline is the caller's Timeout
}

// unpackLimits bound what Extract writes.
type unpackLimits struct {
	bytes   int64
	entries int
}

func (req *Request) bounds() bounds {
	l := req.Limits
	def := func(v, d int64) int64 {
		if v <= 0 {
			return d
		}
		return v
	}
	b := bounds{
		max:  def(l.MaxSize, DefaultMaxSize),
		size: req.Size,
		unpack: unpackLimits{bytes: def(l.MaxUnpack, DefaultMaxUnpack),
			entries: int(def(int64(l.MaxUnpackEntries), DefaultMaxUnpackEntries))},
		deadline: time.Duration(def(int64(l.Deadline), int64(DefaultDeadline))),
	}
	if req.MaxSize > 0 && req.MaxSize <= b.max {
		b.max, b.callerMax = req.MaxSize, true
	}
	if req.Timeout > 0 && req.Timeout <= b.deadline {
		b.deadline, b.callerDue = req.Timeout, true
	}
	return b
}

// checkBounds validates the request's own bounds.
func (req *Request) checkBounds() error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"size", req.Size}, {"max_size", req.MaxSize}, {"timeout_ms", int64(req.Timeout)}} {
		if f.v < 0 {
			return proto.InvalidField(f.name, "min", "must not be negative")
		}
	}
	if b := req.bounds(); b.size > b.max {
		return proto.InvalidField("size", "max_size", "%d bytes is more than %s", b.size, b.maxName())
	}
	return nil
}

func (b bounds) maxName() string {
	if b.callerMax {
		return fmt.Sprintf("max_size (%d bytes)", b.max)
	}
	return fmt.Sprintf("the agent's download limit (%d bytes)", b.max)
}

// errRefused marks a body refused for its size: its partial download is
// of no use and goes.
var errRefused = errors.New("refused for its size")

// over refuses content of n bytes (as how says: "announced as", "at
// least") that exceeds the expected size or the maximum.
func (b bounds) over(n int64, how string) error {
	switch {
	case b.size > 0 && n > b.size:
		return proto.WithCause(proto.InvalidField("size", "size",
			"the content is %s %d bytes, more than the size given (%d)", how, n, b.size), errRefused)
	case n > b.max && b.callerMax:
		return proto.WithCause(proto.InvalidField("max_size", "max",
			"the content is %s %d bytes, more than %s", how, n, b.maxName()), errRefused)
	case n > b.max:
		return proto.WithCause(proto.InvalidField("url", "max_size",
			"the content is %s %d bytes, more than %s", how, n, b.maxName()), errRefused)
	}
	return nil
}

// fits refuses content of n bytes in all that is over the bounds or not
// of the expected size.
func (b bounds) fits(n int64, how string) error {
	if err := b.over(n, how); err != nil {
		return err
	}
	if b.size > 0 && n != b.size {
		return proto.WithCause(proto.InvalidField("size", "size",
			"the content is %s %d bytes, not the size given (%d)", how, n, b.size), errRefused)
	}
	return nil
}

// withDeadline bounds ctx by the Fetch's deadline; its cause says whose.
func (b bounds) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	whose := "the agent's download deadline"
	if b.callerDue {
		whose = "timeout_ms"
	}
	return context.WithTimeoutCause(ctx, b.deadline,
		fmt.Errorf("%w: the download took longer than %v (%s)", context.DeadlineExceeded, b.deadline, whose))
}

// dropsPartial reports an error after which a partial download is of no
// use: the content is not what was asked for, or no disk holds it.
func dropsPartial(err error) bool {
	return errors.Is(err, errRefused) || proto.IsReason(err, proto.ReasonChecksumMismatch) ||
		proto.IsReason(err, proto.ReasonNoSpace)
}

// checkRoom refuses, before writing, a download the disk cannot hold:
// partBytes more in the partial download part (nil: none yet) and
// install bytes for what goes into Dest's directory.
func checkRoom(req Request, part *os.File, partBytes, install int64) error {
	var rooms []rootpath.Room
	if part != nil {
		rooms = append(rooms, rootpath.Room{File: part, Bytes: partBytes})
	}
	if install > 0 {
		dir, err := req.Root.Open(path.Dir(req.Dest))
		if err != nil {
			return rootpath.Error(req.Dest, err)
		}
		defer dir.Close()
		rooms = append(rooms, rootpath.Room{File: dir, Bytes: install})
	}
	return rootpath.CheckRoom(rooms...)
}
