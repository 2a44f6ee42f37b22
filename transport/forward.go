package transport

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Interface guard: a stream is one end of a forwarded connection.
var _ ForwardEnd = (*Stream)(nil)

// ForwardEnd is one end of a forwarded connection: a stream (a
// *transport.Stream is one) or a TCP connection (TCPEnd).
type ForwardEnd interface {
	io.ReadWriter
	// CloseWrite ends what this end is sent: a stream's FIN, a TCP FIN.
	CloseWrite() error
	// Reset aborts both directions: a stream's RST, a TCP RST.
	Reset(reason string)
	Close() error
}

// TCPEnd makes a connection a ForwardEnd. Its Reset closes a TCP
// connection with RST, so that its peer sees the failure as one.
func TCPEnd(c net.Conn) ForwardEnd { return tcpEnd{c} }

type tcpEnd struct{ net.Conn }

func (e tcpEnd) CloseWrite() error {
	if cw, ok := e.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return e.Conn.Close()
}

func (e tcpEnd) Reset(string) {
	if tc, ok := e.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = e.Conn.Close()
}

// maxResetReason bounds the reason a stream's RST carries.
const maxResetReason = 120

// Forward copies a to b and b to a until both directions have ended. The
// end of one side's data is passed on as a half-close (FIN ↔ CloseWrite),
// so a peer that shuts down its sending side still gets its answer. A
// failure on either side (a read or write error, an RST) resets both ends.
// Both are closed when it returns, with the bytes copied each way and the
// first failure.
func Forward(a, b ForwardEnd) (aToB, bToA int64, err error) {
	var (
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	abort := func(err error) {
		once.Do(func() {
			first = err
			reason := err.Error()
			if len(reason) > maxResetReason {
				reason = reason[:maxResetReason]
			}
			a.Reset(reason)
			b.Reset(reason)
		})
	}
	pipe := func(dst, src ForwardEnd, n *int64) {
		defer wg.Done()
		var err error
		if *n, err = io.Copy(dst, src); err == nil {
			err = dst.CloseWrite()
		}
		if err != nil {
			abort(err)
		}
	}
	wg.Add(2)
	go pipe(b, a, &aToB)
	go pipe(a, b, &bToA)
	wg.Wait()
	err = errors.Join(a.Close(), b.Close())
	if first != nil {
		err = first
	}
	return aToB, bToA, err
}
