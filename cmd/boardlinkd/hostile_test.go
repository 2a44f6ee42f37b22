package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// The hostile load: junk connections of five kinds against a real
// boardlinkd while a legitimate client runs its commands.
const (
	junkPerKind  = 200 // five kinds: 1,000 connections
	legitimate   = 100 // commands of the legitimate client
	hostileRSSMB = 256 // the bound on the agent's peak RSS, MiB (measured: about 155 with all 1,000 let in)
)

// TestHostileLoad: 1,000 connections of five kinds (silent; headers sent
// one byte at a time; wrong tokens; authenticated garbage; a `yes` whose
// output is never read) while a legitimate client runs 100 commands. All
// 100 succeed, every junk connection is closed by the agent (each by the
// limit meant for it), and the agent's peak RSS stays under
// hostileRSSMB. Loopback only.
func TestHostileLoad(t *testing.T) {
	testenv.Long(t)
	if testenv.Race {
		// The agent under test is a plain build; the clients, in this
		// process, would run ten times slower and miss their own timeouts.
		t.Skip("the race detector slows the 1,000 clients past the agent's timeouts; the plain test run covers this")
	}
	bin := buildAgent(t)
	b := startBoard(t, bin, "--listen", "127.0.0.1:0", "--max-conns", "2000",
		"--handshake-timeout", "5s", "--idle-timeout", "3s", "--keepalive-timeout", "3s")
	url := b.addr(t)
	addr := strings.TrimPrefix(url, "wss://")
	c, _ := dialBoot(t, url, b.opts(), "")
	pid := agentPID(t, c)
	c.Close()
	before := rssKB(t, pid, "VmRSS")

	var stalled stalledConns
	defer stalled.closeAll()
	kinds := []struct {
		name string
		run  func(ctx context.Context) error // returns once the agent closed it (an unread yes: once it stalled)
	}{
		{"silent", func(ctx context.Context) error { return silentConn(ctx, addr) }},
		{"slow headers", func(ctx context.Context) error { return slowHeaders(ctx, addr) }},
		{"wrong token", func(ctx context.Context) error { return wrongToken(ctx, url) }},
		{"authenticated garbage", func(ctx context.Context) error { return authedGarbage(ctx, url, b.token) }},
		{"unread yes", func(ctx context.Context) error { return unreadYes(ctx, url, b.token, &stalled) }},
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	var (
		wg     sync.WaitGroup
		closed [5]atomic.Int64
		failed = make(chan string, 5*junkPerKind)
	)
	start := time.Now()
	for k, kind := range kinds {
		for range junkPerKind {
			wg.Go(func() {
				if err := kind.run(ctx); err != nil && !closedByAgent(err) {
					failed <- kind.name + ": " + err.Error()
					return
				}
				closed[k].Add(1)
			})
		}
	}
	// The legitimate client, in ten sessions of ten commands, meanwhile.
	ok := 0
	for s := range 10 {
		lc, _ := dialBoot(t, url, b.opts(), "")
		for i := range 10 {
			n := s*10 + i
			var out strings.Builder
			res, err := lc.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo $1; exit $(($1 % 7))", "sh", strconv.Itoa(n)}, Stdout: &out})
			if err != nil || res.ExitCode != n%7 || out.String() != fmt.Sprintf("%d\n", n) {
				t.Errorf("legitimate command %d: %+v %q %v", n, res, out.String(), err)
				continue
			}
			ok++
		}
		lc.Close()
	}
	t.Logf("legitimate client done after %s", time.Since(start).Round(time.Millisecond))
	wg.Wait()
	t.Logf("every junk connection closed after %s", time.Since(start).Round(time.Millisecond))
	close(failed)
	for f := range failed {
		t.Error(f)
	}
	// The unread yeses end with their connections, which the agent closes
	// when the keepalive goes unanswered (the clients hold theirs open).
	c, _ = dialBoot(t, url, b.opts(), "")
	testenv.Eventually(t, "every unread yes ended with its connection", func() bool {
		log, err := c.ExecLog(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range log {
			if e.Running {
				return false
			}
		}
		return true
	})
	c.Close()
	peak := rssKB(t, pid, "VmHWM")
	for k, kind := range kinds {
		t.Logf("%-22s %d of %d closed by the agent", kind.name, closed[k].Load(), junkPerKind)
	}
	t.Logf("legitimate commands: %d of %d; agent RSS %d KiB before, peak %d KiB (bound %d MiB)", ok, legitimate, before, peak, hostileRSSMB)
	if ok != legitimate {
		t.Fatalf("%d of %d legitimate commands succeeded", ok, legitimate)
	}
	if peak > hostileRSSMB<<10 {
		t.Fatalf("the agent's peak RSS is %d KiB, over %d MiB", peak, hostileRSSMB)
	}
	// And it still serves.
	c, _ = dialBoot(t, url, b.opts(), "")
	if _, err := c.Info(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// closedByAgent reports whether a junk connection failed because the agent
// closed it before the junk was done (a timeout that ran out under the
// load, in the TLS handshake, the upgrade or the session): that counts as
// closed.
func closedByAgent(err error) bool {
	for _, e := range []error{transport.ErrClosed, io.EOF, io.ErrUnexpectedEOF, syscall.ECONNRESET, syscall.EPIPE} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// rssKB reads a memory figure of pid from /proc (VmRSS, VmHWM), in KiB.
func rssKB(t *testing.T, pid int, field string) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// waitClosed reads from conn until the agent closes it.
func waitClosed(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 4096)
	for {
		if _, err := conn.Read(buf); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("not closed by the agent: %w", ctx.Err())
			}
			return nil
		}
	}
}

// silentConn connects and sends nothing: the TLS handshake times out.
func silentConn(ctx context.Context, addr string) error {
	conn, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(stranger)}}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return waitClosed(ctx, conn)
}

// slowHeaders completes TLS, then sends a request one byte at a time:
// the header timeout ends it.
func slowHeaders(ctx context.Context, addr string) error {
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(stranger)}}, Config: &tls.Config{InsecureSkipVerify: true}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	closed := make(chan error, 1)
	go func() { closed <- waitClosed(ctx, conn) }()
	req := "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: " + strings.Repeat("a", 1000)
	for i := range len(req) {
		select {
		case err := <-closed:
			return err
		case <-time.After(100 * time.Millisecond):
		}
		if _, err := conn.Write([]byte{req[i]}); err != nil {
			return <-closed
		}
	}
	return fmt.Errorf("sent %d header bytes and the agent still waits", len(req))
}

// rawLink is a wss:// link without the client library's handshake, from
// source address from: the attackers come from addresses of their own,
// so that their failures lock out only them.
func rawLink(ctx context.Context, url, from string) (*wslink.Link, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return wslink.Dial(ctx, url, "", wslink.Config{VerifyKey: func(ed25519.PublicKey) error { return nil }, NetDialContext: d.DialContext})
}

// Where the attackers come from; the legitimate client is 127.0.0.1.
const (
	guesser  = "127.0.0.2"
	insider  = "127.0.0.3" // holds the token, and abuses it
	stranger = "127.0.0.4"
)

// hello opens a session on conn and returns what a proof must cover.
func hello(ctx context.Context, conn *transport.Conn) (auth.Session, error) {
	nonce := auth.NewNonce()
	var res proto.HelloResult
	if err := conn.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: proto.Version, Nonce: nonce}, &res); err != nil {
		return auth.Session{}, err
	}
	if res.Auth == nil {
		return auth.Session{}, fmt.Errorf("no challenge in %+v", res)
	}
	key, err := auth.KeyFromBytes(res.Auth.Key)
	if err != nil {
		return auth.Session{}, err
	}
	return auth.Session{HostNonce: nonce, BoardNonce: res.Auth.Nonce, Board: auth.FingerprintOf(key)}, nil
}

// wrongToken tries wrong tokens until the agent closes the connection.
func wrongToken(ctx context.Context, url string) error {
	l, err := rawLink(ctx, url, guesser)
	if err != nil {
		return err
	}
	conn := transport.NewConn(l, transport.Config{Client: true})
	conn.Start()
	defer conn.Close()
	s, err := hello(ctx, conn)
	if err != nil {
		return err
	}
	for {
		err := conn.Call(ctx, proto.MethodAuth, proto.AuthParams{TokenProof: s.TokenProof("a-guess-at-the-token")}, nil)
		switch {
		case err == nil:
			return fmt.Errorf("a wrong token was accepted")
		case proto.IsReason(err, proto.ReasonUnauthorized):
			continue
		}
		select {
		case <-conn.Done():
			return nil
		case <-ctx.Done():
			return fmt.Errorf("not closed by the agent: %w", ctx.Err())
		}
	}
}

// authenticate opens an authenticated session on a raw link.
func authenticate(ctx context.Context, l transport.Link, token string) (*transport.Conn, error) {
	conn := transport.NewConn(l, transport.Config{Client: true})
	conn.Start()
	s, err := hello(ctx, conn)
	if err == nil {
		err = conn.Call(ctx, proto.MethodAuth, proto.AuthParams{TokenProof: s.TokenProof(token)}, nil)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// authedGarbage authenticates, sends malformed messages and DATA for
// streams that do not exist, then falls silent: the idle timeout ends it.
func authedGarbage(ctx context.Context, url, token string) error {
	l, err := rawLink(ctx, url, insider)
	if err != nil {
		return err
	}
	conn, err := authenticate(ctx, l, token)
	if err != nil {
		return err
	}
	defer conn.Close()
	for i := range 200 {
		_ = l.WriteMessage(ctx, transport.Text, []byte(`{"jsonrpc":"2.0","id":`+strconv.Itoa(i)+`,"method":`))
		_ = l.WriteMessage(ctx, transport.Binary, proto.AppendStreamFrame(nil, proto.FrameData, uint32(1000+2*i), make([]byte, 1024)))
	}
	select {
	case <-conn.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("not closed by the agent: %w", ctx.Err())
	}
}

// stallConn stops reading its socket once stall is closed: what it reads
// next (a ping, say) is swallowed and its reader blocks until Close, so
// nothing above it answers pings any more: a client that stopped reading.
type stallConn struct {
	net.Conn
	stall, closed chan struct{}
	once          sync.Once
}

func (c *stallConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	select {
	case <-c.stall:
		<-c.closed
		return 0, net.ErrClosed
	default:
		return n, err
	}
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// stalledConns are the connections of the unread yeses, which their
// clients hold open (without reading) until the test ends.
type stalledConns struct {
	mu    sync.Mutex
	conns []*transport.Conn
}

func (s *stalledConns) add(c *transport.Conn) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *stalledConns) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

// unreadYes starts `yes` with its output on a stream and stops reading
// its socket, holding it open: the agent's keepalive timeout ends the
// connection, and the command with it (the test sees the commands end).
func unreadYes(ctx context.Context, url, token string, held *stalledConns) error {
	stall := make(chan struct{})
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(insider)}}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &stallConn{Conn: conn, stall: stall, closed: make(chan struct{})}, nil
	}
	l, err := wslink.Dial(ctx, url, "", wslink.Config{VerifyKey: func(ed25519.PublicKey) error { return nil }, NetDialContext: dial})
	if err != nil {
		return err
	}
	conn, err := authenticate(ctx, l, token)
	if err != nil {
		return err
	}
	held.add(conn)
	out, err := conn.OpenStream()
	if err != nil {
		return err
	}
	if err := conn.Call(ctx, proto.MethodExecStart, proto.ExecStartParams{Argv: []string{"yes"}, Stdout: out.ID()}, nil); err != nil {
		return err
	}
	close(stall)
	return nil
}
