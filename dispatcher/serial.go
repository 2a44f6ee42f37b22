package dispatcher

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"

	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// openLine opens the byte stream under a serial-framed link: a serial
// port (serial:///dev/ttyUSB0?baud=115200), a TCP socket (ser2net) or a
// unix socket (QEMU's chardev).
func openLine(ctx context.Context, u *url.URL) (io.ReadWriteCloser, error) {
	if u.Scheme != "serial" {
		return seriallink.OpenLine(ctx, u.String(), 0)
	}
	baud := 115200
	if b := u.Query().Get("baud"); b != "" {
		n, err := strconv.Atoi(b)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%w serial://%s: bad baud %q", ErrBadAddress, u.Path, b)
		}
		baud = n
	}
	return seriallink.OpenPort(u.Path, baud)
}

// line is a serial-framed line to one agent. Its endpoint outlives
// sessions, so that after a reboot a new session opens on the same line
// and no console text is lost in between.
type line struct {
	ep     *seriallink.Endpoint
	copied chan struct{}
}

// serialLine starts reading rwc: console text goes to ring and to
// opts.Console. Nothing is written until dial.
func serialLine(rwc io.ReadWriteCloser, opts DialOptions, ring *consoleRing) *line {
	l := &line{ep: seriallink.NewEndpoint(rwc, seriallink.Config{Logger: opts.Logger}), copied: make(chan struct{})}
	var w io.Writer = ring
	if opts.Console != nil {
		w = io.MultiWriter(ring, opts.Console)
	}
	go func() {
		defer close(l.copied)
		_, _ = io.Copy(w, l.ep.Console())
	}()
	return l
}

// dial opens a session, waiting for the agent's beacon first.
func (l *line) dial(ctx context.Context) (transport.Link, error) { return l.ep.Dial(ctx) }

// Close ends the line and returns once all console text seen has been
// written out.
func (l *line) Close() error {
	err := l.ep.Close()
	<-l.copied // the console reader ends at io.EOF after Close
	return err
}
