package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// Request is an incoming request or notification.
type Request struct {
	Method       string
	Params       json.RawMessage
	Notification bool
	// AfterReply, when a handler sets it, runs once the answer has been
	// written to the link (or failed to be): for work that must not begin
	// before the peer can have the answer, such as a reboot.
	AfterReply func()

	flushed chan struct{} // not a notification: SyncNotes's marker
}

// Handler serves incoming requests and notifications. Requests run each in
// their own goroutine, so a slow one never delays another; ctx is canceled
// when the connection closes. Notifications run in arrival order on one
// goroutine and must not wait on the connection. A returned error that is
// not a *proto.Error is sent as reason internal.
type Handler interface {
	Handle(ctx context.Context, c *Conn, req *Request) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, c *Conn, req *Request) (any, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, c *Conn, req *Request) (any, error) {
	return f(ctx, c, req)
}

// Config configures a Conn.
type Config struct {
	// Handler serves the peer's requests; nil answers every request with
	// method_not_found.
	Handler Handler
	// Client is true on the side that dialed; it opens odd stream ids, the
	// other side even ones.
	Client bool
	// MaxInflight bounds the peer's concurrently served requests; one more
	// is answered busy at once. Default 256.
	MaxInflight int
	// MaxStreams bounds the streams open at once on the connection, those
	// either side opened together, and those reset here whose RST waits to
	// be written; OpenStream and AttachStream beyond it fail busy.
	// Default 256.
	MaxStreams int
	// MaxGrow bounds the bytes Stream.Grow may add to the windows of the
	// connection's streams together, since the peer may fill them all:
	// the streams beyond it keep proto.StreamWindow. Default 8 MiB.
	MaxGrow int
	Logger  *slog.Logger
}

// Defaults of Config.
const (
	defaultMaxInflight = 256
	defaultMaxStreams  = 256
	defaultMaxGrow     = 8 << 20
)

// maxChunk is the most stream data one frame carries: each frame costs a
// message, a write and a wake-up on either end, so a bulk transfer wants
// few of them, while a frame on the line delays the control messages
// behind it by its length. A link that wants less says so (ChunkSizer).
const maxChunk = 64 << 10

// maxStrays bounds the RSTs for DATA on unknown streams waiting to be
// sent. Such an RST only tells a peer that it wrote too soon or too late,
// so beyond this bound they are dropped: a peer that floods cannot grow
// what the connection holds.
const maxStrays = 64

// Conn multiplexes JSON-RPC calls, notifications and byte streams over one
// Link. It is safe for concurrent use.
type Conn struct {
	link     Link
	cfg      Config
	log      *slog.Logger
	chunk    int
	inflight chan struct{}
	notes    chan *Request
	replies  chan *proto.Message // answers the reader queues for the writer
	wake     chan struct{}       // tells the writer that control frames wait

	ctx        context.Context
	cancel     context.CancelCauseFunc
	start      sync.Once
	notesStart sync.Once // the notification loop runs from the first notification
	closed     sync.Once
	done       chan struct{}

	nextID   atomic.Uint64
	bytesIn  atomic.Int64 // stream payload bytes received
	bytesOut atomic.Int64 // stream payload bytes sent
	mu       sync.Mutex
	pending  map[uint64]chan *proto.Message
	streams  map[uint32]*Stream
	nextOpen uint32
	err      error
	// Control frames waiting for the writer, so that neither the reader
	// nor a Read waits on the line. Each is bounded: credits by the open
	// streams, resets by MaxStreams (they count against it), strays by
	// maxStrays.
	credits map[uint32]int      // credit to grant per open stream, coalesced
	resets  [][]byte            // RST frames for streams reset here
	strays  map[uint32]struct{} // ids of unknown streams that sent DATA
	grown   int                 // window bytes Grow added to open streams, within MaxGrow
}

// NewConn wraps link. It starts nothing: call Start.
func NewConn(link Link, cfg Config) *Conn {
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = defaultMaxInflight
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = defaultMaxStreams
	}
	if cfg.MaxGrow <= 0 {
		cfg.MaxGrow = defaultMaxGrow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	chunk := maxChunk
	if cs, ok := link.(ChunkSizer); ok && cs.MaxChunk() > 0 {
		chunk = min(cs.MaxChunk(), chunk)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	c := &Conn{
		link: link, cfg: cfg, log: cfg.Logger, chunk: chunk,
		inflight: make(chan struct{}, cfg.MaxInflight),
		notes:    make(chan *Request, 256),
		replies:  make(chan *proto.Message, 64),
		wake:     make(chan struct{}, 1),
		ctx:      ctx, cancel: cancel, done: make(chan struct{}),
		pending: map[uint64]chan *proto.Message{},
		streams: map[uint32]*Stream{},
		credits: map[uint32]int{},
		strays:  map[uint32]struct{}{},
	}
	c.nextOpen = 2
	if cfg.Client {
		c.nextOpen = 1
	}
	return c
}

// Start runs the connection's reader and its helpers until the link fails
// or Close is called. It does not block.
func (c *Conn) Start() {
	c.start.Do(func() {
		go c.readLoop()
		go c.writeLoop()
	})
}

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Context is canceled when the connection ends; its cause is Err.
func (c *Conn) Context() context.Context { return c.ctx }

// Stats counts the stream payload bytes that crossed the link.
type Stats struct {
	StreamBytesIn  int64 `json:"stream_bytes_in"`
	StreamBytesOut int64 `json:"stream_bytes_out"`
}

// Stats returns the connection's byte counts so far.
func (c *Conn) Stats() Stats {
	return Stats{StreamBytesIn: c.bytesIn.Load(), StreamBytesOut: c.bytesOut.Load()}
}

// Err returns why the connection ended (wrapping ErrClosed), or nil.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection and the link. Pending calls fail with ErrClosed.
func (c *Conn) Close() error {
	c.shutdown(nil)
	return nil
}

func (c *Conn) shutdown(cause error) {
	c.closed.Do(func() {
		err := ErrClosed
		if cause != nil && !errors.Is(cause, ErrClosed) {
			err = fmt.Errorf("%w: %w", ErrClosed, cause)
		} else if cause != nil {
			err = cause
		}
		c.mu.Lock()
		c.err = err
		pending := c.pending
		c.pending = map[uint64]chan *proto.Message{}
		streams := c.streams
		c.streams = map[uint32]*Stream{}
		c.mu.Unlock()
		c.cancel(err)
		_ = c.link.Close()
		for _, ch := range pending {
			close(ch)
		}
		for _, s := range streams {
			s.fail(err)
		}
		close(c.done)
	})
}

func (c *Conn) readLoop() {
	for {
		t, data, err := c.link.ReadMessage()
		switch {
		case errors.Is(err, ErrTooLarge):
			c.reply(proto.NewErrorResponse(nil, proto.Errorf(proto.ReasonTooLarge, "message too large: discarded")))
			continue
		case err != nil:
			c.shutdown(err)
			return
		}
		if t == Binary {
			c.handleFrame(data)
		} else {
			c.handleText(data)
		}
	}
}

// reply queues an answer the reader owes (busy, a decoding error) for the
// writer. Every request gets its answer, so when the queue is full the
// reader waits: a peer that sends faster than it reads its answers is held
// to its own pace, and one that never reads them is cut off by the link's
// write timeout.
func (c *Conn) reply(m *proto.Message) {
	select {
	case c.replies <- m:
	case <-c.done:
	}
}

// writeLoop writes what the reader and Read hand off: control frames
// first, then queued answers.
func (c *Conn) writeLoop() {
	for {
		if err := c.writeControl(); err != nil {
			return
		}
		select {
		case m := <-c.replies:
			if err := c.send(c.ctx, m); err != nil {
				return
			}
		case <-c.wake:
		case <-c.done:
			return
		}
	}
}

// SyncNotes returns once every notification that arrived before it was
// called has been handled, or ctx or the connection ended. A caller that
// subscribes to a request's notifications (progress) calls it after the
// answer: the notifications the peer sent before answering are then
// handled, not dropped by an unsubscribe that came first.
func (c *Conn) SyncNotes(ctx context.Context) {
	c.notesStart.Do(func() { go c.noteLoop() })
	mark := &Request{flushed: make(chan struct{})}
	select {
	case c.notes <- mark:
	case <-ctx.Done():
		return
	case <-c.done:
		return
	}
	select {
	case <-mark.flushed:
	case <-ctx.Done():
	case <-c.done:
	}
}

func (c *Conn) noteLoop() {
	for {
		select {
		case r := <-c.notes:
			if r.flushed != nil {
				close(r.flushed)
				continue
			}
			if c.cfg.Handler != nil {
				if _, err := c.cfg.Handler.Handle(c.ctx, c, r); err != nil {
					c.log.Debug("notification handler", "method", r.Method, "err", err)
				}
			}
		case <-c.done:
			return
		}
	}
}

func (c *Conn) handleText(data []byte) {
	m, err := proto.Decode(data)
	if err != nil {
		var de *proto.DecodeError
		if errors.As(err, &de) {
			c.reply(proto.NewErrorResponse(de.ID, de.Err))
		}
		return
	}
	switch m.Kind() {
	case proto.KindResponse:
		c.deliver(m)
	case proto.KindNotification:
		// Started here, not in Start: most connections of a host that holds
		// many (the lab service's heartbeats) never get one.
		c.notesStart.Do(func() { go c.noteLoop() })
		select {
		case c.notes <- &Request{Method: m.Method, Params: m.Params, Notification: true}:
		case <-c.done:
		}
	case proto.KindRequest:
		select {
		case c.inflight <- struct{}{}:
			go c.serve(m)
		default:
			c.reply(proto.NewErrorResponse(m.ID, proto.Errorf(proto.ReasonBusy,
				"too many requests in flight (%d)", c.cfg.MaxInflight)))
		}
	}
}

func (c *Conn) serve(m *proto.Message) {
	defer func() { <-c.inflight }()
	var (
		res any
		err error
	)
	req := &Request{Method: m.Method, Params: m.Params}
	if c.cfg.Handler == nil {
		err = proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", m.Method)
	} else {
		res, err = c.cfg.Handler.Handle(c.ctx, c, req)
	}
	if req.AfterReply != nil {
		defer req.AfterReply()
	}
	var out *proto.Message
	if err == nil {
		out, err = proto.NewResponse(m.ID, res)
	}
	if err != nil {
		var pe *proto.Error
		if !errors.As(err, &pe) {
			pe = proto.Errorf(proto.ReasonInternal, "%v", err)
		}
		out = proto.NewErrorResponse(m.ID, pe)
	}
	if err := c.send(c.ctx, out); err != nil {
		c.log.Debug("send response", "method", m.Method, "err", err)
	}
}

func (c *Conn) deliver(m *proto.Message) {
	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		return // not an id we issued
	}
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- m
	}
}

func (c *Conn) send(ctx context.Context, m *proto.Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	if err := c.link.WriteMessage(ctx, Text, b); err != nil {
		return c.linkErr(err)
	}
	return nil
}

// linkErr turns a failed write into the connection's end, once.
func (c *Conn) linkErr(err error) error {
	if ctxErr := context.Cause(c.ctx); ctxErr != nil {
		return ctxErr
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	c.shutdown(err)
	return c.Err()
}

// Call sends a request and decodes its result into result (which may be
// nil). An error response comes back as a *proto.Error; a link failure as an
// error wrapping ErrClosed.
func (c *Conn) Call(ctx context.Context, method string, params, result any) error {
	start := time.Now()
	err := c.call(ctx, method, params, result)
	c.log.Debug("call", "method", method, "took", time.Since(start), "err", err)
	return err
}

func (c *Conn) call(ctx context.Context, method string, params, result any) error {
	id := c.nextID.Add(1)
	m, err := proto.NewRequest(id, method, params)
	if err != nil {
		return err
	}
	ch := make(chan *proto.Message, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}
	if err := c.send(ctx, m); err != nil {
		forget()
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("%s: %w", method, c.Err())
		}
		if r.Error != nil {
			return r.Error
		}
		if result != nil {
			if err := json.Unmarshal(r.Result, result); err != nil {
				return fmt.Errorf("%s: decode result: %w", method, err)
			}
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// Notify sends a notification.
func (c *Conn) Notify(ctx context.Context, method string, params any) error {
	m, err := proto.NewNotification(method, params)
	if err != nil {
		return err
	}
	return c.send(ctx, m)
}
