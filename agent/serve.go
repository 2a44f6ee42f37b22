package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/wslink"
)

// WebSocketServer serves the agent at wslink.Path over HTTP: wss:// with
// the board's key, or plain ws:// when asked for.
type WebSocketServer struct {
	agent  *Agent
	addr   string
	tls    bool
	log    *slog.Logger
	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc

	mu       sync.Mutex
	stopping bool
	conns    sync.WaitGroup
}

// NewWebSocketServer prepares a wss:// server on addr (host:port) with the
// board's key and a self-signed certificate. It listens on Start.
func NewWebSocketServer(a *Agent, addr string) *WebSocketServer {
	return &WebSocketServer{agent: a, addr: addr, tls: true, log: a.log}
}

// NewInsecureWebSocketServer prepares a plain ws:// server on addr: no
// encryption, though sessions still authenticate and the board still
// signs them. For a lab that cannot do TLS, and for demos on loopback.
func NewInsecureWebSocketServer(a *Agent, addr string) *WebSocketServer {
	return &WebSocketServer{agent: a, addr: addr, log: a.log}
}

// Start listens and serves in the background; a busy port fails here.
func (s *WebSocketServer) Start(context.Context) error {
	var tlsConf *tls.Config
	if s.tls {
		cert, err := auth.Certificate(s.agent.cfg.Auth.Key, s.agent.board.Identity().ID, time.Now())
		if err != nil {
			return err
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.addr, err)
	}
	limits := s.agent.cfg.Limits
	ctx, cancel := context.WithCancel(context.Background())
	s.ln, s.cancel = newLimitListener(ln, limits.MaxConns, s.log), cancel
	mux := http.NewServeMux()
	mux.Handle(wslink.Path, &wslink.Server{Context: ctx, Check: s.check, Config: wslink.Config{
		PingInterval: limits.KeepaliveTimeout / 3, PongWait: limits.KeepaliveTimeout, Logger: s.log},
		Serve: func(ctx context.Context, l *wslink.Link) {
			s.mu.Lock()
			if s.stopping {
				s.mu.Unlock()
				return
			}
			s.conns.Add(1)
			s.mu.Unlock()
			defer s.conns.Done()
			s.agent.ServeLink(ctx, l, s.peer(l))
		}})
	s.srv = &http.Server{Handler: mux,
		// Bounds the TLS handshake and the request's headers: a peer that
		// trickles them (slowloris) is cut off.
		ReadHeaderTimeout: limits.HandshakeTimeout,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       limits.HandshakeTimeout,
		TLSConfig:         tlsConf,
		// Handshakes that junk connections fail are not worth a log line
		// each; they show at debug level.
		ErrorLog: log.New(debugWriter{s.log}, "", 0),
	}
	serveLn := s.ln
	if tlsConf != nil {
		serveLn = tls.NewListener(wslink.BatchListener(s.ln), tlsConf)
	}
	go func() {
		if err := s.srv.Serve(serveLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("websocket server", "err", err)
		}
	}()
	if s.tls {
		s.log.Info("serving wss://", "addr", ln.Addr().String(), "fingerprint", s.agent.Fingerprint())
	} else {
		s.log.Warn("serving plain ws:// (--insecure-listen): traffic is not encrypted; sessions still authenticate",
			"addr", ln.Addr().String())
	}
	return nil
}

// sessions counts the WebSocket sessions open in this process, on every
// server: what the process does once the last has ended (give back the
// memory a session used) is the process's, not a server's.
var sessions struct {
	mu       sync.Mutex
	open     int
	next     int
	watchers map[int]func(open int)
}

// WatchSessions calls f with the number of sessions (of any link) open in
// this process each time one begins or ends, in that order, until stop
// is called. f runs with the count locked: it must be quick, and must
// neither begin nor end a session.
func WatchSessions(f func(open int)) (stop func()) {
	sessions.mu.Lock()
	defer sessions.mu.Unlock()
	if sessions.watchers == nil {
		sessions.watchers = map[int]func(int){}
	}
	id := sessions.next
	sessions.next++
	sessions.watchers[id] = f
	return func() {
		sessions.mu.Lock()
		defer sessions.mu.Unlock()
		delete(sessions.watchers, id)
	}
}

// countSession adds delta to the open sessions and tells the watchers.
func countSession(delta int) {
	sessions.mu.Lock()
	defer sessions.mu.Unlock()
	sessions.open += delta
	for _, f := range sessions.watchers {
		f(sessions.open)
	}
}

// peer describes the peer of an upgraded link, with the Bearer token it
// presented, if any (check already verified it), and the hello answered
// on the upgrade.
func (s *WebSocketServer) peer(l *wslink.Link) Peer {
	p := l.Peer()
	out := Peer{Addr: p.Addr, Link: "ws"}
	if s.tls {
		out.Link = "wss"
	}
	if u, ok := p.Info.(upgraded); ok {
		if u.bearer {
			out.Auth, out.Host = proto.AuthBearer, u.token
		}
		out.hello = u.hello
	}
	return out
}

// upgraded is what check saw on the upgrade, from check to peer: a Bearer
// token presented and its name, and the hello answered.
type upgraded struct {
	bearer bool
	token  string
	hello  *upgradeHello
}

// check refuses what a browser could send (DNS rebinding: a page whose
// name resolves to the board), checks a Bearer token when the upgrade
// carries one (without one the session authenticates in-band), and
// answers a hello on the upgrade (protocol.md 2.7).
func (s *WebSocketServer) check(w http.ResponseWriter, r *http.Request) (any, bool) {
	if origin := r.Header.Get("Origin"); origin != "" {
		s.log.Warn("refused a request with an Origin header (a browser?)", "peer", r.RemoteAddr, "origin", origin, "host", r.Host)
		http.Error(w, "boardlink: requests from web pages are refused", http.StatusForbidden)
		return nil, false
	}
	if !s.hostAllowed(r.Host) {
		s.log.Warn("refused a request for a foreign Host", "peer", r.RemoteAddr, "host", r.Host)
		http.Error(w, "boardlink: Host names another server", http.StatusMisdirectedRequest)
		return nil, false
	}
	var u upgraded
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			http.Error(w, "boardlink: Authorization must be Bearer TOKEN", http.StatusUnauthorized)
			return nil, false
		}
		name, err := s.agent.auth.plainToken(r.RemoteAddr, tok, "the bearer token")
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="boardlink"`)
			status := http.StatusUnauthorized
			if lo, ok := errors.AsType[*lockedOut](err); ok {
				status = http.StatusTooManyRequests
				w.Header().Set("Retry-After", strconv.Itoa(int(lo.wait.Seconds())+1))
			}
			http.Error(w, "boardlink: "+err.Error(), status)
			return nil, false
		}
		u.bearer, u.token = true, name
	}
	if v := r.Header.Get(proto.HelloHeader); v != "" {
		var answer string
		if answer, u.hello = s.agent.helloOnUpgrade(v, u.bearer || s.agent.cfg.Auth.NoAuth); answer != "" {
			w.Header().Set(proto.HelloHeader, answer)
		}
	}
	return u, true
}

// hostAllowed accepts a Host that is an address, localhost, an mDNS name
// or the board's own names: what a host tool dials. A DNS name of a lab's
// own is fine too: the browser's way in is refused by the Origin check,
// and this one refuses the names a rebinding page would most likely use
// only when the agent listens on loopback, where no lab name can lead.
func (s *WebSocketServer) hostAllowed(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	if host == "localhost" || strings.HasSuffix(host, ".local") || host == strings.ToLower(s.agent.board.Identity().ID) {
		return true
	}
	addr, ok := s.ln.Addr().(*net.TCPAddr)
	return ok && !addr.IP.IsLoopback()
}

// Addr is the address actually listened on (useful with port 0).
func (s *WebSocketServer) Addr() net.Addr { return s.ln.Addr() }

// URL is the address hosts dial: wss://ADDR, or ws://ADDR.
func (s *WebSocketServer) URL() string {
	if s.tls {
		return "wss://" + s.Addr().String()
	}
	return "ws://" + s.Addr().String()
}

// Stop closes the listener and every connection, waiting for them to end.
func (s *WebSocketServer) Stop(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.cancel()
	err := s.srv.Shutdown(ctx) // hijacked WebSocket connections are ended by cancel
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}

// limitListener closes connections beyond max at once, before any TLS
// work is spent on them, and logs how many it refused, at most once a
// minute.
type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
	log     *slog.Logger
	lastLog atomic.Int64 // unix seconds
}

func newLimitListener(ln net.Listener, max int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), log: log}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			c.Close()
			n := l.refused.Add(1)
			if now := time.Now().Unix(); now-l.lastLog.Load() >= 60 {
				l.lastLog.Store(now)
				l.log.Warn("connection limit reached: connections refused", "max_conns", l.max, "refused_so_far", n)
			}
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// countedConn gives its slot back once, when closed.
type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// debugWriter logs the HTTP server's own messages at debug level.
type debugWriter struct{ log *slog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug("http server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}
