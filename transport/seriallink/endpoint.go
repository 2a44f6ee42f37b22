package seriallink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Config tunes an Endpoint. Zero fields take the defaults below; values out
// of range are clamped.
type Config struct {
	// MaxPayload is the largest DATA payload per frame, 16..4096 (default
	// 1024). On a noisy line the sender uses smaller frames on its own.
	MaxPayload int
	// Window is the number of frames in flight, and the receive buffer in
	// frames, 1..255 (default 32).
	Window int
	// RTO is the retransmission timeout until the round trip has been
	// measured, and the first SYN retry interval (default 500ms).
	RTO time.Duration
	// DeadAfter ends a session that made no progress for this long: frames
	// went unacknowledged or, when idle, keepalive probes went unanswered
	// (default 15s).
	DeadAfter time.Duration
	// MaxMessage is the largest message accepted (default proto.MaxMessage). A larger
	// one is dropped and ReadMessage reports transport.ErrTooLarge. It also
	// bounds the read queue: a session buffers at most about two such
	// messages plus its window of frames.
	MaxMessage int
	// BeaconInterval is how often an agent without a session beacons
	// (default 1s).
	BeaconInterval time.Duration
	// Beacon returns the agent's beacon payload (at most MaxPayloadLimit
	// bytes), typically JSON naming the board. Called once per beacon.
	Beacon func() []byte
	// ConsoleBuffer is the size of the console text buffer (default 64 KiB).
	ConsoleBuffer int
	// Framing is the newest framing version this end offers in its hello
	// (default and at most 2: forward error correction; 1: the original
	// framing). A session uses the older of the two ends' versions.
	Framing int
	// JSONOnly offers no compact encoding: text messages stay JSON, as
	// with an end older than it. By default an end offers
	// proto.CompactVersion in its hello and a session where the agent
	// accepts it carries text messages in that encoding.
	JSONOnly bool
	// QuietAfter is how many SYNs, retransmissions and probes in a row a
	// host sends without hearing the agent before it stops writing
	// (default 6, 1..1000). It writes again as soon as it hears the agent,
	// which beacons or probes at least every BeaconInterval; a session
	// that stays silent fails after DeadAfter as before, and Dial listens
	// before it writes. So a board that lost its power gets at most that
	// many frames (and the window's first transmissions) while it boots.
	QuietAfter int
	// DialWithoutBeacon lets Dial send its SYN without first hearing from
	// an agent. Only for lines known to carry an agent: on anything else
	// (a boot loader waiting for a key) the SYN is input.
	DialWithoutBeacon bool
	// Logger receives debug events; nil discards them.
	Logger *slog.Logger
}

// Defaults for zero Config fields.
const (
	DefaultMaxPayload     = 1024
	DefaultWindow         = 32
	DefaultRTO            = 500 * time.Millisecond
	DefaultDeadAfter      = 15 * time.Second
	DefaultMaxMessage     = proto.MaxMessage
	DefaultBeaconInterval = time.Second
	DefaultConsoleBuffer  = 64 << 10
	DefaultQuietAfter     = 6
)

func (c Config) withDefaults() Config {
	def := func(v *int, d, lo, hi int) {
		if *v == 0 {
			*v = d
		}
		*v = min(max(*v, lo), hi)
	}
	def(&c.MaxPayload, DefaultMaxPayload, minPayload, MaxPayloadLimit)
	def(&c.Window, DefaultWindow, 1, 255)
	def(&c.MaxMessage, DefaultMaxMessage, 1, 1<<30)
	def(&c.ConsoleBuffer, DefaultConsoleBuffer, 1, 1<<30)
	def(&c.Framing, maxFraming, 1, maxFraming)
	def(&c.QuietAfter, DefaultQuietAfter, 1, 1000)
	dur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	dur(&c.RTO, DefaultRTO)
	dur(&c.DeadAfter, DefaultDeadAfter)
	dur(&c.BeaconInterval, DefaultBeaconInterval)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Errors a caller may need to tell apart.
var (
	// ErrDead: the peer stopped answering for Config.DeadAfter.
	ErrDead = errors.New("seriallink: peer not responding")
	// ErrSessionReset: the peer ended the session, restarted, or a newer
	// session replaced it.
	ErrSessionReset = errors.New("seriallink: session reset")
	// ErrRole: Dial on an endpoint used with Accept, or the reverse.
	ErrRole = errors.New("seriallink: endpoint already used in the other role")
)

type role int

const (
	roleNone role = iota
	roleHost
	roleAgent
)

// ctrlFrame is a frame outside any session's flow, an RST.
type ctrlFrame struct {
	h       header
	payload []byte
	sent    chan struct{}
}

// maxCtrl bounds queued control frames; an RST storm must not grow memory.
const maxCtrl = 8

// Endpoint runs the protocol over one byte stream. It owns the stream: one
// goroutine reads it, one writes it. A host endpoint calls Dial, an agent
// endpoint Accept; both may read Console.
//
// Nothing happens until the first call to Dial, Accept, Beacon or Console,
// which start reading; an endpoint writes only once Dial has heard an agent
// (or Accept was called, which starts beaconing).
type Endpoint struct {
	rwc     io.ReadWriteCloser
	cfg     Config
	log     *slog.Logger
	stats   counters
	console *console
	parser  *parser // reader goroutine only
	fb      frameBuf

	startOnce sync.Once
	closeOnce sync.Once
	quitOnce  sync.Once
	wg        sync.WaitGroup
	quit      chan struct{} // closed by Close or a line failure
	wake      chan struct{} // pokes the writer

	mu         sync.Mutex
	role       role
	lineErr    error
	changed    chan struct{} // closed and replaced when waiters should look again
	sess       *link
	pending    *link // agent: session not yet returned by Accept
	ctrl       []ctrlFrame
	lastTag    uint16
	heard      bool   // host: a valid frame arrived since the last session ended
	beacon     []byte // host: latest beacon payload
	beacons    int
	nextBeacon time.Time
}

// NewEndpoint returns an endpoint on rwc. It starts nothing and writes
// nothing. Close of rwc must unblock a pending Read (true for net.Conn, ptys
// and ports from OpenPort).
func NewEndpoint(rwc io.ReadWriteCloser, cfg Config) *Endpoint {
	cfg = cfg.withDefaults()
	e := &Endpoint{
		rwc:     rwc,
		cfg:     cfg,
		log:     cfg.Logger,
		quit:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		changed: make(chan struct{}),
	}
	e.console = newConsole(cfg.ConsoleBuffer, &e.stats)
	e.parser = newParser(&e.stats, e.onFrame, e.console.write)
	return e
}

func (e *Endpoint) start() {
	e.startOnce.Do(func() {
		// Added under the lock shutdown takes: a Close that comes at the
		// same moment either sees the loops counted before its Wait or
		// keeps them from starting (Add racing Wait is a misuse).
		e.mu.Lock()
		closed := e.lineErr != nil
		if !closed {
			e.wg.Add(2)
		}
		e.mu.Unlock()
		if closed {
			return
		}
		go e.readLoop()
		go e.writeLoop()
	})
}

func (e *Endpoint) kick() { signal(e.wake) }

// broadcast wakes everyone in waitFor; e.mu held.
func (e *Endpoint) broadcast() {
	close(e.changed)
	e.changed = make(chan struct{})
}

func (e *Endpoint) setRole(r role) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.role != roleNone && e.role != r {
		return ErrRole
	}
	e.role = r
	return nil
}

// waitFor blocks until cond (called with e.mu held) is true.
func (e *Endpoint) waitFor(ctx context.Context, cond func() bool) error {
	for {
		e.mu.Lock()
		if err := e.lineErr; err != nil {
			e.mu.Unlock()
			return err
		}
		if cond() {
			e.mu.Unlock()
			return nil
		}
		ch := e.changed
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Console returns the console text: the bytes on the line outside frames.
// The buffer keeps the newest Config.ConsoleBuffer bytes; after Close, or
// once the line ends under it, the reader drains it and gets io.EOF. Use
// one reader.
func (e *Endpoint) Console() io.Reader {
	e.start()
	return e.console
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() Stats { return e.stats.snapshot() }

// Beacon waits for an agent's beacon on the line and returns its payload
// (the latest one if several were heard). It never writes.
func (e *Endpoint) Beacon(ctx context.Context) ([]byte, error) {
	e.start()
	var b []byte
	err := e.waitFor(ctx, func() bool {
		b = bytes.Clone(e.beacon)
		return e.beacons > 0
	})
	if err != nil {
		return nil, fmt.Errorf("seriallink: waiting for a beacon: %w", err)
	}
	return b, nil
}

// Dial opens a session to the agent (host side). Unless
// Config.DialWithoutBeacon is set, it first waits, listening only, until a
// beacon or another valid frame shows an agent on the line. A session this
// endpoint had before is reset.
func (e *Endpoint) Dial(ctx context.Context) (transport.Link, error) {
	if err := e.setRole(roleHost); err != nil {
		return nil, err
	}
	e.start()
	if !e.cfg.DialWithoutBeacon {
		if err := e.waitFor(ctx, func() bool { return e.heard }); err != nil {
			return nil, fmt.Errorf("seriallink: dial: waiting for an agent: %w", err)
		}
	}
	e.mu.Lock()
	if err := e.lineErr; err != nil {
		e.mu.Unlock()
		return nil, fmt.Errorf("seriallink: dial: %w", err)
	}
	if old := e.sess; old != nil { // its RST goes out before our SYN
		if !old.quiet() {
			e.queueCtrl(header{typ: typeRst, tag: old.tag}, []byte{rstClosed})
		}
		old.fail(fmt.Errorf("%w: redialed", ErrSessionReset))
	}
	tag := e.lastTag
	for tag == 0 || tag == e.lastTag {
		tag = uint16(rand.Uint32())
	}
	l := newLink(e, tag, true, time.Now())
	e.sess = l
	e.mu.Unlock()
	e.kick()

	timeout := time.NewTimer(e.cfg.DeadAfter)
	defer timeout.Stop()
	var err error
	select {
	case <-l.estab:
		e.log.Debug("seriallink: session open", "tag", tag)
		return l, nil
	case <-l.done:
		err = l.sessionErr()
	case <-ctx.Done():
		err = ctx.Err()
	case <-timeout.C:
		err = fmt.Errorf("%w: no answer to SYN", ErrDead)
	}
	// Our SYN may have got through; do not leave the agent a session.
	e.reset(l, err)
	return nil, fmt.Errorf("seriallink: dial: %w", err)
}

// Accept returns the next session a host opens (agent side). From the
// first call on, the endpoint beacons whenever no session is open. A new
// SYN ends the previous session, whose link then fails with
// ErrSessionReset.
func (e *Endpoint) Accept(ctx context.Context) (transport.Link, error) {
	if err := e.setRole(roleAgent); err != nil {
		return nil, err
	}
	e.start()
	e.kick()
	var l *link
	err := e.waitFor(ctx, func() bool {
		l, e.pending = e.pending, nil
		return l != nil
	})
	if err != nil {
		return nil, fmt.Errorf("seriallink: accept: %w", err)
	}
	e.log.Debug("seriallink: session accepted", "tag", l.tag)
	return l, nil
}

// Close resets any open session, closes the stream and waits for the
// endpoint's goroutines to end. It is idempotent.
func (e *Endpoint) Close() error {
	var err error
	e.closeOnce.Do(func() {
		e.mu.Lock()
		l := e.sess
		e.mu.Unlock()
		if l != nil {
			e.reset(l, transport.ErrClosed)
		}
		e.shutdown(transport.ErrClosed)
		err = e.rwc.Close()
		e.wg.Wait()
		e.console.close()
	})
	return err
}

// shutdown stops the endpoint for good with err.
func (e *Endpoint) shutdown(err error) {
	e.mu.Lock()
	if e.lineErr == nil {
		e.lineErr = err
		if e.sess != nil {
			e.sess.fail(err)
		}
		e.broadcast()
	}
	e.mu.Unlock()
	e.quitOnce.Do(func() { close(e.quit) })
}

// reset sends RST for l's session (unless it already ended) and ends it
// with err, waiting briefly for the RST to reach the line.
func (e *Endpoint) reset(l *link, err error) {
	e.mu.Lock()
	if l.err != nil {
		e.mu.Unlock()
		return
	}
	if l.quiet() { // the agent is not listening, and maybe a boot loader is
		l.fail(err)
		e.mu.Unlock()
		return
	}
	sent := e.queueCtrl(header{typ: typeRst, tag: l.tag}, []byte{rstClosed})
	l.fail(err)
	e.mu.Unlock()
	e.kick()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-sent:
	case <-e.quit:
	case <-t.C:
	}
}

// queueCtrl queues a control frame; e.mu held. The channel is closed once
// the frame is written (or at once if the queue is full).
func (e *Endpoint) queueCtrl(h header, payload []byte) chan struct{} {
	for _, c := range e.ctrl {
		if c.h == h {
			return c.sent
		}
	}
	sent := make(chan struct{})
	if len(e.ctrl) >= maxCtrl {
		close(sent)
		return sent
	}
	e.ctrl = append(e.ctrl, ctrlFrame{h: h, payload: payload, sent: sent})
	return sent
}

func (e *Endpoint) readLoop() {
	defer e.wg.Done()
	buf := make([]byte, 4096)
	for {
		select {
		case <-e.quit:
			return
		default:
		}
		start := time.Now()
		n, err := e.rwc.Read(buf)
		if n > 0 {
			e.stats.wireIn.Add(uint64(n))
			e.parser.feed(buf[:n])
		}
		if err != nil {
			e.shutdown(fmt.Errorf("seriallink: read: %w", err))
			e.console.close() // the line ended: so does its console text, once read
			return
		}
		// A serial port's read timeout returns (0, nil): no data yet. Guard
		// against a reader that does so without waiting.
		if n == 0 && time.Since(start) < time.Millisecond {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (e *Endpoint) writeLoop() {
	defer e.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var buf []byte
	for {
		e.mu.Lock()
		now := time.Now()
		frame, sent, beacon, wake := e.nextWrite(now, buf[:0])
		e.mu.Unlock()
		buf = frame
		if beacon {
			buf = e.fb.appendFrame(buf[:0], header{typ: typeBeacon}, e.beaconPayload())
		}
		if len(buf) > 0 {
			if err := e.write(buf); err != nil {
				e.shutdown(fmt.Errorf("seriallink: write: %w", err))
				return
			}
			if sent != nil {
				close(sent)
			}
			continue
		}
		var tc <-chan time.Time
		if !wake.IsZero() {
			timer.Reset(wake.Sub(now))
			tc = timer.C
		}
		select {
		case <-e.wake:
		case <-tc:
		case <-e.quit:
			return
		}
	}
}

// write writes one frame, resuming after short or interrupted writes (a tty
// write may return early on a signal).
func (e *Endpoint) write(b []byte) error {
	for len(b) > 0 {
		n, err := e.rwc.Write(b)
		e.stats.wireOut.Add(uint64(n))
		b = b[n:]
		switch {
		case errors.Is(err, syscall.EINTR):
		case err != nil:
			return err
		case n == 0:
			return io.ErrShortWrite
		}
	}
	e.stats.framesOut.Add(1)
	return nil
}

// nextWrite picks the next frame; e.mu held. beacon asks the caller to
// build a beacon outside the lock. A zero wake means wait to be woken.
func (e *Endpoint) nextWrite(now time.Time, out []byte) (frame []byte, sent chan struct{}, beacon bool, wake time.Time) {
	if len(e.ctrl) > 0 {
		c := e.ctrl[0]
		e.ctrl = e.ctrl[1:]
		return e.fb.appendFrame(out, c.h, c.payload), c.sent, false, time.Time{}
	}
	if l := e.sess; l != nil {
		out, wake = l.next(now, &e.fb, out)
		if len(out) > 0 || e.sess != nil {
			return out, nil, false, wake
		}
	}
	if e.role != roleAgent || e.sess != nil || e.lineErr != nil {
		return out, nil, false, time.Time{}
	}
	if now.Before(e.nextBeacon) {
		return out, nil, false, e.nextBeacon
	}
	e.nextBeacon = now.Add(e.cfg.BeaconInterval)
	return out, nil, true, time.Time{}
}

func (e *Endpoint) beaconPayload() []byte {
	if e.cfg.Beacon == nil {
		return nil
	}
	b := e.cfg.Beacon()
	if len(b) > MaxPayloadLimit {
		e.log.Warn("seriallink: beacon payload too large, sending it empty", "bytes", len(b))
		return nil
	}
	return b
}

// onFrame is the parser's frame callback.
func (e *Endpoint) onFrame(h header, payload []byte) {
	e.stats.framesIn.Add(1)
	now := time.Now()
	e.mu.Lock()
	if e.role == roleAgent {
		e.agentFrame(h, payload, now)
	} else {
		e.hostFrame(h, payload, now)
	}
	e.mu.Unlock()
	e.kick()
}

func (e *Endpoint) hostFrame(h header, payload []byte, now time.Time) {
	if l := e.sess; l != nil {
		l.heard()
	}
	if h.typ == typeBeacon {
		// An agent beacons only without a session: ours is gone.
		if l := e.sess; l != nil && l.established {
			l.fail(fmt.Errorf("%w: the agent is beaconing (restarted?)", ErrSessionReset))
		}
		e.beacon = append([]byte(nil), payload...)
		e.beacons++
	}
	if !e.heard || h.typ == typeBeacon {
		e.heard = true
		e.broadcast()
	}
	l := e.sess
	if l == nil || h.tag != l.tag {
		return // stale: an old session's frame
	}
	switch h.typ {
	case typeSynAck:
		if !l.established && validHello(payload) {
			l.open(payload, now)
		}
	case typeData, typeAck:
		if l.established {
			l.onFrame(h, payload, now)
		}
	case typeRst:
		l.fail(rstError(payload))
	}
}

func (e *Endpoint) agentFrame(h header, payload []byte, now time.Time) {
	l := e.sess
	switch h.typ {
	case typeSyn:
		switch {
		case l != nil && l.tag == h.tag:
			l.synAckOwed = true // our SYNACK was lost
		case h.tag == 0 || h.tag == e.lastTag:
			// A late copy of an ended session's SYN.
		case !validHello(payload):
			e.queueCtrl(header{typ: typeRst, tag: h.tag}, []byte{rstVersion})
		default:
			if l != nil {
				l.fail(fmt.Errorf("%w: a new session replaced it", ErrSessionReset))
			}
			n := newLink(e, h.tag, false, now)
			n.open(payload, now)
			n.synAckOwed = true
			e.sess, e.pending = n, n
			e.broadcast()
		}
	case typeData, typeAck:
		if l != nil && l.tag == h.tag {
			l.onFrame(h, payload, now)
		} else if h.tag != 0 {
			e.queueCtrl(header{typ: typeRst, tag: h.tag}, []byte{rstUnknown})
		}
	case typeRst:
		if l != nil && l.tag == h.tag {
			l.fail(rstError(payload))
		}
	}
}

func rstError(payload []byte) error {
	reason := "peer closed the session"
	if len(payload) > 0 {
		switch payload[0] {
		case rstUnknown:
			reason = "the agent does not know the session (restarted?)"
		case rstVersion:
			reason = "the agent does not speak this protocol version"
		}
	}
	return fmt.Errorf("%w: %s", ErrSessionReset, reason)
}

// Probe listens to r until an agent's beacon arrives and returns its
// payload. It never writes. Probe returns only after its reading goroutine
// has stopped, so r can be handed to an Endpoint afterwards; to stop on ctx
// it uses SetReadDeadline when r has it (net.Conn, pty files), otherwise it
// relies on Read returning now and then (a port from OpenPort does).
func Probe(ctx context.Context, r io.Reader) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var found []byte
	p := newParser(new(counters), func(h header, payload []byte) {
		if h.typ == typeBeacon && found == nil {
			found = append([]byte{}, payload...)
		}
	}, nil)
	type deadliner interface{ SetReadDeadline(time.Time) error }
	d, canInterrupt := r.(deadliner)
	stop := context.AfterFunc(ctx, func() {
		if canInterrupt {
			_ = d.SetReadDeadline(time.Now())
		}
	})
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 1024)
		for ctx.Err() == nil && found == nil {
			start := time.Now()
			n, err := r.Read(buf)
			p.feed(buf[:n])
			if err != nil {
				errc <- err
				return
			}
			if n == 0 && time.Since(start) < time.Millisecond {
				time.Sleep(10 * time.Millisecond)
			}
		}
		errc <- nil
	}()
	err := <-errc
	if !stop() && canInterrupt {
		_ = d.SetReadDeadline(time.Time{})
	}
	if found != nil {
		return found, nil
	}
	if ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return nil, fmt.Errorf("seriallink: probe: %w", err)
}
