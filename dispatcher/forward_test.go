package dispatcher_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// blobs are the downloads of the forwarding tests: random bytes, one blob
// per path, served on 127.0.0.1 (a board's loopback: the board is this
// process).
type blobs struct {
	data [][]byte
	addr string // HOST:PORT of the server
}

func serveBlobs(t *testing.T, n, size int) *blobs {
	t.Helper()
	b := &blobs{data: make([][]byte, n)}
	for i := range b.data {
		b.data[i] = make([]byte, size)
		rand.Read(b.data[i])
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil || i < 0 || i >= n {
			http.NotFound(w, r)
			return
		}
		w.Write(b.data[i])
	}))
	t.Cleanup(srv.Close)
	b.addr = srv.Listener.Addr().String()
	return b
}

// port is the server's port.
func (b *blobs) port(t *testing.T) int {
	_, p, _ := net.SplitHostPort(b.addr)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fetchAll downloads every blob at once through addr, each on a
// connection of its own, and checks each by its sha256.
func (b *blobs) fetchAll(t *testing.T, addr string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(b.data))
	for i := range b.data {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := client.Get(fmt.Sprintf("http://%s/%d", addr, i))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("blob %d: %s after %d bytes: %v", i, resp.Status, n, err)
				return
			}
			if want := sha256.Sum256(b.data[i]); !bytes.Equal(h.Sum(nil), want[:]) {
				errs <- fmt.Errorf("blob %d: %d bytes, sha256 differs", i, n)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// fwdEvents collects a forwarding's events, for a test to wait on.
type fwdEvents struct {
	mu     sync.Mutex
	seen   []dispatcher.ForwardEvent
	change chan struct{}
}

func newEvents() *fwdEvents { return &fwdEvents{change: make(chan struct{}, 1)} }

func (e *fwdEvents) add(ev dispatcher.ForwardEvent) {
	e.mu.Lock()
	e.seen = append(e.seen, ev)
	e.mu.Unlock()
	select {
	case e.change <- struct{}{}:
	default:
	}
}

// count is how many events of kind came.
func (e *fwdEvents) count(kind dispatcher.ForwardEventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.seen {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

// waitFor waits until n events of kind came.
func (e *fwdEvents) waitFor(t *testing.T, kind dispatcher.ForwardEventKind, n int) {
	t.Helper()
	for e.count(kind) < n {
		<-e.change
	}
}

// checkDownloads checks, once the forwarding ended, that n connections
// came, and each ended cleanly, the one that made it having received its size bytes and headers.
func (e *fwdEvents) checkDownloads(t *testing.T, n int, size int64) {
	t.Helper()
	if got := e.count(dispatcher.ForwardOpened); got != n {
		t.Errorf("%d connections, want %d", got, n)
	}
	for _, ev := range e.seen {
		if ev.Kind == dispatcher.ForwardClosed && (ev.Err != nil || ev.Cut || ev.Received < size || ev.Sent == 0) {
			t.Errorf("connection from %s ended with %v (cut %v) after %d bytes sent, %d received", ev.From, ev.Err, ev.Cut, ev.Sent, ev.Received)
		}
	}
}

// links are the ways the forwarding tests reach a board: WebSocket, the
// serial link on a unix socket, and on a pty.
func links(t *testing.T) []string {
	b := startBoard(t, agent.Config{})
	return []string{b.ws.URL(), "unix://" + b.sock, "serial://" + servePTY(t, "pty-board") + "?baud=115200"}
}

// scheme names a subtest by its link.
func scheme(addr string) string {
	s, _, _ := strings.Cut(addr, ":")
	return s
}

// forward runs c.Forward from a fresh listener on 127.0.0.1 to port on
// the board; it returns the listener's address and a stop that checks how
// Forward ended.
func forward(t *testing.T, c *dispatcher.Client, port int, ev *fwdEvents) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Forward(ctx, ln, "127.0.0.1", port, ev.add) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("forward: %v", err)
		}
	}
	t.Cleanup(cancel)
	return ln.Addr().String(), stop
}

// TestForwardDownloads: an HTTP server on the board's loopback, reached
// through the forward from the host: 20 downloads at once, each on its
// own connection, all intact, over WebSocket and over the serial link (on
// a unix socket, and on a real pty through the serial port's code); each
// connection ends cleanly, and the stop finds none open.
func TestForwardDownloads(t *testing.T) {
	srv := serveBlobs(t, 20, 1<<20)
	for _, addr := range links(t) {
		t.Run(scheme(addr), func(t *testing.T) {
			c := dial(t, addr)
			ev := newEvents()
			local, stop := forward(t, c, srv.port(t), ev)
			srv.fetchAll(t, local)
			ev.waitFor(t, dispatcher.ForwardClosed, 20)
			stop()
			ev.checkDownloads(t, 20, 1<<20)
		})
	}
}

// TestReverseDownloads: an HTTP server on the host reached from the
// board through a listener on the board's loopback (tcp.listen): 20
// downloads at once, all intact, over both links.
func TestReverseDownloads(t *testing.T) {
	srv := serveBlobs(t, 20, 1<<20)
	for _, addr := range links(t) {
		t.Run(scheme(addr), func(t *testing.T) {
			c := dial(t, addr)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ln, err := c.ListenTCP(ctx, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(ln.Address, "127.0.0.1:") || ln.Port == 0 {
				t.Fatalf("listening on %s, port %d", ln.Address, ln.Port)
			}
			ev := newEvents()
			done := make(chan error, 1)
			go func() {
				var d net.Dialer
				done <- ln.Serve(ctx, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", srv.addr) }, ev.add)
			}()
			srv.fetchAll(t, ln.Address) // the board's side: this process
			ev.waitFor(t, dispatcher.ForwardClosed, 20)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			ev.checkDownloads(t, 20, 1<<20)
			// The listener is gone with the stop.
			if conn, err := net.Dial("tcp", ln.Address); err == nil {
				conn.Close()
				t.Fatalf("%s still listens after the stop", ln.Address)
			}
		})
	}
}

// halfCloseServer accepts one connection: it says hello and shuts its
// sending side (FIN), then reads until the peer's FIN and hands what it
// read to got.
func halfCloseServer(t *testing.T) (int, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		conn.Write([]byte("hello"))
		conn.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(conn)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}()
	return ln.Addr().(*net.TCPAddr).Port, got
}

// TestForwardHalfClose: either side may end its direction first and the
// other still gets through: the board's server says hello and shuts its
// side, the host's client reads to EOF, then sends and shuts its own;
// the server reads that to EOF. The connection then ends cleanly.
func TestForwardHalfClose(t *testing.T) {
	testenv.CheckLeaks(t)
	for _, addr := range links(t) {
		t.Run(scheme(addr), func(t *testing.T) {
			c := dial(t, addr)
			port, got := halfCloseServer(t)
			ev := newEvents()
			local, stop := forward(t, c, port, ev)
			conn, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hello, err := io.ReadAll(conn)
			if err != nil || string(hello) != "hello" {
				t.Fatalf("read %q, %v", hello, err)
			}
			if _, err := conn.Write([]byte("still here")); err != nil {
				t.Fatal(err)
			}
			conn.(*net.TCPConn).CloseWrite()
			if s := <-got; s != "still here" {
				t.Fatalf("the board's server read %q", s)
			}
			ev.waitFor(t, dispatcher.ForwardClosed, 1)
			stop()
			if e := ev.seen[1]; e.Err != nil || e.Sent != int64(len("still here")) || e.Received != 5 {
				t.Fatalf("closed: %+v", e)
			}
		})
	}
}

// TestForwardRefused: a port nothing listens on: the host's connection is
// reset, and the event says why.
func TestForwardRefused(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ev := newEvents()
	local, stop := forward(t, c, closed, ev)
	conn, err := net.Dial("tcp", local)
	if err == nil { // on the loopback even connect may see the RST
		defer conn.Close()
		_, err = io.ReadAll(conn)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a refused forward: %v", err)
	}
	ev.waitFor(t, dispatcher.ForwardFailed, 1)
	stop()
	if e := ev.seen[0]; !proto.IsReason(e.Err, proto.ReasonUnavailable) {
		t.Fatalf("event %+v", e)
	}
}

// TestForwardReconnects: a session the board closed (idle, or a link
// that failed) is reopened by the next connection; when it cannot be,
// Forward ends and says so.
func TestForwardReconnects(t *testing.T) {
	testenv.CheckLeaks(t)
	b := startBoard(t, agent.Config{})
	srv := serveBlobs(t, 1, 1000)
	c := dial(t, b.ws.URL())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Forward(context.Background(), ln, "", srv.port(t), nil) }()
	old := c.Conn()
	old.Close()
	srv.fetchAll(t, ln.Addr().String())
	if c.Conn() == old {
		t.Fatal("no new session")
	}

	b.ws.Stop(context.Background())
	<-c.Conn().Done()
	if conn, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		conn.Close()
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "could not be reopened") {
		t.Fatalf("forward with the board gone: %v", err)
	}
}
