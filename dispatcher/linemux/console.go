package linemux

import (
	"fmt"
	"io"
	"sync"

	"github.com/boardlink/boardlink/dispatcher/lineshare"
)

// sinkLimit bounds the console text waiting for one client; a client that
// reads slower than the line fills is told what it missed, and the line
// never waits for it.
const sinkLimit = 1 << 20

// hub keeps the newest console text and hands all of it to every sink.
type hub struct {
	mu    sync.Mutex
	ring  []byte
	size  int
	total int64 // console bytes seen: the offset after the ring's last
	sinks map[*sink]struct{}
	tee   io.Writer // Config.Console; nil: none
}

func newHub(size int, tee io.Writer) *hub {
	return &hub{size: size, sinks: map[*sink]struct{}{}, tee: tee}
}

// Write is the line's console text. The tee's failure is its own (a full
// disk under a record): the line and the clients go on.
func (h *hub) Write(p []byte) (int, error) {
	if h.tee != nil {
		_, _ = h.tee.Write(p)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total += int64(len(p))
	h.ring = append(h.ring, p...)
	if over := len(h.ring) - h.size; over > 0 {
		h.ring = append(h.ring[:0], h.ring[over:]...)
	}
	for s := range h.sinks {
		s.push(p)
	}
	return len(p), nil
}

// add starts handing text to s, first what is kept (all of it with ring,
// what came after offset since with resume); no text falls between the
// two. It returns the offset of the first byte s gets.
func (h *hub) add(s *sink, ring, resume bool, since int64) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	kept := h.ring
	switch {
	case resume && since <= h.total:
		kept = h.ring[max(0, int64(len(h.ring))-(h.total-since)):]
	case !ring:
		kept = nil
	}
	s.push(kept)
	h.sinks[s] = struct{}{}
	return h.total - int64(len(kept))
}

func (h *hub) remove(s *sink) {
	h.mu.Lock()
	delete(h.sinks, s)
	h.mu.Unlock()
}

// close drops every sink (the line ended).
func (h *hub) close() {
	h.mu.Lock()
	h.sinks = map[*sink]struct{}{}
	h.mu.Unlock()
}

// sink is one client's console text on its way out.
type sink struct {
	sc      *lineshare.Conn
	mu      sync.Mutex
	buf     []byte
	dropped int
	wake    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newSink(sc *lineshare.Conn) *sink {
	return &sink{sc: sc, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (s *sink) push(p []byte) {
	if len(p) == 0 {
		return
	}
	s.mu.Lock()
	if len(s.buf)+len(p) > sinkLimit {
		s.dropped += len(p)
	} else {
		s.buf = append(s.buf, p...)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes the text out until close or a failed write.
func (s *sink) run() {
	for {
		select {
		case <-s.wake:
		case <-s.done:
			return
		}
		s.mu.Lock()
		buf, dropped := s.buf, s.dropped
		s.buf, s.dropped = nil, 0
		s.mu.Unlock()
		if dropped > 0 {
			note := fmt.Sprintf("\r\n[boardlink: %d bytes of console text dropped: this client read too slowly]\r\n", dropped)
			buf = append(buf, note...) // what it missed came after what it has
		}
		for len(buf) > 0 {
			n := min(len(buf), 64<<10)
			if s.sc.WriteConsole(buf[:n]) != nil {
				return
			}
			buf = buf[n:]
		}
	}
}

func (s *sink) close() { s.once.Do(func() { close(s.done) }) }
