package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// countServer accepts connections on the board's loopback and answers
// each, once the peer shut its sending side, with how many bytes it read;
// a read that fails is handed to failed.
func countServer(t *testing.T) (port int, failed <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	errs := make(chan error, 16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				n, err := io.Copy(io.Discard, conn)
				if err != nil {
					errs <- err
					return
				}
				fmt.Fprintf(conn, "%d", n)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, errs
}

// dialStream has the agent connect a fresh stream to port on its
// loopback, as tcp.dial's raw caller.
func dialStream(t *testing.T, c *dispatcher.Client, port int) (*transport.Stream, error) {
	t.Helper()
	st, err := c.Conn().OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	var res proto.TCPDialResult
	err = c.Conn().Call(context.Background(), proto.MethodTCPDial, proto.TCPDialParams{Host: "127.0.0.1", Port: port, Stream: st.ID()}, &res)
	if err == nil && res.Remote != "127.0.0.1:"+strconv.Itoa(port) {
		t.Errorf("dialed %+v", res)
	}
	return st, err
}

// TestTCPDialHalfClose: the stream's FIN reaches the board's server as
// EOF while the other way stays open for its answer, whose end comes back
// as the stream's EOF; a reset stream resets the connection; over every
// link.
func TestTCPDialHalfClose(t *testing.T) {
	testenv.CheckLeaks(t)
	h := newHarness(t, "")
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := tr.dial(t, h)
			if !slices.Contains(c.Hello().Capabilities, proto.CapTCP) {
				t.Fatalf("capabilities %v lack %s", c.Hello().Capabilities, proto.CapTCP)
			}
			port, failed := countServer(t)
			st, err := dialStream(t, c, port)
			if err != nil {
				t.Fatal(err)
			}
			payload := make([]byte, 700<<10) // beyond the stream's window
			if _, err := st.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := st.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			answer, err := io.ReadAll(st)
			if err != nil || string(answer) != strconv.Itoa(len(payload)) {
				t.Fatalf("answer %q, %v", answer, err)
			}

			st, err = dialStream(t, c, port)
			if err != nil {
				t.Fatal(err)
			}
			st.Write([]byte("cut short"))
			st.Reset("test")
			if err := <-failed; !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the board's server read %v, want a reset", err)
			}
		})
	}
}

// TestTCPDialErrors: a closed port is unavailable and resets the stream;
// bad params name their field.
func TestTCPDialErrors(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	st, err := dialStream(t, c, closed)
	if !proto.IsReason(err, proto.ReasonUnavailable) {
		t.Fatalf("dial a closed port: %v", err)
	}
	if _, err := st.Read(make([]byte, 1)); !errors.As(err, new(*transport.StreamError)) {
		t.Fatalf("the stream after a refused dial: %v", err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		method string
		params any
		reason proto.Reason
	}{
		{proto.MethodTCPDial, map[string]any{"port": 0, "stream": 1}, proto.ReasonInvalidParams},
		{proto.MethodTCPDial, map[string]any{"host": "a b", "port": 80, "stream": 1}, proto.ReasonInvalidParams},
		{proto.MethodTCPDial, map[string]any{"port": 80, "stream": 2}, proto.ReasonInvalidParams},
		{proto.MethodTCPListen, map[string]any{"port": 70000}, proto.ReasonInvalidParams},
		{proto.MethodTCPAccept, map[string]any{"listener": "l99", "stream": 1}, proto.ReasonNotFound},
		{proto.MethodTCPUnlisten, map[string]any{"id": "l99"}, proto.ReasonNotFound},
	} {
		if err := c.Conn().Call(ctx, tc.method, tc.params, nil); !proto.IsReason(err, tc.reason) {
			t.Errorf("%s %v: %v, want %s", tc.method, tc.params, err, tc.reason)
		}
	}
}

// accept takes the listener's next connection on a fresh stream.
func accept(ctx context.Context, c *dispatcher.Client, id string) (proto.TCPIncoming, *transport.Stream, error) {
	st, err := c.Conn().OpenStream()
	if err != nil {
		return proto.TCPIncoming{}, nil, err
	}
	var in proto.TCPIncoming
	err = c.Conn().Call(ctx, proto.MethodTCPAccept, proto.TCPAcceptParams{Listener: id, Stream: st.ID()}, &in)
	return in, st, err
}

// dialReset connects to addr and reports whether the board's listener
// reset the connection: the read ends with ECONNRESET, or EOF when the RST
// raced it, or on the loopback even connect sees the RST.
func dialReset(addr string) error {
	conn, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Read(make([]byte, 1))
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("read %v, want a reset", err)
}

// TestTCPListenBounds: a session holds at most 16 listeners (one more is
// busy, one closed makes room); a listener holds at most 32 connections
// no tcp.accept took (one more is reset at once), and tcp.accept takes
// them in their order.
func TestTCPListenBounds(t *testing.T) {
	testenv.CheckLeaks(t)
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := context.Background()
	var ls []*dispatcher.RemoteListener
	for range 16 {
		l, err := c.ListenTCP(ctx, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	if _, err := c.ListenTCP(ctx, "", 0); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("a 17th listener: %v", err)
	}
	if err := ls[1].Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListenTCP(ctx, "", 0); err != nil {
		t.Fatalf("a listener after one closed: %v", err)
	}
	if _, err := c.ListenTCP(ctx, "", ls[0].Port); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("a port in use: %v", err)
	}

	l := ls[0]
	var conns []net.Conn
	for range 32 {
		conn, err := net.Dial("tcp", l.Address)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	if err := dialReset(l.Address); err != nil {
		t.Fatalf("the 33rd connection waiting: %v", err)
	}
	for i, conn := range conns {
		in, st, err := accept(ctx, c, l.ID)
		if err != nil {
			t.Fatal(err)
		}
		if in.Listener != l.ID || in.Remote != conn.LocalAddr().String() {
			t.Fatalf("accept %d: %+v, want %s", i, in, conn.LocalAddr())
		}
		st.Close()
	}
}

// TestTCPNotAccepted: a connection no tcp.accept takes in time is reset;
// tcp.unlisten ends a tcp.accept that waits; the end of the session
// closes its listeners and resets its connections.
func TestTCPNotAccepted(t *testing.T) {
	testenv.CheckLeaks(t)
	agent.SetTCPAcceptWait(t, time.Millisecond)
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := context.Background()
	l, err := c.ListenTCP(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := dialReset(l.Address); err != nil {
		t.Fatalf("a connection not accepted in time: %v", err)
	}

	waiting := make(chan error, 1)
	go func() {
		_, _, err := accept(ctx, c, l.ID)
		waiting <- err
	}()
	// Unlisten once the accept waits: a connection then still reaches it.
	testenv.Eventually(t, "the tcp.accept to wait", func() bool { return testenv.Parked("agent.(*tcpListener).take") })
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waiting; !proto.IsReason(err, proto.ReasonCanceled) {
		t.Fatalf("a tcp.accept when its listener closed: %v", err)
	}

	c2 := dialWS(t, h)
	l2, err := c2.ListenTCP(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	port, failed := countServer(t)
	if _, err := dialStream(t, c2, port); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if err := <-failed; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection joined when its session ended: %v, want a reset", err)
	}
	testenv.Eventually(t, "the listener to close with its session", func() bool {
		conn, err := net.Dial("tcp", l2.Address)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
}
