package main

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
)

// relay forwards TCP connections to a board until frozen; frozen, it
// keeps them open and forwards nothing: a board that falls silent (hung,
// or its network gone) without closing anything, which only the
// heartbeat's timeout can tell from a busy one.
type relay struct {
	ln     net.Listener
	target string // host:port
	frozen chan struct{}
	done   chan struct{} // closed by close
	once   sync.Once

	mu    sync.Mutex
	conns []net.Conn
}

// startRelay relays to the board at addr (ws:// or wss://) and returns the
// relay and the address that reaches the board through it.
func startRelay(ctx context.Context, addr string) (*relay, string, error) {
	scheme, hostport, _ := strings.Cut(addr, "://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	r := &relay{ln: ln, target: hostport, frozen: make(chan struct{}), done: make(chan struct{})}
	go r.serve(ctx)
	return r, scheme + "://" + ln.Addr().String(), nil
}

func (r *relay) serve(ctx context.Context) {
	var d net.Dialer
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		b, err := d.DialContext(ctx, "tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, c, b)
		r.mu.Unlock()
		go r.pipe(b, c)
		go r.pipe(c, b)
	}
}

// pipe copies until the relay freezes, then holds on to what it read.
func (r *relay) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-r.frozen:
			<-r.done
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze stops forwarding, leaving every connection open.
func (r *relay) freeze() { r.once.Do(func() { close(r.frozen) }) }

// close ends the relay and its connections.
func (r *relay) close() {
	close(r.done)
	r.ln.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
}
