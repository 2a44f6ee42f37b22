package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// ErrNoForwarding: the board's agent does not forward TCP (it does not
// announce the tcp capability; agents before protocol 5).
var ErrNoForwarding = errors.New("the board's agent does not forward TCP connections (protocol 5 and the tcp capability needed)")

// ForwardEventKind says what happened to a forwarded connection.
type ForwardEventKind int

// Kinds of ForwardEvent.
const (
	// ForwardOpened: the connection is joined end to end.
	ForwardOpened ForwardEventKind = iota
	// ForwardFailed: the far end could not be reached; the connection
	// was reset.
	ForwardFailed
	// ForwardClosed: a joined connection ended.
	ForwardClosed
)

// ForwardEvent tells what happened to one forwarded connection.
type ForwardEvent struct {
	Kind ForwardEventKind
	// From is the peer that made the connection (a client on the host
	// for Forward, on the board for Serve); To is where it was joined
	// (the board's end as the board sees it, or the host's).
	From, To string
	// Sent counts the bytes From sent to To, Received those back.
	Sent, Received int64
	// Err is why it failed or ended abnormally; nil for a clean end.
	Err error
	// Cut: the stop (the context) ended it, not either side.
	Cut bool
}

// serialized calls events (nil: none) one event at a time.
func serialized(events func(ForwardEvent)) func(ForwardEvent) {
	var mu sync.Mutex
	return func(ev ForwardEvent) {
		if events != nil {
			mu.Lock()
			defer mu.Unlock()
			events(ev)
		}
	}
}

// checkTCP refuses an agent that does not forward.
func (c *Client) checkTCP() error {
	if !slices.Contains(c.Hello().Capabilities, proto.CapTCP) {
		return ErrNoForwarding
	}
	return nil
}

// Forward joins each connection ln accepts to one the board makes to
// host:port (host "" is the board's localhost), as ssh -L does, until ctx
// is done or ln fails; then it closes ln and every connection and returns
// once they are gone (nil when ctx ended it). A connection the board
// cannot make is reset. If the session ended (a board idle too long, a
// link that failed) the next connection reconnects once; if that fails
// too, Forward ends with the error. events, if not nil, hears of each
// connection, one event at a time.
func (c *Client) Forward(ctx context.Context, ln net.Listener, host string, port int, events func(ForwardEvent)) error {
	if err := c.checkTCP(); err != nil {
		ln.Close()
		return err
	}
	emit := serialized(events)
	ctx, cancel := context.WithCancelCause(ctx)
	var (
		wg        sync.WaitGroup
		reconnect sync.Mutex
	)
	defer func() {
		cancel(nil) // ends every connection
		wg.Wait()
	}()
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		local, err := ln.Accept()
		if err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, errNoSession) {
				return cause
			} else if cause != nil {
				return nil
			}
			return fmt.Errorf("forward: accept: %w", err)
		}
		wg.Go(func() {
			ev := ForwardEvent{From: local.RemoteAddr().String()}
			st, res, err := c.dialTCP(ctx, &reconnect, host, port)
			if err != nil {
				transport.TCPEnd(local).Reset("")
				ev.Kind, ev.Err = ForwardFailed, err
				emit(ev)
				if errors.Is(err, errNoSession) {
					cancel(err) // the board is gone: say so rather than reset every connection
				}
				return
			}
			ev.To = res.Remote
			join(ctx, local, st, false, ev, emit)
		})
	}
}

// errNoSession: the session ended and could not be reopened.
var errNoSession = errors.New("forward: the session with the board ended and could not be reopened")

// dialTCP opens a stream and has the board connect it to host:port. A
// session that ended is reopened once (reconnect keeps two connections
// that found it ended from reopening it twice).
func (c *Client) dialTCP(ctx context.Context, reconnect *sync.Mutex, host string, port int) (*transport.Stream, proto.TCPDialResult, error) {
	var res proto.TCPDialResult
	for retried := false; ; retried = true {
		conn := c.Conn()
		st, err := conn.OpenStream()
		if err == nil {
			err = conn.Call(ctx, proto.MethodTCPDial, proto.TCPDialParams{Host: host, Port: port, Stream: st.ID()}, &res)
			if err == nil {
				return st, res, nil
			}
			st.Close()
		}
		if retried || ctx.Err() != nil || !errors.Is(err, transport.ErrClosed) {
			return nil, res, err
		}
		var rerr error
		reconnect.Lock()
		if c.Conn() == conn {
			c.opts.Logger.Info("forward: the session ended: reconnecting", "err", err)
			rerr = c.Reconnect(ctx)
		}
		reconnect.Unlock()
		if rerr != nil {
			return nil, res, fmt.Errorf("%w: %w", errNoSession, rerr)
		}
	}
}

// join forwards local over st until either side ends it or ctx is done,
// then tells events how it ended. local is ev.From's end (Forward), or
// with reverse ev.To's (Serve).
func join(ctx context.Context, local net.Conn, st *transport.Stream, reverse bool, ev ForwardEvent, emit func(ForwardEvent)) {
	ev.Kind = ForwardOpened
	emit(ev)
	stop := context.AfterFunc(ctx, func() {
		st.Reset("canceled")
		transport.TCPEnd(local).Reset("")
	})
	ev.Sent, ev.Received, ev.Err = transport.Forward(transport.TCPEnd(local), st)
	if reverse {
		ev.Sent, ev.Received = ev.Received, ev.Sent
	}
	if ev.Cut = !stop(); ev.Cut {
		ev.Err = context.Cause(ctx)
	}
	ev.Kind = ForwardClosed
	emit(ev)
}

// RemoteListener is a listener on the board (tcp.listen), as ssh -R and
// adb reverse make. It belongs to the session it was opened in.
type RemoteListener struct {
	conn *transport.Conn
	// ID names it in the session; Address and Port are where it listens
	// on the board.
	ID      string
	Address string
	Port    int
}

// ListenTCP listens on host:port on the board (host "": 127.0.0.1; port
// 0: any free one). Serve it, or Close it.
func (c *Client) ListenTCP(ctx context.Context, host string, port int) (*RemoteListener, error) {
	if err := c.checkTCP(); err != nil {
		return nil, err
	}
	conn := c.Conn()
	var res proto.TCPListenResult
	if err := conn.Call(ctx, proto.MethodTCPListen, proto.TCPListenParams{Host: host, Port: port}, &res); err != nil {
		return nil, err
	}
	return &RemoteListener{conn: conn, ID: res.ID, Address: res.Address, Port: res.Port}, nil
}

// Close stops listening; connections already joined go on.
func (l *RemoteListener) Close(ctx context.Context) error {
	return l.conn.Call(ctx, proto.MethodTCPUnlisten, proto.TCPUnlistenParams{ID: l.ID}, nil)
}

// Bounds of Serve.
const (
	// reverseAcceptors is how many tcp.accept calls Serve keeps waiting:
	// a burst of connections waits for one round trip each, not in line.
	reverseAcceptors = 4
	// maxReverseConns bounds the connections Serve forwards at once,
	// below the streams a session holds (256 by default); more wait on
	// the board (and are reset there after 10 s).
	maxReverseConns = 128
	// unlistenWait bounds the tcp.unlisten Serve sends as it stops.
	unlistenWait = 5 * time.Second
)

// Serve joins each connection made to the listener on the board to one
// dial makes on the host, until ctx is done or the session ends; then it
// closes the listener and every connection and returns once they are gone
// (nil when ctx ended it). A connection dial fails for is reset on the
// board. events, if not nil, hears of each connection, one event at a
// time.
func (l *RemoteListener) Serve(ctx context.Context, dial func(ctx context.Context) (net.Conn, error), events func(ForwardEvent)) error {
	emit := serialized(events)
	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxReverseConns)
	errc := make(chan error, reverseAcceptors)
	for range reverseAcceptors {
		wg.Go(func() { errc <- l.acceptLoop(inner, &wg, slots, dial, emit) })
	}
	err := <-errc
	cancel()
	bg, done := context.WithTimeout(context.WithoutCancel(ctx), unlistenWait)
	defer done()
	if uerr := l.Close(bg); uerr != nil && ctx.Err() == nil && err == nil {
		err = uerr
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("reverse forward on %s: %w", l.Address, err)
}

// acceptLoop takes the listener's connections one after the other, each
// holding a slot until its forwarding ends.
func (l *RemoteListener) acceptLoop(ctx context.Context, wg *sync.WaitGroup, slots chan struct{},
	dial func(ctx context.Context) (net.Conn, error), emit func(ForwardEvent)) error {
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		st, err := l.conn.OpenStream()
		if err != nil {
			<-slots
			return err
		}
		var in proto.TCPIncoming
		if err := l.conn.Call(ctx, proto.MethodTCPAccept, proto.TCPAcceptParams{Listener: l.ID, Stream: st.ID()}, &in); err != nil {
			st.Close()
			<-slots
			return err
		}
		wg.Go(func() {
			defer func() { <-slots }()
			ev := ForwardEvent{From: in.Remote}
			local, err := dial(ctx)
			if err != nil {
				st.Reset("refused on the host")
				ev.Kind, ev.Err = ForwardFailed, err
				emit(ev)
				return
			}
			ev.To = local.RemoteAddr().String()
			join(ctx, local, st, true, ev, emit)
		})
	}
}
