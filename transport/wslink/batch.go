package wslink

import (
	"crypto/tls"
	"net"
	"sync"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/proto"
)

// A large message on a TLS link goes out in one write of the TCP
// connection beneath. crypto/tls writes every record (16 KiB of
// plaintext at most) with a write of its own: a 256 KiB frame of a
// transfer took 17 system calls on wss:// where ws:// takes one (a
// writev), 18,000 writes for a pull of 256 MiB. A link begins a batch
// before it writes a large message and ends it after: the records in
// between are gathered, and written together.

// batchMin is the smallest message a link batches: smaller ones are one
// or two records, nothing to gather.
const batchMin = 32 << 10

// batchCap is a batch's buffer: a bulk frame with its headers and the
// records' overhead. A batch that outgrows it is written as it goes.
const batchCap = proto.MaxBulkFrame + 32<<10

// batchBuffers hold batches only while one is under way: a host with
// thousands of links mostly idle keeps none.
var batchBuffers = sync.Pool{New: func() any {
	b := make([]byte, 0, batchCap)
	return &b
}}

// BatchListener wraps the connections ln accepts, for a TLS listener
// above it (tls.NewListener(BatchListener(ln), config)): the links served
// on them batch their large messages.
func BatchListener(ln net.Listener) net.Listener { return batchListener{ln} }

type batchListener struct{ net.Listener }

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &batchConn{Conn: c}, nil
}

// batchConn is a connection under TLS that gathers what is written on it
// between begin and end. Deadlines, reads and Close are the connection's
// own: a Close ends a write under way, as before.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	buf *[]byte // the batch under way; nil outside one
	// err is the first write's failure: every write after it fails too.
	// crypto/tls keeps the failure of a record's write likewise, and
	// writes nothing more (see Abort); a batch's records it took as
	// written.
	err error
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.buf == nil {
		return c.write(p)
	}
	b := *c.buf
	if len(b)+len(p) > cap(b) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(b) {
			return c.write(p)
		}
		b = *c.buf
	}
	*c.buf = append(b, p...)
	return len(p), nil
}

// begin starts a batch. A link's messages are written one at a time:
// batches never nest. A control frame written meanwhile (a pong) joins
// the batch, in its order.
func (c *batchConn) begin() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = batchBuffers.Get().(*[]byte)
}

// end writes the batch and returns the write's error.
func (c *batchConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	batchBuffers.Put(c.buf)
	c.buf = nil
	return err
}

func (c *batchConn) flushLocked() error {
	b := *c.buf
	*c.buf = b[:0]
	if len(b) == 0 || c.err != nil {
		return c.err
	}
	_, err := c.write(b)
	return err
}

// write writes p on the connection; c.mu is held.
func (c *batchConn) write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

// batcher is the batchConn under ws's TLS, if there is one.
func batcher(ws *websocket.Conn) *batchConn {
	if tc, ok := ws.NetConn().(*tls.Conn); ok {
		bc, _ := tc.NetConn().(*batchConn)
		return bc
	}
	return nil
}
