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

// dialSerial opens a session on a line that carries an agent; console text
// seen on the line goes to opts.Console. The returned closer ends the line
// and returns once all console text seen has been written out.
func dialSerial(ctx context.Context, rwc io.ReadWriteCloser, opts DialOptions) (transport.Link, io.Closer, error) {
	ep := seriallink.NewEndpoint(rwc, seriallink.Config{Logger: opts.Logger})
	lc := &lineCloser{ep: ep, copied: make(chan struct{})}
	if opts.Console != nil {
		go func() {
			defer close(lc.copied)
			_, _ = io.Copy(opts.Console, ep.Console())
		}()
	} else {
		close(lc.copied)
	}
	l, err := ep.Dial(ctx)
	if err != nil {
		lc.Close()
		return nil, nil, err
	}
	return l, lc, nil
}

type lineCloser struct {
	ep     *seriallink.Endpoint
	copied chan struct{}
}

func (c *lineCloser) Close() error {
	err := c.ep.Close()
	<-c.copied // the console reader ends at io.EOF after Close
	return err
}
