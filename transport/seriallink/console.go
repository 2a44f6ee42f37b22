package seriallink

import (
	"io"
	"sync"
)

// console is a bounded buffer of console text. Writing never blocks: when
// the reader falls behind, the oldest text is dropped, so frame processing
// never waits for it.
type console struct {
	stats *counters

	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte // ring storage
	start  int
	n      int
	closed bool
}

func newConsole(size int, stats *counters) *console {
	c := &console{stats: stats, buf: make([]byte, size)}
	c.cond.L = &c.mu
	return c
}

func (c *console) write(p []byte) {
	c.stats.consoleBytes.Add(uint64(len(p)))
	c.mu.Lock()
	defer c.mu.Unlock()
	size := len(c.buf)
	if over := len(p) - size; over > 0 {
		c.stats.consoleDropped.Add(uint64(over))
		p = p[over:]
	}
	if over := c.n + len(p) - size; over > 0 {
		c.stats.consoleDropped.Add(uint64(over))
		c.start = (c.start + over) % size
		c.n -= over
	}
	end := (c.start + c.n) % size
	m := copy(c.buf[end:], p)
	copy(c.buf, p[m:])
	c.n += len(p)
	c.cond.Broadcast()
}

// Read blocks until text is available; after close it drains what is left
// and then returns io.EOF.
func (c *console) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.n == 0 {
		if c.closed {
			return 0, io.EOF
		}
		c.cond.Wait()
	}
	m := copy(p, c.buf[c.start:min(c.start+c.n, len(c.buf))])
	if m < len(p) && m < c.n {
		m += copy(p[m:], c.buf[:c.n-m])
	}
	c.start = (c.start + m) % len(c.buf)
	c.n -= m
	return m, nil
}

func (c *console) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

var _ io.Reader = (*console)(nil)
