package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher/bootstrap"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// LineShare shares serial-framed lines among this user's processes: a
// line is held by one mux (package linemux), which keeps the session with
// the agent and the console, and every client connects to the mux instead
// of opening the line. A call then costs a round trip, not a wait for the
// agent's beacon, and a console sees the line while commands run.
type LineShare struct {
	// Dir holds the muxes' sockets; "" is lineshare.Dir().
	Dir string
	// Start starts a mux for the line at addr and returns once it listens
	// (the CLI runs `boardlink line-mux` detached; a service runs
	// linemux.Serve). Nil: only a running mux is used; without one the
	// line is opened directly.
	Start func(ctx context.Context, addr string) error
}

// socket is where the mux of the line at addr listens.
func (s *LineShare) socket(addr string) (string, error) {
	dir := s.Dir
	if dir == "" {
		var err error
		if dir, err = lineshare.Dir(); err != nil {
			return "", err
		}
	}
	return lineshare.Socket(dir, addr)
}

// dial connects to the line's mux, starting one if none answers. Without
// Start and without a mux it returns an error wrapping lineshare.ErrNoMux.
func (s *LineShare) dial(ctx context.Context, addr string, h lineshare.Hello) (*lineshare.Conn, lineshare.Welcome, error) {
	sock, err := s.socket(addr)
	if err != nil {
		return nil, lineshare.Welcome{}, err
	}
	c, w, err := lineshare.Dial(ctx, sock, h)
	if errors.Is(err, lineshare.ErrNoMux) && s.Start != nil {
		if err := s.Start(ctx, addr); err != nil {
			return nil, w, fmt.Errorf("%s: starting its line mux: %w", addr, err)
		}
		c, w, err = lineshare.Dial(ctx, sock, h)
	}
	return c, w, err
}

// muxLink is a link to a line mux, with the hello of its session.
type muxLink struct {
	transport.Link
	hello proto.HelloResult
}

// sessionHello opens the session on a new link: on a mux's, the board
// the mux reached is checked against this client's expectations (the
// mux, this user's own process, checked the board's proof of its key);
// on any other, by the handshake.
func (c *Client) sessionHello(ctx context.Context, conn *transport.Conn, l transport.Link) (proto.HelloResult, error) {
	ml, ok := l.(*muxLink)
	if !ok {
		return c.handshake(ctx, conn, l)
	}
	hello := ml.hello
	if hello.Auth == nil && !c.opts.AllowLegacy {
		return hello, fmt.Errorf("board %s runs agent %s (protocol %d): %w; update its agent",
			hello.BoardID, hello.Agent, hello.Protocol, ErrLegacyAgent)
	}
	if c.opts.BoardID != "" && hello.BoardID != c.opts.BoardID {
		return hello, &WrongBoardError{Want: c.opts.BoardID, Got: hello.BoardID}
	}
	if hello.Auth != nil {
		key, err := auth.KeyFromBytes(hello.Auth.Key)
		if err != nil {
			return hello, fmt.Errorf("board %s: %w: %w", hello.BoardID, ErrUntrusted, err)
		}
		fp := auth.FingerprintOf(key)
		if !c.opts.Fingerprint.IsZero() && !c.opts.Fingerprint.Equal(fp) {
			return hello, &FingerprintError{Board: hello.BoardID, Want: c.opts.Fingerprint, Got: fp}
		}
		if c.opts.Trust != nil {
			if err := c.opts.Trust.Verify(ctx, hello.BoardID, fp); err != nil {
				return hello, err
			}
		}
	}
	hello.Protocol = min(hello.Protocol, proto.Version)
	return hello, nil
}

// serialClient prepares a client for the serial-framed line at addr: on
// the line's mux with opts.Lines, else on the line itself.
func serialClient(ctx context.Context, addr string, u *url.URL, opts DialOptions) (*Client, error) {
	if share := opts.Lines; share != nil {
		c := &Client{opts: opts, console: newConsoleRing(consoleKeep), line: nopCloser{}}
		var w io.Writer = c.console
		if opts.Console != nil {
			w = io.MultiWriter(c.console, opts.Console)
		}
		// Where the mux's console text this client has seen ends: a dial
		// again (after a reboot) resumes there, so that the boot printed
		// while no connection was up is not lost.
		seen := &offsetWriter{w: w}
		c.redial = func(ctx context.Context) (transport.Link, error) {
			at, resume := seen.at()
			conn, welcome, err := share.dial(ctx, addr, lineshare.Hello{Console: true, Resume: resume, Since: at})
			if err != nil {
				return nil, err
			}
			if welcome.Hello == nil {
				conn.Close()
				return nil, fmt.Errorf("line mux %s (pid %d) named no board", welcome.Line, welcome.PID)
			}
			seen.start(welcome.Console)
			return &muxLink{Link: conn.Link(seen), hello: *welcome.Hello}, nil
		}
		if share.Start != nil {
			return c, nil
		}
		// No way to start a mux: use one if it runs, else the line.
		if l, err := c.redial(ctx); err == nil {
			c.redial = onceThen(l, c.redial)
			return c, nil
		} else if !errors.Is(err, lineshare.ErrNoMux) {
			return nil, err
		}
	}
	rwc, err := openLine(ctx, u)
	if err != nil {
		return nil, err
	}
	return lineClient(rwc, addr, opts), nil
}

// offsetWriter passes a mux's console text on and counts where in it the
// text it has passed on ends.
type offsetWriter struct {
	w     io.Writer
	mu    sync.Mutex
	off   int64
	known bool
}

func (o *offsetWriter) Write(p []byte) (int, error) {
	o.mu.Lock()
	o.off += int64(len(p))
	o.mu.Unlock()
	return o.w.Write(p)
}

// start: the next text begins at off of the mux's console.
func (o *offsetWriter) start(off int64) {
	o.mu.Lock()
	o.off, o.known = off, true
	o.mu.Unlock()
}

// at is where the text passed on ends, once a connection told.
func (o *offsetWriter) at() (int64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.off, o.known
}

// onceThen returns first on the first call, then calls next.
func onceThen(first transport.Link, next func(context.Context) (transport.Link, error)) func(context.Context) (transport.Link, error) {
	return func(ctx context.Context) (transport.Link, error) {
		if l := first; l != nil {
			first = nil
			return l, nil
		}
		return next(ctx)
	}
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// openLine opens the byte stream under a serial-framed link: a serial
// port (serial:///dev/ttyUSB0?baud=115200), a TCP socket (ser2net) or a
// unix socket (QEMU's chardev). A serial port is locked (its uucp lock
// file) while open; one another process holds is refused with a
// *lineshare.BusyError naming it.
func openLine(ctx context.Context, u *url.URL) (io.ReadWriteCloser, error) {
	if u.Scheme != "serial" {
		return openStream(ctx, u)
	}
	dir, err := lineshare.Dir()
	if err != nil {
		dir = "" // the uucp lock directories only
	}
	unlock, err := lineshare.Lock(u.String(), dir)
	if err != nil {
		return nil, err
	}
	p, err := openStream(ctx, u)
	if err != nil {
		unlock()
		return nil, err
	}
	return &lockedPort{ReadWriteCloser: p, unlock: unlock}, nil
}

// openStream opens the line's byte stream, without its lock.
func openStream(ctx context.Context, u *url.URL) (io.ReadWriteCloser, error) {
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

// lockedPort releases its lock when closed.
type lockedPort struct {
	io.ReadWriteCloser
	unlock func()
}

func (p *lockedPort) Close() error {
	err := p.ReadWriteCloser.Close()
	p.unlock()
	return err
}

// line is a serial-framed line to one agent. Its endpoint outlives
// sessions, so that after a reboot a new session opens on the same line
// and no console text is lost in between.
type line struct {
	ep     *seriallink.Endpoint
	copied chan struct{}
	addr   string       // for a bootstrap hint
	tail   *consoleRing // the last console text, for a prompt
}

// serialLine starts reading rwc: console text goes to ring (if any) and
// to opts.Console. Nothing is written until dial.
func serialLine(rwc io.ReadWriteCloser, addr string, opts DialOptions, ring *consoleRing) *line {
	l := &line{ep: seriallink.NewEndpoint(rwc, seriallink.Config{Logger: opts.Logger}), copied: make(chan struct{}),
		addr: addr, tail: newConsoleRing(promptTail)}
	ws := []io.Writer{l.tail}
	if ring != nil {
		ws = append(ws, ring)
	}
	if opts.Console != nil {
		ws = append(ws, opts.Console)
	}
	go func() {
		defer close(l.copied)
		_, _ = io.Copy(io.MultiWriter(ws...), l.ep.Console())
	}()
	return l
}

// promptAfter is how long a dial waits for an agent before it looks for
// a shell on the line: three beacon intervals. promptTail is how much of
// the console it looks at.
const (
	promptAfter = 3 * seriallink.DefaultBeaconInterval
	promptTail  = 1 << 10
)

// dial opens a session, waiting for the agent's beacon first. A line that
// carries no agent but a shell (never given one, or whose agent died)
// would keep it waiting: once nothing of an agent was heard for
// promptAfter and the console ends in a prompt, it fails with a
// *bootstrap.HintError. It only listens: nothing is typed.
func (l *line) dial(ctx context.Context) (transport.Link, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go l.watchPrompt(ctx, cancel)
	link, err := l.ep.Dial(ctx)
	var hint *bootstrap.HintError
	if err != nil && errors.As(context.Cause(ctx), &hint) {
		return nil, hint
	}
	return link, err
}

// watchPrompt cancels the dial of ctx with a hint once the line's console
// ends in a prompt and no frame of an agent has been heard.
func (l *line) watchPrompt(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(promptAfter)
	defer t.Stop()
	for waited := promptAfter; ; waited += promptAfter {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.ep.Stats().FramesIn > 0 {
			return // an agent is there: the dial goes on
		}
		if p := bootstrap.Detect(l.tail.since(0)); p != bootstrap.NoPrompt {
			cancel(&bootstrap.HintError{Addr: l.addr, Prompt: p, Err: fmt.Errorf("no agent heard in %v", waited)})
			return
		}
	}
}

// Close ends the line and returns once all console text seen has been
// written out.
func (l *line) Close() error {
	err := l.ep.Close()
	<-l.copied // the console reader ends at io.EOF after Close
	return err
}

// SerialLine is a serial-framed line held open by a line mux: its console
// text goes to DialOptions.Console from the moment it opens, and sessions
// with the agent are opened on it on demand, each replacing the one
// before.
type SerialLine struct {
	l    *line
	opts DialOptions
}

// OpenSerialLine opens the line at addr (serial://, tcp:// or unix://)
// and listens to it; nothing is written until Dial. The caller locks the
// line (lineshare.Lock).
func OpenSerialLine(ctx context.Context, addr string, opts DialOptions) (*SerialLine, error) {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "serial" && u.Scheme != "tcp" && u.Scheme != "unix") {
		return nil, fmt.Errorf("%w %q: not a serial line (serial://, tcp:// or unix://)", ErrBadAddress, addr)
	}
	rwc, err := openStream(ctx, u)
	if err != nil {
		return nil, err
	}
	return &SerialLine{l: serialLine(rwc, addr, opts, nil), opts: opts}, nil
}

// Dial opens a session with the agent on the line, authenticated with the
// line's DialOptions. Every notification the agent sends goes to notify.
// Closing the client leaves the line open.
func (s *SerialLine) Dial(ctx context.Context, notify func(*transport.Request)) (*Client, error) {
	c := &Client{opts: s.opts, redial: s.l.dial}
	c.notes.all = notify
	return open(ctx, c)
}

// Done is closed when the line has ended (closed, or failed under us).
func (s *SerialLine) Done() <-chan struct{} { return s.l.copied }

// Close ends the line.
func (s *SerialLine) Close() error { return s.l.Close() }
