// Package linetest simulates a serial line between a host and a board for
// tests: a byte pipe each way with an optional baud rate, random byte
// corruption and loss, and kernel-style console lines written into the
// board's output, between frames and inside them, as a board's kernel
// console does when it shares the UART with the agent.
//
// Injected text is never corrupted and never lands in a stretch of output
// that is corrupted: the board's output is cut into segments at its 0x00
// bytes (each frame, and each gap between two frames, is one), and a
// segment gets either noise or one console line, never both. 0x00 bytes
// there are never corrupted or dropped. So every injected line can be
// recovered, and a test may require each one to reach the console stream.
package linetest

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"
)

// Config describes the line. The zero value is a perfect, unlimited line.
type Config struct {
	Baud    int     // bits per second at 10 bits per byte (8N1); 0 means no limit
	Corrupt float64 // probability that a byte is replaced by a different value
	Drop    float64 // probability that a byte is lost
	// Inject is the probability that a segment of the board's output (a
	// frame, or the gap after one) gets a console line.
	Inject float64
	Seed   uint64
	// Buffer is how many bytes a side holds for its reader; more are lost,
	// like a UART overrun (default 1 MiB).
	Buffer int
}

// Stats counts what the line did.
type Stats struct {
	Bytes     [2]uint64 // bytes carried towards the board [0] and the host [1]
	Corrupted uint64
	Dropped   uint64
	Overrun   uint64 // bytes lost because a side's buffer was full
	Lines     int    // console lines injected
}

// ErrClosed is returned by a closed Port.
var ErrClosed = errors.New("linetest: port closed")

// Line is a simulated serial line. Its methods are safe for concurrent use.
type Line struct {
	cfg     Config
	toBoard *direction
	toHost  *direction

	mu       sync.Mutex
	cut      bool
	stats    Stats
	injected []string
}

// New returns a line; it runs no goroutines.
func New(cfg Config) *Line {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 1 << 20
	}
	l := &Line{cfg: cfg}
	l.toBoard = newDirection(l, 0, false)
	l.toHost = newDirection(l, 1, cfg.Inject > 0)
	return l
}

// Host opens a new port on the host's side, closing the previous one, as a
// restarted program reopens its tty. Bytes already received stay buffered.
func (l *Line) Host() *Port { return l.toHost.dst.open(l.toBoard) }

// Board opens a new port on the board's side, closing the previous one.
func (l *Line) Board() *Port { return l.toBoard.dst.open(l.toHost) }

// Inject writes console text towards the host now, between the board's
// writes (so between frames: a board writes whole frames). It is recorded
// like the lines injected at random.
func (l *Line) Inject(text string) { l.toHost.inject([]byte(text)) }

// Injected returns the console text injected so far, in line order.
func (l *Line) Injected() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.injected...)
}

// SetCut cuts the line (every byte either way is lost) or mends it.
func (l *Line) SetCut(cut bool) {
	l.mu.Lock()
	l.cut = cut
	l.mu.Unlock()
}

// Stats returns the line's counters.
func (l *Line) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// LineRate is the line's payload capacity in bytes per second (0: none).
func (l *Line) LineRate() float64 { return float64(l.cfg.Baud) / 10 }

// direction carries bytes one way and applies the noise.
type direction struct {
	l        *Line
	idx      int
	injectOn bool
	dst      *side
	byteTime time.Duration

	mu   sync.Mutex // serialises writers; guards the fields below
	rng  *rand.Rand
	next time.Time // pacing clock
	seg  segment
	out  []byte
}

// segment is the stretch of board output since the last 0x00.
type segment struct {
	inject bool // gets a console line, and no noise
	at     int  // ... after this many bytes (or at its end, if shorter)
	pos    int
	done   bool
}

func newDirection(l *Line, idx int, inject bool) *direction {
	d := &direction{
		l: l, idx: idx, injectOn: inject,
		dst: newSide(l.cfg.Buffer),
		rng: rand.New(rand.NewPCG(l.cfg.Seed, uint64(idx)+1)),
	}
	if l.cfg.Baud > 0 {
		d.byteTime = 10 * time.Second / time.Duration(l.cfg.Baud)
	}
	return d
}

// chunk is how many bytes are paced and delivered at once.
const chunk = 256

func (d *direction) write(p *Port, b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for done := 0; done < len(b); {
		if p.isClosed() {
			return done, ErrClosed
		}
		n := min(chunk, len(b)-done)
		d.out = d.out[:0]
		for _, c := range b[done : done+n] {
			d.byteOut(c)
		}
		d.pace(n)
		d.deliver(d.out)
		done += n
	}
	return len(b), nil
}

// byteOut appends c, as the line mangles it, to d.out.
func (d *direction) byteOut(c byte) {
	if d.injectOn {
		s := &d.seg
		if c == 0 {
			if s.inject && !s.done {
				d.injectLine() // the segment ended before the chosen offset
			}
			d.out = append(d.out, 0)
			*s = segment{inject: d.rng.Float64() < d.l.cfg.Inject}
			if d.rng.IntN(2) == 0 {
				s.at = d.rng.IntN(64)
			} else {
				s.at = d.rng.IntN(1200)
			}
			return
		}
		if s.inject {
			if !s.done && s.pos == s.at {
				d.injectLine()
			}
			s.pos++
			d.out = append(d.out, c)
			return
		}
	}
	switch r := d.rng.Float64(); {
	case r < d.l.cfg.Drop:
		d.count(func(s *Stats) { s.Dropped++ })
	case r < d.l.cfg.Drop+d.l.cfg.Corrupt:
		d.out = append(d.out, c^byte(1+d.rng.IntN(255)))
		d.count(func(s *Stats) { s.Corrupted++ })
	default:
		d.out = append(d.out, c)
	}
}

// injectLine appends a fresh kernel-style console line to d.out.
func (d *direction) injectLine() {
	d.seg.done = true
	d.l.mu.Lock()
	n := len(d.l.injected)
	text := fmt.Sprintf("[%5d.%06d] linetest: console line %d\r\n", n/100, n%100*10000, n)
	d.l.injected = append(d.l.injected, text)
	d.l.stats.Lines++
	d.l.mu.Unlock()
	d.out = append(d.out, text...)
}

func (d *direction) inject(text []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.l.mu.Lock()
	d.l.injected = append(d.l.injected, string(text))
	d.l.stats.Lines++
	d.l.mu.Unlock()
	d.pace(len(text))
	d.deliver(text)
}

func (d *direction) count(f func(*Stats)) {
	d.l.mu.Lock()
	f(&d.l.stats)
	d.l.mu.Unlock()
}

// pace sleeps for the time n bytes take on the wire. The clock is kept
// across calls so that oversleeping is made up, unless the line was idle.
func (d *direction) pace(n int) {
	if d.byteTime == 0 {
		return
	}
	now := time.Now()
	if now.Sub(d.next) > 5*time.Millisecond {
		d.next = now
	}
	d.next = d.next.Add(time.Duration(n) * d.byteTime)
	if wait := d.next.Sub(now); wait > 0 {
		time.Sleep(wait)
	}
}

func (d *direction) deliver(b []byte) {
	d.l.mu.Lock()
	cut := d.l.cut
	if !cut {
		d.l.stats.Bytes[d.idx] += uint64(len(b))
	}
	d.l.mu.Unlock()
	if cut || len(b) == 0 {
		return
	}
	if lost := d.dst.push(b); lost > 0 {
		d.count(func(s *Stats) { s.Overrun += uint64(lost) })
	}
}

// side is one end's receive buffer, shared by the ports opened there.
type side struct {
	mu   sync.Mutex
	cond sync.Cond
	buf  []byte
	max  int
	port *Port
}

func newSide(max int) *side {
	s := &side{max: max}
	s.cond.L = &s.mu
	return s
}

func (s *side) open(out *direction) *Port {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.port != nil {
		s.port.closed = true
		s.cond.Broadcast()
	}
	s.port = &Port{in: s, out: out}
	return s.port
}

func (s *side) push(b []byte) (lost int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if room := s.max - len(s.buf); len(b) > room {
		lost = len(b) - room
		b = b[:room]
	}
	s.buf = append(s.buf, b...)
	s.cond.Broadcast()
	return lost
}

// Port is one end of the line, an io.ReadWriteCloser like an open tty.
type Port struct {
	in     *side
	out    *direction
	closed bool // guarded by in.mu
}

func (p *Port) isClosed() bool {
	p.in.mu.Lock()
	defer p.in.mu.Unlock()
	return p.closed
}

// Read blocks until bytes arrive or the port is closed.
func (p *Port) Read(b []byte) (int, error) {
	s := p.in
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf) == 0 && !p.closed {
		s.cond.Wait()
	}
	if p.closed {
		return 0, ErrClosed
	}
	n := copy(b, s.buf)
	s.buf = s.buf[n:]
	if len(s.buf) == 0 {
		s.buf = nil
	}
	return n, nil
}

// Write sends b, taking the time the line's baud rate needs.
func (p *Port) Write(b []byte) (int, error) { return p.out.write(p, b) }

// Close closes the port; a blocked Read or Write returns ErrClosed.
func (p *Port) Close() error {
	p.in.mu.Lock()
	defer p.in.mu.Unlock()
	p.closed = true
	p.in.cond.Broadcast()
	return nil
}

var _ io.ReadWriteCloser = (*Port)(nil)
