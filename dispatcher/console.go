package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"

	"github.com/boardlink/boardlink/dispatcher/lineshare"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// consoleKeep is how much console text a client keeps: enough for a
// whole boot log.
const consoleKeep = 256 << 10

// consoleRing keeps the newest console text and counts all of it, so a
// caller can take what arrived since a mark (a reboot, say).
type consoleRing struct {
	mu    sync.Mutex
	buf   []byte // the newest len(buf) <= size bytes
	size  int
	total int64
}

func newConsoleRing(size int) *consoleRing { return &consoleRing{size: size} }

func (r *consoleRing) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total += int64(len(p))
	r.buf = append(r.buf, p...)
	if over := len(r.buf) - r.size; over > 0 {
		r.buf = append(r.buf[:0], r.buf[over:]...)
	}
	return len(p), nil
}

// mark is the count of bytes seen so far.
func (r *consoleRing) mark() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// since returns the text that arrived after mark, as much as is kept.
func (r *consoleRing) since(mark int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(r.total-mark, int64(len(r.buf)))
	return append([]byte(nil), r.buf[int64(len(r.buf))-n:]...)
}

// ConsoleMark and ConsoleSince bracket a stretch of console text (a
// reboot): the text that arrived after the mark, as much as is kept.
func (c *Client) ConsoleMark() int64 {
	if c.console == nil {
		return 0
	}
	return c.console.mark()
}

// ConsoleSince: see ConsoleMark.
func (c *Client) ConsoleSince(mark int64) []byte {
	if c.console == nil {
		return nil
	}
	return c.console.since(mark)
}

// Console copies the console text of the serial line at addr (serial://,
// tcp:// or unix://) to w until ctx ends. It only listens: nothing is
// written to the line, so it never disturbs a boot loader or a shell.
func Console(ctx context.Context, addr string, w io.Writer) error {
	u, err := consoleAddr(addr)
	if err != nil {
		return err
	}
	rwc, err := openLine(ctx, u)
	if err != nil {
		return err
	}
	end := &lineEnd{ReadWriteCloser: rwc}
	ep := seriallink.NewEndpoint(end, seriallink.Config{})
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, ep.Console()) // ends when the line does
		copied <- err
	}()
	select {
	case <-ctx.Done():
		ep.Close()
		<-copied
		return nil
	case err := <-copied:
		ep.Close()
		if err != nil {
			return err // w failed
		}
		return fmt.Errorf("%s: %w: %w", addr, ErrLineClosed, end.cause())
	}
}

// ConsoleShared is Console through the line's mux (started if need be)
// when share is set: w gets the console text the mux kept, then the text
// as it comes, while other clients use the line. Without share, or
// without a mux and share.Start, it is Console.
func ConsoleShared(ctx context.Context, addr string, w io.Writer, share *LineShare) error {
	if share == nil {
		return Console(ctx, addr, w)
	}
	if _, err := consoleAddr(addr); err != nil {
		return err
	}
	conn, _, err := share.dial(ctx, addr, lineshare.Hello{Console: true, Ring: true, ConsoleOnly: true})
	switch {
	case errors.Is(err, lineshare.ErrNoMux) && share.Start == nil:
		return Console(ctx, addr, w)
	case err != nil:
		return err
	}
	out := &closingWriter{w: w, close: conn.Close}
	ended := make(chan error, 1)
	go func() {
		_, _, err := conn.Link(out).ReadMessage() // a viewer is sent console text only
		ended <- err
	}()
	select {
	case <-ctx.Done():
		conn.Close()
		<-ended
		return nil
	case err := <-ended:
		conn.Close()
		if out.err != nil {
			return out.err
		}
		return fmt.Errorf("%s: %w: its line mux ended (%w)", addr, ErrLineClosed, err)
	}
}

// consoleAddr checks that addr is a serial line.
func consoleAddr(addr string) (*url.URL, error) {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("%q: %w", addr, ErrNeedsDiscovery)
	}
	switch u.Scheme {
	case "serial", "tcp", "unix":
		return u, nil
	case "ws", "wss":
		return nil, fmt.Errorf("%w %s: the console is seen on a serial line only (serial://, tcp:// or unix://)", ErrBadAddress, addr)
	}
	return nil, fmt.Errorf("%w %q: unknown scheme %q", ErrBadAddress, addr, u.Scheme)
}

// closingWriter keeps w's first error and then closes what feeds it.
type closingWriter struct {
	w     io.Writer
	close func() error
	err   error
}

func (c *closingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	if err != nil {
		c.err = err
		_ = c.close()
	}
	return n, err
}

// ErrLineClosed ends Console when the line closed under it: a unix
// chardev (QEMU's) serves one client, and another one took it; a
// ser2net port went away; a USB serial port was unplugged.
var ErrLineClosed = errors.New("the line closed")

// lineEnd keeps the first read error of a line, for the message.
type lineEnd struct {
	io.ReadWriteCloser
	once sync.Once
	err  error
}

func (l *lineEnd) Read(p []byte) (int, error) {
	n, err := l.ReadWriteCloser.Read(p)
	if err != nil {
		l.once.Do(func() { l.err = err })
	}
	return n, err
}

// cause is the read error that ended the line; call it after the line's
// reader has ended.
func (l *lineEnd) cause() error {
	if l.err == nil {
		return io.EOF
	}
	return l.err
}

// notes routes the agent's progress notifications to the calls waiting
// for them, by token; or, when all is set (a line mux), every
// notification to all.
type notes struct {
	all  func(*transport.Request)
	mu   sync.Mutex
	next uint64
	subs map[string]*subscription
}

// subscription is one call's; f is nil once the call unsubscribed.
type subscription struct {
	mu sync.Mutex
	f  func(proto.Progress)
}

// subscribe registers f for a fresh token; the returned func unregisters,
// and once it returned f is not running and is never called again.
func (n *notes) subscribe(f func(proto.Progress)) (string, func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.next++
	tok := fmt.Sprintf("p%d", n.next)
	if n.subs == nil {
		n.subs = map[string]*subscription{}
	}
	s := &subscription{f: f}
	n.subs[tok] = s
	return tok, func() {
		n.mu.Lock()
		delete(n.subs, tok)
		n.mu.Unlock()
		s.mu.Lock()
		s.f = nil
		s.mu.Unlock()
	}
}

// Handle takes the agent's notifications; the agent sends no requests.
func (n *notes) Handle(_ context.Context, _ *transport.Conn, r *transport.Request) (any, error) {
	if n.all != nil && r.Notification {
		n.all(r)
		return nil, nil
	}
	if !r.Notification || r.Method != proto.NoteProgress {
		return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
	}
	var p proto.Progress
	if err := json.Unmarshal(r.Params, &p); err != nil {
		return nil, err
	}
	n.mu.Lock()
	s := n.subs[p.Token]
	n.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.f != nil {
			s.f(p)
		}
	}
	return nil, nil
}
