package wslink

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Path is where the agent serves protocol v1.
const Path = "/v1/ws"

// Config tunes a link. Zero values take the defaults.
type Config struct {
	MaxMessage   int           // largest message accepted; default proto.MaxMessage
	HardLimit    int64         // a message beyond this closes the connection; default 4 x MaxMessage
	PingInterval time.Duration // default 10 s
	PongWait     time.Duration // silence after which the peer is dead; default 3 x PingInterval
	WriteTimeout time.Duration // default 10 s
	CloseWait    time.Duration // how long Close waits for the peer's close frame; default 1 s
	Logger       *slog.Logger
	// VerifyKey checks the key of a wss:// peer during the TLS handshake,
	// before a byte of HTTP is sent; a board's certificate is self-signed,
	// so Dial refuses wss:// without it. It may only record the key for a
	// check made later, once the board has also signed its session.
	VerifyKey func(ed25519.PublicKey) error
	// Authorize, when set, is asked on a wss:// dial without a token,
	// after the TLS handshake (and VerifyKey) and before the upgrade is
	// written, for a token to present on the upgrade as a Bearer; "" sends
	// none. It is never asked on ws://, where nothing has shown yet who
	// answers.
	Authorize func(tls.ConnectionState) string
	// Header holds Dial's own headers for the upgrade request: what a
	// protocol negotiates on the upgrade (protocol.md 2.7). Never a token.
	Header http.Header
	// NetDialContext, when set, opens Dial's TCP connection (a source
	// address of one's choosing, a route of one's own).
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// ReadBufferSize is Dial's read buffer (default 16 KiB). A host that
	// holds many mostly idle links (the lab service) takes a small one:
	// a message larger than the buffer is read past it, not through it.
	ReadBufferSize int
}

func (c Config) withDefaults() Config {
	if c.MaxMessage <= 0 {
		c.MaxMessage = proto.MaxMessage
	}
	if c.HardLimit <= 0 {
		c.HardLimit = 4 * int64(c.MaxMessage)
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 10 * time.Second
	}
	if c.PongWait <= 0 {
		c.PongWait = 3 * c.PingInterval
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.CloseWait <= 0 {
		c.CloseWait = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ReadBufferSize <= 0 {
		c.ReadBufferSize = readBufferSize
	}
	return c
}

// Link is a transport.Link over one WebSocket connection.
type Link struct {
	ws  *websocket.Conn
	cfg Config
	// wsem is held by the goroutine writing a message: the caller's
	// own, so a message costs no hand-off to a writer goroutine and back
	// (two wake-ups per 64 KiB of a transfer). Pings and the close frame
	// go out with WriteControl, which may run beside it.
	wsem     chan struct{}
	closing  chan struct{}
	readDone chan struct{}
	stopped  chan struct{} // the ping loop has exited, the close handshake done
	// pong holds the payload of the last ping the reader saw, for the
	// ping loop to answer (see newLink).
	pong     chan string
	once     sync.Once
	readOnce sync.Once
	mu       sync.Mutex
	err      error
	sizeHint int // the reader's guess at the next message's size
	peer     Peer
	// torn: a write failed (timed out), and may have left part of a TLS
	// record on the wire. See finish.
	torn atomic.Bool
	// batch gathers a large message's TLS records into one write (nil:
	// not TLS, or a connection not made by Dial or a BatchListener).
	batch *batchConn
}

// Peer is the other end of a link as the HTTP exchange showed it.
type Peer struct {
	// Addr is the remote address.
	Addr string
	// TLS is the TLS state of a wss:// link (on the dialing side, the
	// board's certificate is in PeerCertificates); nil for ws://.
	TLS *tls.ConnectionState
	// Info is what the Server's Check said of the request.
	Info any
	// Sent and Answered are, on the dialing side, the upgrade's own
	// headers (Config.Header) and the headers of the agent's 101 answer.
	Sent, Answered http.Header
}

// Peer describes the other end.
func (l *Link) Peer() Peer { return l.peer }

var _ transport.Link = (*Link)(nil)

// Buffer sizes. A write buffer holds a whole stream chunk (64 KiB, see
// transport.Conn) plus its headers, so each goes out in one frame and one
// write; buffers are pooled between connections, since a dispatcher may
// hold a thousand idle ones.
const (
	readBufferSize  = 16 << 10
	writeBufferSize = 64<<10 + 64
	// maxHint is the buffer a message read starts with after a stream
	// chunk: a whole chunk and its header. bulkHint is the same for a
	// transfer's larger frames (proto.MaxBulkFrame).
	maxHint  = 64<<10 + 64
	bulkHint = proto.MaxBulkFrame + 64
)

var writeBuffers sync.Pool

// readBuffers are message buffers of maxHint bytes, bulkBuffers of
// bulkHint, given back by Recycle: a bulk transfer reads every frame into
// one of them instead of a new buffer each (an allocation, its zeroing
// and its garbage per frame).
var readBuffers, bulkBuffers sync.Pool

// Recycle takes back a message ReadMessage returned, once nothing holds
// on to it; the next bulk message may be read into it.
func (l *Link) Recycle(msg []byte) {
	if p := pool(cap(msg)); p != nil {
		msg = msg[:0]
		p.Put(&msg)
	}
}

// pool is the pool of buffers of capacity n, if any.
func pool(n int) *sync.Pool {
	switch n {
	case maxHint:
		return &readBuffers
	case bulkHint:
		return &bulkBuffers
	}
	return nil
}

// messageBuffer is an empty buffer to read a message of about hint bytes
// into.
func messageBuffer(hint int) []byte {
	if p := pool(hint); p != nil {
		if b, ok := p.Get().(*[]byte); ok {
			return *b
		}
	}
	return make([]byte, 0, max(hint, 512))
}

// nextHint guesses the size of the message after one of n bytes read into
// a buffer of c: a transfer's frames come in a row.
func nextHint(n, c int) int {
	if n > maxHint {
		return bulkHint
	}
	return min(c, maxHint)
}

// readAll is io.ReadAll into b: bulk data arrives as messages of one
// size, and growing each from 512 bytes costs more than the copy.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

func newLink(ws *websocket.Conn, cfg Config) *Link {
	cfg = cfg.withDefaults()
	l := &Link{ws: ws, cfg: cfg, wsem: make(chan struct{}, 1),
		closing: make(chan struct{}), readDone: make(chan struct{}), stopped: make(chan struct{}),
		pong: make(chan string, 1), batch: batcher(ws)}
	ws.SetReadLimit(cfg.HardLimit)
	alive := func(string) error { return ws.SetReadDeadline(time.Now().Add(cfg.PongWait)) }
	_ = alive("")
	ws.SetPongHandler(alive)
	// gorilla's own ping handler writes the pong in the reader, and gives
	// up on it silently after one second: behind a long write on a loaded
	// host the peer then misses its pongs and drops a live link. The ping
	// loop writes it instead, bounded by WriteTimeout as any write, and
	// the reader never waits on the writer. An unanswered ping is replaced
	// by a newer one: a pong for the last is enough (RFC 6455 5.5.3).
	ws.SetPingHandler(func(payload string) error {
		select {
		case <-l.pong:
		default:
		}
		l.pong <- payload
		return alive(payload)
	})
	go l.pingLoop()
	return l
}

// ReadMessage returns the next message. An oversized one is drained and
// reported as transport.ErrTooLarge; the link stays usable.
func (l *Link) ReadMessage() (transport.MessageType, []byte, error) {
	t, r, err := l.ws.NextReader()
	if err != nil {
		return 0, nil, l.readFailed(err)
	}
	_ = l.ws.SetReadDeadline(time.Now().Add(l.cfg.PongWait))
	data, err := readAll(io.LimitReader(r, int64(l.cfg.MaxMessage)+1), messageBuffer(l.sizeHint))
	l.sizeHint = nextHint(len(data), cap(data))
	if err != nil {
		return 0, nil, l.readFailed(err)
	}
	if len(data) > l.cfg.MaxMessage {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return 0, nil, l.readFailed(err)
		}
		return 0, nil, fmt.Errorf("%w: over %d bytes", transport.ErrTooLarge, l.cfg.MaxMessage)
	}
	return transport.MessageType(t), data, nil
}

func (l *Link) readFailed(err error) error {
	l.readOnce.Do(func() { close(l.readDone) })
	if websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) {
		err = fmt.Errorf("%w: peer closed the connection", transport.ErrClosed)
	} else {
		err = fmt.Errorf("websocket read: %w", err)
	}
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	l.startClose()
	return err
}

// WriteMessage writes p as one message, once the messages before it are
// written.
func (l *Link) WriteMessage(ctx context.Context, t transport.MessageType, p []byte) error {
	return l.writeParts(ctx, int(t), p)
}

// WriteMessageParts writes parts as one message, with no copy into one
// buffer first: a stream frame's header and its payload.
func (l *Link) WriteMessageParts(ctx context.Context, t transport.MessageType, parts ...[]byte) error {
	return l.writeParts(ctx, int(t), parts...)
}

// writeParts waits for its turn (or ctx, or the link closing) and writes
// the message in the caller's goroutine; the write itself is bounded by
// WriteTimeout.
func (l *Link) writeParts(ctx context.Context, t int, parts ...[]byte) error {
	select {
	case l.wsem <- struct{}{}:
	case <-l.closing:
		return l.closedErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-l.wsem }()
	select {
	case <-l.closing:
		return l.closedErr()
	default:
	}
	_ = l.ws.SetWriteDeadline(time.Now().Add(l.cfg.WriteTimeout))
	err := l.write(t, parts)
	if err != nil {
		l.torn.Store(true)
		l.startClose()
		return fmt.Errorf("websocket write: %w", err)
	}
	return nil
}

// write writes parts on the WebSocket as one message; a large one on a
// TLS link in one write of the connection beneath (see batchConn).
func (l *Link) write(t int, parts [][]byte) error {
	size := 0
	for _, p := range parts {
		size += len(p)
	}
	if l.batch == nil || size < batchMin {
		return l.writeWS(t, parts)
	}
	l.batch.begin()
	err := l.writeWS(t, parts)
	if ferr := l.batch.end(); err == nil {
		err = ferr
	}
	return err
}

func (l *Link) writeWS(t int, parts [][]byte) error {
	if len(parts) == 1 {
		return l.ws.WriteMessage(t, parts[0])
	}
	w, err := l.ws.NextWriter(t)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			w.Close()
			return err
		}
	}
	return w.Close()
}

func (l *Link) closedErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	return transport.ErrClosed
}

// pingLoop pings the peer while the link is open, then closes it.
func (l *Link) pingLoop() {
	defer close(l.stopped)
	ping := time.NewTicker(l.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ping.C:
			l.control(websocket.PingMessage, nil)
		case p := <-l.pong:
			l.control(websocket.PongMessage, []byte(p))
		case <-l.closing:
			l.finish()
			return
		}
	}
}

// control writes a ping or a pong within WriteTimeout; one that fails
// ends the link, as a message's write does. After a close frame (the
// reader answers the peer's) nothing more is due.
func (l *Link) control(t int, payload []byte) {
	err := l.ws.WriteControl(t, payload, time.Now().Add(l.cfg.WriteTimeout))
	if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
		l.cfg.Logger.Debug("websocket control frame not written", "type", t, "err", err)
		l.torn.Store(true)
		l.startClose()
	}
}

// finish runs the close handshake: send our close frame, give the peer
// CloseWait to answer (the reader sees its frame), then drop the socket.
func (l *Link) finish() {
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if err := l.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(l.cfg.WriteTimeout)); err != nil {
		l.torn.Store(true)
	}
	t := time.NewTimer(l.cfg.CloseWait)
	defer t.Stop()
	select {
	case <-l.readDone:
	case <-t.C:
	}
	if l.torn.Load() {
		_ = Abort(l.ws)
		return
	}
	_ = l.ws.Close()
}

func (l *Link) startClose() {
	l.once.Do(func() { close(l.closing) })
}

// Close performs the close handshake (bounded by CloseWait) and releases
// the connection. It is idempotent.
func (l *Link) Close() error {
	l.startClose()
	<-l.stopped
	return nil
}

// Abort closes ws after one of its writes failed. A write that timed out
// may have left half a TLS record on the wire, and TLS's Close would
// still send its close_notify alert behind it: the peer reads the two as
// one corrupt record and reports "tls: bad record MAC", as if the stream
// had been tampered with. Under TLS, Abort drops the TCP connection
// beneath instead, so the peer sees what happened: the connection ended
// mid-message. Without TLS it is ws.Close.
func Abort(ws *websocket.Conn) error {
	if tc, ok := ws.NetConn().(*tls.Conn); ok {
		err := tc.NetConn().Close()
		_ = ws.Close() // releases TLS's side; its alert finds the socket closed
		return err
	}
	return ws.Close()
}
