package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/boardlink/boardlink/proto"
)

// StreamError is how a stream ends when the peer reset it.
type StreamError struct {
	Stream uint32
	Reason string
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("stream %d reset by peer: %s", e.Stream, e.Reason)
}

// errStreamClosed is returned for operations on a stream closed locally.
var errStreamClosed = errors.New("stream closed")

// Stream is one flow-controlled byte stream in each direction. Reads and
// writes may run concurrently with each other; concurrent Writes are
// serialized.
type Stream struct {
	c   *Conn
	id  uint32
	ctx context.Context // canceled when the stream ends, so blocked writes return
	end context.CancelFunc

	writeMu sync.Mutex // keeps one Write's chunks together and in order

	mu       sync.Mutex
	readable chan struct{} // signaled on data, FIN or failure
	writable chan struct{} // signaled on credit or failure
	buf      []chunk       // data received, not yet read
	size     int           // the window the peer is granted in all: StreamWindow, or more (Grow)
	grown    int           // what Grow added to size, counted in Conn.grown
	window   int           // bytes the peer may still send us
	unacked  int           // bytes read but not yet granted back as credit
	finIn    bool
	finOut   bool
	credit   int // bytes we may still send
	chunk    int // the most data one frame carries: the connection's, or SetChunk's
	err      error
}

func (c *Conn) newStream(id uint32) *Stream {
	ctx, cancel := context.WithCancel(c.ctx)
	return &Stream{c: c, id: id, ctx: ctx, end: cancel,
		readable: make(chan struct{}, 1), writable: make(chan struct{}, 1),
		size: proto.StreamWindow, window: proto.StreamWindow, credit: proto.StreamWindow, chunk: c.chunk}
}

// SetChunk sets the most data one frame of s carries to n, as the
// peer's reader asked for a bulk transfer (proto.MaxBulkFrame at most),
// unless the link wants smaller pieces (ChunkSizer) or n is not positive.
// Call it before the first Write.
func (s *Stream) SetChunk(n int) {
	if _, sized := s.c.link.(ChunkSizer); sized || n <= 0 {
		return
	}
	s.writeMu.Lock()
	s.chunk = min(n, proto.MaxBulkFrame)
	s.writeMu.Unlock()
}

// Grow lets the peer send up to n more bytes ahead of what this side has
// read, for a bulk transfer: a larger window keeps the data flowing while
// this side is busy (a write to disk, a descheduled reader). The whole
// window may be held in memory, so the connection's streams grow by
// Config.MaxGrow in all: beyond it a stream keeps the window it has.
func (s *Stream) Grow(n int) {
	c := s.c
	c.mu.Lock()
	n = min(n, c.cfg.MaxGrow-c.grown)
	if n <= 0 || c.streams[s.id] != s {
		c.mu.Unlock()
		return
	}
	s.mu.Lock()
	open := s.err == nil && !s.finIn
	if open {
		s.size += n
		s.window += n
		s.grown += n
		c.grown += n
	}
	s.mu.Unlock()
	c.mu.Unlock()
	if open {
		c.queueCredit(s, n)
	}
}

// OpenStream opens a stream with a fresh local id, ready to receive at once.
// Name its id in a request; write to it only after the response. Beyond
// Config.MaxStreams it fails with a *proto.Error of reason busy.
func (c *Conn) OpenStream() (*Stream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	if err := c.roomLocked(); err != nil {
		return nil, err
	}
	id := c.nextOpen
	c.nextOpen += 2
	s := c.newStream(id)
	c.streams[id] = s
	return s, nil
}

// AttachStream takes up a stream the peer opened and named in a request.
// Its errors are *proto.Error: invalid_params for an id the peer could not
// have opened or one in use, busy beyond Config.MaxStreams.
func (c *Conn) AttachStream(id uint32) (*Stream, error) {
	if id == 0 || (id%2 == 1) == c.cfg.Client {
		return nil, proto.Errorf(proto.ReasonInvalidParams, "stream %d was not opened by the peer", id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	if _, taken := c.streams[id]; taken {
		return nil, proto.Errorf(proto.ReasonInvalidParams, "stream %d is already in use", id)
	}
	if err := c.roomLocked(); err != nil {
		return nil, err
	}
	s := c.newStream(id)
	c.streams[id] = s
	return s, nil
}

// roomLocked refuses one more stream beyond MaxStreams. Streams reset here
// count until the writer takes their RST, which bounds the queue of those
// RSTs.
func (c *Conn) roomLocked() error {
	if n := len(c.streams) + len(c.resets); n >= c.cfg.MaxStreams {
		return proto.Errorf(proto.ReasonBusy, "%d streams open on this connection, the limit (%d)", n, c.cfg.MaxStreams)
	}
	return nil
}

// ID returns the stream id, as named in requests.
func (s *Stream) ID() uint32 { return s.id }

// signal wakes a blocked Read and a blocked Write; a spurious wake-up only
// makes them look again.
func (s *Stream) signal() {
	for _, ch := range []chan struct{}{s.readable, s.writable} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Read reads data the peer sent; io.EOF after the peer's FIN.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		s.mu.Lock()
		if len(s.buf) > 0 {
			n := copy(p, s.buf[0].data)
			if n == len(s.buf[0].data) {
				s.c.recycle(s.buf[0].msg)
				s.buf[0] = chunk{}
				s.buf = s.buf[1:]
			} else {
				s.buf[0].data = s.buf[0].data[n:]
			}
			s.consumedLocked(n)
			return n, nil
		}
		if err := s.endLocked(); err != nil {
			return 0, err
		}
		<-s.readable
	}
}

// WriteTo writes what the peer sends to w, each frame's payload as it
// came, until the peer's FIN (nil, as io.Copy takes it) or an error: a
// bulk copy out of the stream (a pull) writes the link's buffers in place
// instead of copying them into its own first. It makes Stream an
// io.WriterTo, which io.Copy uses.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var written int64
	for {
		s.mu.Lock()
		if len(s.buf) == 0 {
			switch err := s.endLocked(); err {
			case nil:
				<-s.readable
				continue
			case io.EOF:
				return written, nil
			default:
				return written, err
			}
		}
		c := s.buf[0]
		s.buf[0] = chunk{}
		s.buf = s.buf[1:]
		s.mu.Unlock()
		n, err := w.Write(c.data)
		written += int64(n)
		s.c.recycle(c.msg) // w keeps nothing of it (io.Writer's rule)
		s.mu.Lock()
		s.consumedLocked(len(c.data))
		if err == nil && n < len(c.data) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return written, err
		}
	}
}

// consumedLocked counts n bytes read out of the stream and grants the
// peer credit back, in batches rather than per read; it unlocks s.mu.
func (s *Stream) consumedLocked(n int) {
	s.unacked += n
	grant := 0
	if s.unacked >= s.size/4 || (len(s.buf) == 0 && s.unacked >= s.size/16) {
		grant, s.unacked = s.unacked, 0
		s.window += grant
	}
	open := s.err == nil && !s.finIn
	s.mu.Unlock()
	if grant > 0 && open {
		s.c.queueCredit(s, grant)
	}
}

// endLocked is why a read of s finds nothing more, io.EOF after the
// peer's FIN, or nil while more may come; it unlocks s.mu.
func (s *Stream) endLocked() error {
	defer s.mu.Unlock()
	switch {
	case s.finIn:
		return io.EOF
	case s.err != nil:
		return s.err
	}
	return nil
}

// Write sends p, waiting for credit as the peer's reader consumes data.
func (s *Stream) Write(p []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	written := 0
	for written < len(p) {
		s.mu.Lock()
		for s.credit == 0 && s.err == nil && !s.finOut {
			s.mu.Unlock()
			select {
			case <-s.writable:
			case <-s.ctx.Done():
			}
			s.mu.Lock()
			if s.ctx.Err() != nil && s.err == nil {
				s.err = errStreamClosed
			}
		}
		if s.err != nil || s.finOut {
			err := s.err
			if err == nil {
				err = errStreamClosed
			}
			s.mu.Unlock()
			return written, err
		}
		n := min(len(p)-written, s.credit, s.chunk)
		s.credit -= n
		s.mu.Unlock()
		if err := s.writeData(p[written : written+n]); err != nil {
			return written, s.c.linkErr(err)
		}
		s.c.bytesOut.Add(int64(n))
		written += n
	}
	return written, nil
}

// chunk is a DATA frame's payload not yet read, and the message that
// holds it, handed back to the link once read (recycler).
type chunk struct{ data, msg []byte }

// recycler is a link that reuses the buffers of the messages it read
// (the WebSocket link): a bulk transfer then allocates no buffer per frame.
type recycler interface {
	Recycle(msg []byte)
}

// recycle hands msg back to the link, which may read the next message
// into it: nothing may hold on to it.
func (c *Conn) recycle(msg []byte) {
	if r, ok := c.link.(recycler); ok {
		r.Recycle(msg)
	}
}

// partsWriter is a link that writes a message given in parts (the
// WebSocket link, which copies them into its write buffer anyway): a data
// frame then costs no buffer of its own and no copy of its payload.
type partsWriter interface {
	WriteMessageParts(ctx context.Context, t MessageType, parts ...[]byte) error
}

// writeData sends data in one DATA frame.
func (s *Stream) writeData(data []byte) error {
	if pw, ok := s.c.link.(partsWriter); ok {
		var hdr [proto.StreamHeaderLen]byte
		return pw.WriteMessageParts(s.ctx, Binary, proto.AppendStreamFrame(hdr[:0], proto.FrameData, s.id, nil), data)
	}
	frame := proto.AppendStreamFrame(make([]byte, 0, proto.StreamHeaderLen+len(data)), proto.FrameData, s.id, data)
	return s.c.link.WriteMessage(s.ctx, Binary, frame)
}

// CloseWrite sends FIN: the peer reads EOF after the data already written.
func (s *Stream) CloseWrite() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if s.finOut || s.err != nil {
		s.mu.Unlock()
		return nil
	}
	s.finOut = true
	done := s.finIn
	s.mu.Unlock()
	err := s.c.link.WriteMessage(s.c.ctx, Binary, proto.AppendStreamFrame(nil, proto.FrameFin, s.id, nil))
	if done {
		s.c.forget(s)
	}
	if err != nil {
		return s.c.linkErr(err)
	}
	return nil
}

// Close ends the stream both ways: FIN for our side, and whatever the peer
// still sends is refused (it sees a reset).
func (s *Stream) Close() error {
	err := s.CloseWrite()
	s.fail(errStreamClosed)
	s.c.forget(s)
	return err
}

// Reset aborts the stream and tells the peer why. It does not wait for
// the line: the connection's writer sends the RST.
func (s *Stream) Reset(reason string) {
	s.fail(&StreamError{Stream: s.id, Reason: "reset locally: " + reason})
	c := s.c
	c.mu.Lock()
	forgotten := c.forgetLocked(s)
	if forgotten {
		c.resets = append(c.resets, proto.AppendStreamFrame(nil, proto.FrameReset, s.id, []byte(reason)))
	}
	c.mu.Unlock()
	if forgotten {
		c.kick()
	}
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		s.buf = nil
	}
	s.mu.Unlock()
	s.end()
	s.signal()
}

// forget removes s from the connection's table; it reports whether s was
// still there.
func (c *Conn) forget(s *Stream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forgetLocked(s)
}

// forgetLocked is forget with c.mu held. Credit not yet granted goes too:
// the stream takes no more data.
func (c *Conn) forgetLocked(s *Stream) bool {
	if c.streams[s.id] != s {
		return false
	}
	delete(c.streams, s.id)
	delete(c.credits, s.id)
	s.mu.Lock()
	c.grown -= s.grown
	s.grown = 0
	s.mu.Unlock()
	return true
}

// queueCredit grants the peer n more bytes on s, added to any grant not
// yet sent, unless s has left the table.
func (c *Conn) queueCredit(s *Stream, n int) {
	c.mu.Lock()
	open := c.streams[s.id] == s
	if open {
		c.credits[s.id] += n
	}
	c.mu.Unlock()
	if open {
		c.kick()
	}
}

// kick wakes the writer; a wake-up already pending covers this one.
func (c *Conn) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeControl writes the control frames waiting, until none is left.
func (c *Conn) writeControl() error {
	for {
		frame := c.nextControl()
		if frame == nil {
			return nil
		}
		if err := c.link.WriteMessage(c.ctx, Binary, frame); err != nil {
			return c.linkErr(err)
		}
	}
}

// nextControl takes a control frame to write from the queues: credit
// first, since a sender waits for it, then resets, then RSTs for strays.
func (c *Conn) nextControl() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, n := range c.credits { // any one
		delete(c.credits, id)
		return proto.CreditFrame(id, uint32(n))
	}
	if len(c.resets) > 0 {
		f := c.resets[0]
		c.resets[0] = nil
		c.resets = c.resets[1:]
		return f
	}
	for id := range c.strays { // any one
		delete(c.strays, id)
		return proto.AppendStreamFrame(nil, proto.FrameReset, id, []byte(proto.ReasonNotFound))
	}
	return nil
}

func (c *Conn) handleFrame(data []byte) {
	f, err := proto.DecodeStreamFrame(data)
	if err != nil {
		c.log.Debug("bad stream frame", "err", err)
		c.reply(proto.NewErrorResponse(nil, proto.Errorf(proto.ReasonInvalidRequest, "%v", err)))
		return
	}
	c.mu.Lock()
	s := c.streams[f.Stream]
	stray := s == nil && f.Kind == proto.FrameData && len(c.strays) < maxStrays
	if stray {
		c.strays[f.Stream] = struct{}{} // one RST per id, however many frames
	}
	c.mu.Unlock()
	if s == nil {
		if stray {
			c.kick()
		}
		return // credit, FIN or RST for a stream already gone: nothing to do
	}
	switch f.Kind {
	case proto.FrameData:
		s.mu.Lock()
		if s.err != nil || s.finIn {
			s.mu.Unlock()
			return
		}
		if len(f.Payload) > s.window {
			s.mu.Unlock()
			s.Reset("flow_control: data beyond the granted window")
			return
		}
		s.window -= len(f.Payload)
		c.bytesIn.Add(int64(len(f.Payload)))
		if len(f.Payload) > 0 {
			s.buf = append(s.buf, chunk{data: f.Payload, msg: data})
		}
		s.mu.Unlock()
	case proto.FrameCredit:
		s.mu.Lock()
		s.credit += int(f.Credit())
		s.mu.Unlock()
	case proto.FrameFin:
		s.mu.Lock()
		s.finIn = true
		done := s.finOut
		s.mu.Unlock()
		if done {
			c.forget(s)
		}
	case proto.FrameReset:
		s.fail(&StreamError{Stream: s.id, Reason: string(f.Payload)})
		c.forget(s)
	}
	s.signal()
}
