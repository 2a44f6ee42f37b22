package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Bounds of the tcp family, per session.
const (
	// maxTCPListeners bounds the listeners a session holds at once; one
	// more is busy.
	maxTCPListeners = 16
	// maxTCPPending bounds the connections a listener holds until a
	// tcp.accept takes them; one more is reset at once.
	maxTCPPending = 32
	// tcpDialTimeout bounds tcp.dial's connect.
	tcpDialTimeout = 10 * time.Second
	// defaultTCPAcceptWait is how long a listener holds a connection that
	// no tcp.accept took before it resets it.
	defaultTCPAcceptWait = 10 * time.Second
)

// tcpAcceptWait is defaultTCPAcceptWait, shortened by tests.
var tcpAcceptWait atomic.Int64

func init() { tcpAcceptWait.Store(int64(defaultTCPAcceptWait)) }

// tcpTable is one session's listeners.
type tcpTable struct {
	mu        sync.Mutex
	next      int
	listeners map[string]*tcpListener
	closed    bool
}

// tcpTable returns the session's listeners, made on first use; session.end
// closes them, with the connections they hold.
func (s *session) tcpTable() *tcpTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tcp == nil {
		s.tcp = &tcpTable{listeners: map[string]*tcpListener{}, closed: s.ended}
	}
	return s.tcp
}

// close closes every listener and ends the table: a listen after it is
// refused.
func (t *tcpTable) close() {
	t.mu.Lock()
	t.closed = true
	ls := t.listeners
	t.listeners = nil
	t.mu.Unlock()
	for _, l := range ls {
		l.close()
	}
}

// tcpCall serves the tcp family. Connections it joins to streams end with
// the session: its streams fail, and the forwarding resets them.
func (s *session) tcpCall(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	switch r.Method {
	case proto.MethodTCPDial:
		return s.tcpDial(ctx, c, r.Params)
	case proto.MethodTCPListen:
		return s.tcpListen(ctx, r.Params)
	case proto.MethodTCPAccept:
		return s.tcpAccept(ctx, c, r.Params)
	case proto.MethodTCPUnlisten:
		var p proto.TCPUnlistenParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		l, err := s.tcpTable().remove(p.ID)
		if err != nil {
			return nil, err
		}
		l.close()
		s.a.log.Info("tcp unlisten", s.forwardAttrs("listener", l.id, "address", l.ln.Addr().String())...)
		return struct{}{}, nil
	}
	return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
}

// tcpDial connects to a port the board reaches and joins the connection to
// the caller's stream. Any host may be named, as with ssh -L: a credential
// already grants running any command on the board (docs/security.md).
func (s *session) tcpDial(ctx context.Context, c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.TCPDialParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	target := net.JoinHostPort(cmp.Or(p.Host, "localhost"), strconv.Itoa(p.Port))
	st, err := attach(c, "stream", p.Stream)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: tcpDialTimeout}
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		st.Reset("dial failed")
		s.a.log.Info("tcp dial failed", s.forwardAttrs("target", target, "err", err)...)
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() || errors.Is(err, syscall.ETIMEDOUT) {
			return nil, proto.WithCause(proto.Errorf(proto.ReasonTimeout, "connect to %s: %v", target, err), err)
		}
		return nil, proto.WithCause(proto.Errorf(proto.ReasonUnavailable, "connect to %s: %v", target, err), err)
	}
	s.joinTCP(conn, st, "target", target)
	return proto.TCPDialResult{Local: conn.LocalAddr().String(), Remote: conn.RemoteAddr().String()}, nil
}

// tcpListen listens on the board, on loopback unless told otherwise (as
// ssh -R does); any address the board has may be named.
func (s *session) tcpListen(ctx context.Context, params json.RawMessage) (any, error) {
	var p proto.TCPListenParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	t := s.tcpTable()
	if err := t.room(); err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(cmp.Or(p.Host, "127.0.0.1"), strconv.Itoa(p.Port))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, proto.WithCause(proto.Errorf(proto.ReasonBusy, "listen on %s: address in use", addr), err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return nil, proto.InvalidField("host", "address", "listen on %s: not an address of the board", addr)
	case errors.Is(err, syscall.EACCES):
		return nil, proto.InvalidField("port", "port", "listen on %s: the agent may not listen on this port", addr)
	case err != nil:
		return nil, proto.WithCause(proto.Errorf(proto.ReasonUnavailable, "listen on %s: %v", addr, err), err)
	}
	l, err := t.add(func(id string) *tcpListener {
		return &tcpListener{id: id, ln: ln, wait: time.Duration(tcpAcceptWait.Load()), done: make(chan struct{}),
			log: s.a.log.With(s.forwardAttrs("listener", id, "address", ln.Addr().String())...)}
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	go l.acceptLoop()
	l.log.Info("tcp listen")
	return proto.TCPListenResult{ID: l.id, Address: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port}, nil
}

// tcpAccept waits for the listener's next connection and joins it to the
// caller's stream.
func (s *session) tcpAccept(ctx context.Context, c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.TCPAcceptParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	l, err := s.tcpTable().get(p.Listener)
	if err != nil {
		return nil, err
	}
	st, err := attach(c, "stream", p.Stream)
	if err != nil {
		return nil, err
	}
	conn, err := l.take(ctx)
	if err != nil {
		st.Close()
		return nil, err
	}
	remote := conn.RemoteAddr().String()
	s.joinTCP(conn, st, "listener", l.id, "remote", remote)
	return proto.TCPIncoming{Listener: l.id, Remote: remote}, nil
}

// joinTCP forwards conn over st until either side ends, and logs who
// forwarded what. While it does, the session counts as busy: the idle
// check never closes a session that carries a connection.
func (s *session) joinTCP(conn net.Conn, st *transport.Stream, what ...any) {
	attrs := s.forwardAttrs(append(what, "stream", st.ID())...)
	s.a.log.Info("tcp forward", attrs...)
	s.mu.Lock()
	s.inflight++
	s.mu.Unlock()
	go func() {
		start := time.Now()
		in, out, err := transport.Forward(transport.TCPEnd(conn), st)
		s.mu.Lock()
		s.inflight--
		s.lastUse = time.Now()
		s.mu.Unlock()
		s.a.log.Debug("tcp forward ended", append(attrs, "bytes_in", in, "bytes_out", out,
			"duration", time.Since(start).Round(time.Millisecond), "err", err)...)
	}()
}

// forwardAttrs are attrs and who asked: the peer, its link, and the host
// it authenticated as.
func (s *session) forwardAttrs(attrs ...any) []any {
	s.mu.Lock()
	host := s.host
	s.mu.Unlock()
	return append(attrs, "peer", s.peer.Addr, "link", s.peer.Link, "host", host)
}

// room refuses a listener beyond maxTCPListeners.
func (t *tcpTable) room() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.roomLocked()
}

func (t *tcpTable) roomLocked() error {
	switch {
	case t.closed:
		return proto.Errorf(proto.ReasonCanceled, "connection closed")
	case len(t.listeners) >= maxTCPListeners:
		return proto.Errorf(proto.ReasonBusy, "%d listeners open on this connection, the limit", maxTCPListeners)
	}
	return nil
}

// add keeps the listener newListener makes with a fresh id, within the
// bound.
func (t *tcpTable) add(newListener func(id string) *tcpListener) (*tcpListener, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.roomLocked(); err != nil {
		return nil, err
	}
	t.next++
	l := newListener("l" + strconv.Itoa(t.next))
	t.listeners[l.id] = l
	return l, nil
}

func (t *tcpTable) get(id string) (*tcpListener, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.listeners[id]; l != nil {
		return l, nil
	}
	return nil, proto.Errorf(proto.ReasonNotFound, "no listener %q on this connection", id)
}

func (t *tcpTable) remove(id string) (*tcpListener, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.listeners[id]
	if l == nil {
		return nil, proto.Errorf(proto.ReasonNotFound, "no listener %q on this connection", id)
	}
	delete(t.listeners, id)
	return l, nil
}

// tcpListener accepts connections at once and holds each until a
// tcp.accept takes it, at most maxTCPPending and for wait each.
type tcpListener struct {
	id   string
	ln   net.Listener
	wait time.Duration
	log  *slog.Logger
	done chan struct{} // closed by close

	mu      sync.Mutex
	closed  bool
	queue   []*heldConn     // accepted, waiting for a tcp.accept
	waiters []chan net.Conn // tcp.accept calls waiting, each with room for one
}

// heldConn is a connection waiting for a tcp.accept; timer resets it.
type heldConn struct {
	conn  net.Conn
	timer *time.Timer
}

var errListenerClosed = errors.New("listener closed")

func (l *tcpListener) acceptLoop() {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
			default:
				l.log.Info("tcp listener failed: closed", "err", err)
				l.close()
			}
			return
		}
		l.offer(conn)
	}
}

// offer hands conn to a waiting tcp.accept, or holds it; beyond the bound,
// or once the listener is closed, it resets it.
func (l *tcpListener) offer(conn net.Conn) {
	l.mu.Lock()
	switch {
	case l.closed:
	case len(l.waiters) > 0:
		l.waiters[0] <- conn
		l.waiters = l.waiters[1:]
		l.mu.Unlock()
		return
	case len(l.queue) >= maxTCPPending:
		l.log.Info("tcp listener: too many connections waiting for tcp.accept: reset", "remote", conn.RemoteAddr().String(),
			"pending", len(l.queue))
	default:
		h := &heldConn{conn: conn}
		h.timer = time.AfterFunc(l.wait, func() { l.expire(h) })
		l.queue = append(l.queue, h)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	transport.TCPEnd(conn).Reset("")
}

// expire resets h if no tcp.accept took it.
func (l *tcpListener) expire(h *heldConn) {
	l.mu.Lock()
	i := slices.Index(l.queue, h)
	if i >= 0 {
		l.queue = slices.Delete(l.queue, i, i+1)
	}
	l.mu.Unlock()
	if i >= 0 {
		l.log.Info("tcp listener: connection not accepted in time: reset", "remote", h.conn.RemoteAddr().String(), "wait", l.wait)
		transport.TCPEnd(h.conn).Reset("")
	}
}

// take returns the next connection, waiting for one until the listener
// or the session ends.
func (l *tcpListener) take(ctx context.Context) (net.Conn, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, l.closedError()
	}
	if len(l.queue) > 0 {
		h := l.queue[0]
		l.queue = l.queue[1:]
		l.mu.Unlock()
		h.timer.Stop()
		return h.conn, nil
	}
	ch := make(chan net.Conn, 1)
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	var err error
	select {
	case conn := <-ch:
		return conn, nil
	case <-ctx.Done():
		err = proto.Errorf(proto.ReasonCanceled, "connection closed")
	case <-l.done:
		err = l.closedError()
	}
	l.mu.Lock()
	l.waiters = slices.DeleteFunc(l.waiters, func(w chan net.Conn) bool { return w == ch })
	l.mu.Unlock()
	select {
	case conn := <-ch: // handed over as we gave up: someone else's
		l.offer(conn)
	default:
	}
	return nil, err
}

func (l *tcpListener) closedError() error {
	return proto.WithCause(proto.Errorf(proto.ReasonCanceled, "listener %s closed", l.id), errListenerClosed)
}

// close stops listening and resets the connections no tcp.accept took.
func (l *tcpListener) close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	queue := l.queue
	l.queue = nil
	l.mu.Unlock()
	close(l.done)
	l.ln.Close()
	for _, h := range queue {
		h.timer.Stop()
		transport.TCPEnd(h.conn).Reset("")
	}
}
