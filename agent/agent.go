package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardlink/boardlink/agent/fetch"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Board is what the agent needs from the board it runs on.
type Board interface {
	Identity() board.Identity
	BootID() string
	BootedAt() time.Time
}

// Config configures an Agent.
type Config struct {
	// Auth says who may use the agent; its Key is required.
	Auth   AuthConfig
	Logger *slog.Logger
	// Roots are the directories file requests may touch (absolute paths);
	// none: the file methods refuse every path.
	Roots []string
	// CacheDir holds file.download's content-addressed package cache and
	// its partial downloads; "" keeps no cache.
	CacheDir string
	// Reboot restarts the board. The agent calls it once, in its own
	// goroutine, after system.reboot's answer has been sent; it must stop
	// the agent cleanly (ending running commands) and reboot. Nil:
	// system.reboot is not served.
	Reboot func()
	// OTA runs A/B updates; nil: the ota family is not served.
	OTA *ota.Updater
	// Limits bound what peers may make the agent hold (zero: defaults).
	Limits Limits
}

// Agent serves the protocol for one board.
type Agent struct {
	board Board
	execs *Execs
	cfg   Config
	log   *slog.Logger
	seq   atomic.Uint64 // transfer ids

	fetcher *fetch.Fetcher
	auth    *authority

	mu       sync.Mutex
	claimed  map[string]chan struct{} // targets of transfers under way; closed on release
	rebooted bool
}

// New returns an agent for b whose commands run under execs.
func New(b Board, execs *Execs, cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	// Every line names the board: one log collector serves a whole lab.
	log := cfg.Logger.With("board", b.Identity().ID)
	a := &Agent{board: b, execs: execs, cfg: cfg, log: log, claimed: map[string]chan struct{}{},
		fetcher: fetch.New(fetch.Options{CacheDir: cfg.CacheDir, Logger: log})}
	a.auth = newAuthority(cfg.Auth, func() string { return b.Identity().ID }, log)
	return a
}

// Fingerprint is the fingerprint of the board's key.
func (a *Agent) Fingerprint() auth.Fingerprint { return a.auth.fp }

// claim marks key (a transfer's target) as in use. If it is, claim waits
// a little: a push retried after a cut link often arrives before the old
// transfer noticed the cut.
func (a *Agent) claim(key string) bool {
	deadline := time.After(claimWait)
	for {
		a.mu.Lock()
		held, busy := a.claimed[key]
		if !busy {
			a.claimed[key] = make(chan struct{})
			a.mu.Unlock()
			return true
		}
		a.mu.Unlock()
		select {
		case <-held:
		case <-deadline:
			return false
		}
	}
}

// claimWait bounds how long a transfer waits for another on its target.
const claimWait = 5 * time.Second

func (a *Agent) release(key string) {
	a.mu.Lock()
	close(a.claimed[key])
	delete(a.claimed, key)
	a.mu.Unlock()
}

// Capabilities lists the method families and features this agent serves.
func (a *Agent) Capabilities() []string {
	caps := []string{proto.CapExec, proto.CapExecDetach, proto.CapTCP}
	if len(a.cfg.Roots) > 0 {
		caps = append(caps, proto.CapFile, proto.CapDownload, proto.CapFrames)
	}
	if a.cfg.Reboot != nil {
		caps = append(caps, proto.CapReboot)
	}
	if a.cfg.OTA != nil {
		caps = append(caps, proto.CapOTA)
	}
	if a.cfg.Auth.Pairing && a.cfg.Auth.PairedFile != "" {
		caps = append(caps, proto.CapPair)
	}
	return caps
}

// Info answers board.info.
func (a *Agent) Info(ctx context.Context) proto.BoardInfo {
	id := a.board.Identity()
	host, _ := os.Hostname()
	booted := a.board.BootedAt()
	return proto.BoardInfo{
		ID: id.ID, Model: id.Model, Labels: id.Labels, Hostname: host,
		Arch: runtime.GOARCH, Agent: version.Version, Protocol: proto.Version,
		BootID: a.board.BootID(), BootedAt: booted, UptimeMs: time.Since(booted).Milliseconds(),
		Slots: a.slots(ctx), Capabilities: a.Capabilities(), Fingerprint: a.auth.fp.String(),
	}
}

// slots reports the A/B slots, when the agent runs updates.
func (a *Agent) slots(ctx context.Context) []proto.Slot {
	out := []proto.Slot{}
	if a.cfg.OTA == nil {
		return out
	}
	st, err := a.cfg.OTA.Status(ctx)
	if err != nil {
		a.log.Warn("slots", "err", err)
		return out
	}
	for _, s := range st.Slots {
		out = append(out, proto.Slot{Name: s.Name, Version: s.Version, Booted: s.Booted, Active: s.Active})
	}
	return out
}

// bootedSlot is the slot running now (zero when unknown).
func (a *Agent) bootedSlot(ctx context.Context) proto.Slot {
	for _, s := range a.slots(ctx) {
		if s.Booted {
			return s
		}
	}
	return proto.Slot{}
}

// beaconWait bounds the boot loader's answer for a beacon: a beacon goes
// out every second, and one without its slot is better than a late one.
const beaconWait = 500 * time.Millisecond

// Beacon is the payload the agent announces on an idle serial line.
func (a *Agent) Beacon() []byte {
	ctx, cancel := context.WithTimeout(context.Background(), beaconWait)
	defer cancel()
	id := a.board.Identity()
	slot := a.bootedSlot(ctx)
	b, _ := json.Marshal(proto.Beacon{
		ID: id.ID, Model: id.Model, Protocol: proto.Version, Capabilities: a.Capabilities(),
		Version: version.Version, BootID: a.board.BootID(), Labels: id.Labels, Slot: slot.Name,
		SlotVersion: slot.Version, Fingerprint: a.auth.fp.Short(),
	})
	return b
}

// Peer describes the other end of a connection, for authentication and
// the log.
type Peer struct {
	// Addr is the remote address, or the serial line's name.
	Addr string
	// Link names the link: wss, ws or serial.
	Link string
	// Auth, when set, says how the peer was authenticated before the
	// session began (proto.AuthBearer: a token on the upgrade), and Host
	// which token it was.
	Auth, Host string
	// hello is the session.hello answered on the upgrade, if any.
	hello *upgradeHello
}

// ServeLink serves one connection until it ends or ctx is canceled. Until
// the peer authenticates (Peer.Auth, session.auth, a pairing, or the
// agent's NoAuth) only session.hello, session.auth and pair.* are served,
// and a peer that has not authenticated within the handshake timeout is
// disconnected. An authenticated connection idle for the idle timeout is
// closed too.
func (a *Agent) ServeLink(ctx context.Context, l transport.Link, peer Peer) {
	countSession(1) // the idle trim waits for the last session of any link
	defer countSession(-1)
	s := &session{a: a, peer: peer, owned: map[string]*Command{}, transfers: map[string]*transfer{}, started: time.Now(),
		results: a.execs.NewHolder()}
	switch {
	case peer.Auth != "":
		s.authenticated(peer.Auth, peer.Host)
		s.logAuth() // every session is logged with how it authenticated
	case a.cfg.Auth.NoAuth:
		s.authenticated(proto.AuthNoAuth, "")
	}
	if h := peer.hello; h != nil {
		s.authSess, s.protocol = h.sess, h.protocol
	}
	c := transport.NewConn(l, transport.Config{Handler: s, Logger: a.log,
		MaxInflight: a.cfg.Limits.MaxInflight, MaxStreams: a.cfg.Limits.MaxStreams})
	s.conn = c
	c.Start()
	go s.handshakeDeadline()
	s.mu.Lock() // checkIdle may run before this returns, with a tiny timeout
	s.idle = time.AfterFunc(a.cfg.Limits.IdleTimeout, s.checkIdle)
	s.mu.Unlock()
	select {
	case <-c.Done():
	case <-ctx.Done():
		c.Close()
	}
	s.mu.Lock()
	s.idle.Stop()
	s.mu.Unlock()
	s.end()
	a.auth.endSession(s)
	if s.authed.Load() {
		a.log.Info("session ended", "peer", peer.Addr, "link", peer.Link, "auth", s.method, "host", s.host,
			"duration", time.Since(s.started).Round(time.Millisecond), "err", c.Err())
	}
}

// session is one connection's state.
type session struct {
	a       *Agent
	peer    Peer
	conn    *transport.Conn
	started time.Time
	authed  atomic.Bool
	idle    *time.Timer

	mu       sync.Mutex
	method   string              // how the peer authenticated
	host     string              // and as whom
	authSess auth.Session        // this session's nonces, from session.hello
	failures int                 // failed proofs on this connection
	protocol int                 // the version the last session.hello negotiated; 0: none (see checkVersion)
	inflight int                 // requests being served
	lastUse  time.Time           // when the last request ended
	owned    map[string]*Command // commands that die with this connection
	// results keeps the results of this connection's commands until it
	// collects them, or for the result grace after it ends.
	results *Holder
	// transfers are this connection's pushes and pulls, until file.wait
	// collects them.
	transfers map[string]*transfer
	tcp       *tcpTable // its listeners (tcp.listen), made on first use
	ended     bool      // end ran: nothing new may outlive the connection
}

// handshakeDeadline closes the connection if its peer has not
// authenticated within the handshake timeout, unless it is pairing (a
// person is typing the code).
func (s *session) handshakeDeadline() {
	timeout := s.a.cfg.Limits.HandshakeTimeout
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case <-s.conn.Done():
			return
		case <-t.C:
		}
		switch {
		case s.authed.Load():
			return
		case s.a.auth.pairing(s):
			t.Reset(timeout)
		default:
			s.a.log.Debug("session: not authenticated in time: closed", "peer", s.peer.Addr, "link", s.peer.Link, "timeout", timeout)
			s.conn.Close()
			return
		}
	}
}

// authenticated marks the session authenticated as host, by method.
func (s *session) authenticated(method, host string) {
	s.mu.Lock()
	s.method, s.host = method, host
	s.mu.Unlock()
	s.authed.Store(true)
}

// checkIdle closes the connection if it has been idle for the idle
// timeout: no request served, no command of its own running.
func (s *session) checkIdle() {
	timeout := s.a.cfg.Limits.IdleTimeout
	s.mu.Lock()
	busy := s.inflight > 0 || len(s.owned) > 0
	since := time.Since(s.lastUse)
	if s.lastUse.IsZero() {
		since = time.Since(s.started)
	}
	s.mu.Unlock()
	if busy || since < timeout {
		s.mu.Lock()
		s.idle.Reset(max(timeout-since, time.Second))
		s.mu.Unlock()
		return
	}
	s.a.log.Info("session idle: closed", "peer", s.peer.Addr, "link", s.peer.Link, "idle", since.Round(time.Second))
	s.conn.Close()
}

// end kills the commands the connection owned that are still running,
// and starts the grace period of the results it did not collect.
func (s *session) end() {
	s.results.Release()
	s.mu.Lock()
	for id := range s.owned {
		s.a.execs.Kill(id)
	}
	s.owned = nil
	s.ended = true
	tcp := s.tcp
	s.mu.Unlock()
	if tcp != nil {
		tcp.close()
	}
}

// unauthenticated lists what a session may call before it authenticated.
var unauthenticated = map[string]bool{
	proto.MethodHello: true, proto.MethodAuth: true,
	proto.MethodPairBegin: true, proto.MethodPairExchange: true, proto.MethodPairConfirm: true,
}

func (s *session) Handle(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	if r.Notification {
		return nil, nil // the agent takes no notifications
	}
	start := time.Now()
	res, err := s.handle(ctx, c, r)
	s.a.log.Debug("call", "method", r.Method, "peer", s.peer.Addr, "link", s.peer.Link,
		"took", time.Since(start).Round(time.Microsecond), "reason", proto.ReasonOf(err))
	return res, err
}

// handle answers one request.
func (s *session) handle(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	if !s.authed.Load() && !unauthenticated[r.Method] {
		return nil, proto.Errorf(proto.ReasonUnauthorized,
			"authenticate first: session.hello with a nonce, then session.auth (a paired host's key or a token), or pair with boardlink pair")
	}
	if err := s.checkVersion(r.Method); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.inflight++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inflight--
		s.lastUse = time.Now()
		s.mu.Unlock()
	}()
	switch r.Method {
	case proto.MethodHello:
		return s.hello(r.Params)
	case proto.MethodAuth:
		return s.authenticate(r.Params)
	case proto.MethodPairBegin:
		var p proto.PairBeginParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return s.a.auth.pairBegin(s, p)
	case proto.MethodPairExchange:
		var p proto.PairExchangeParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return s.a.auth.pairExchange(s, p)
	case proto.MethodPairConfirm:
		var p proto.PairConfirmParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		host, err := s.a.auth.pairConfirm(s, p)
		if err != nil {
			return nil, s.failed(err)
		}
		s.authenticated(proto.AuthKey, host.Name)
		return proto.PairConfirmResult{BoardID: s.a.board.Identity().ID}, nil
	}
	switch r.Method {
	case proto.MethodBoardInfo:
		var p proto.BoardInfoParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return s.a.Info(ctx), nil
	case proto.MethodExecStart:
		return s.execStart(c, r.Params)
	case proto.MethodExecRun:
		return s.execRun(ctx, c, r.Params)
	case proto.MethodExecWait:
		var p proto.ExecWaitParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return s.a.execs.Wait(ctx, p.ID)
	case proto.MethodExecCancel:
		var p proto.ExecCancelParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return nil, s.a.execs.Cancel(p.ID, p.Signal)
	case proto.MethodExecResize:
		return s.execResize(r.Params)
	case proto.MethodExecLog:
		var p proto.ExecLogParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return proto.ExecLogResult{Entries: s.a.execs.Log(p.Limit)}, nil
	case proto.MethodFileStat:
		return s.fileStat(r.Params)
	case proto.MethodFilePush:
		return s.filePush(c, r)
	case proto.MethodFilePull:
		return s.filePull(c, r)
	case proto.MethodFileWait:
		return s.fileWait(ctx, r.Params)
	case proto.MethodFileDownload:
		return s.fileDownload(ctx, c, r.Params)
	case proto.MethodOTAStatus, proto.MethodOTAPlan, proto.MethodOTAStart, proto.MethodOTAWrite,
		proto.MethodOTAActivate, proto.MethodOTAWait, proto.MethodOTAAbort, proto.MethodOTACommit, proto.MethodOTARollback:
		if s.a.cfg.OTA != nil {
			return s.otaCall(ctx, c, r)
		}
	case proto.MethodTCPDial, proto.MethodTCPListen, proto.MethodTCPAccept, proto.MethodTCPUnlisten:
		return s.tcpCall(ctx, c, r)
	case proto.MethodSystemReboot:
		if s.a.cfg.Reboot != nil {
			return s.a.reboot(r)
		}
	}
	return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
}

// reboot answers system.reboot, then hands the board to cfg.Reboot, once:
// a second request while the first is under way is busy.
func (a *Agent) reboot(r *transport.Request) (any, error) {
	var p proto.RebootParams
	if err := proto.DecodeParams(r.Params, &p); err != nil {
		return nil, err
	}
	a.mu.Lock()
	already := a.rebooted
	a.rebooted = true
	a.mu.Unlock()
	if already {
		return nil, proto.Errorf(proto.ReasonBusy, "a reboot is under way")
	}
	running := a.execs.Running()
	a.log.Info("reboot requested", "running_commands", running)
	r.AfterReply = func() { go a.cfg.Reboot() }
	return proto.RebootResult{BootID: a.board.BootID(), Commands: running}, nil
}

func (s *session) hello(params json.RawMessage) (any, error) {
	var p proto.HelloParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	res, sess, err := s.a.helloResult(p)
	if err != nil {
		return nil, err
	}
	if p.Nonce != nil {
		s.mu.Lock()
		s.authSess = sess
		s.mu.Unlock()
	}
	if p.Token != "" && !s.authed.Load() {
		// A client older than protocol 4 sends the token itself.
		name, err := s.a.auth.plainToken(s.peer.Addr, p.Token, "the token")
		if err != nil {
			return nil, s.failed(err)
		}
		s.authenticated(proto.AuthToken, name)
		s.logAuth()
	}
	res.Authenticated = s.authed.Load()
	s.mu.Lock()
	s.protocol = res.Protocol
	s.mu.Unlock()
	return res, nil
}

// helloResult answers session.hello's p, with the board's proof when p has
// a nonce, and the session's nonces that proof opens; the caller says
// whether the session is authenticated.
func (a *Agent) helloResult(p proto.HelloParams) (proto.HelloResult, auth.Session, error) {
	if p.Protocol < proto.MinVersion {
		return proto.HelloResult{}, auth.Session{}, proto.Errorf(proto.ReasonIncompatible,
			"protocol %d is not served; this agent speaks %d to %d", p.Protocol, proto.MinVersion, proto.Version)
	}
	res := proto.HelloResult{Protocol: min(p.Protocol, proto.Version), Agent: version.Version,
		BoardID: a.board.Identity().ID, Capabilities: a.Capabilities()}
	var sess auth.Session
	if p.Nonce != nil {
		res.Auth, sess = a.auth.challenge(p.Nonce)
	}
	return res, sess, nil
}

// upgradeHello is a session.hello answered on the WebSocket upgrade
// (protocol.md 2.7): the session starts with its nonces and version.
type upgradeHello struct {
	sess     auth.Session
	protocol int
}

// helloOnUpgrade answers the HelloHeader of an upgrade request: the
// header to answer with, and what the session starts with. Anything it
// does not serve (bad params, no nonce, a token, an old protocol) gets no
// answer: the client then says hello in-band, where the error is named.
func (a *Agent) helloOnUpgrade(value string, authenticated bool) (string, *upgradeHello) {
	raw, err := proto.HelloHeaderJSON(value)
	if err != nil {
		return "", nil
	}
	var p proto.HelloParams
	if perr := proto.DecodeParams(raw, &p); perr != nil || p.Nonce == nil || p.Token != "" {
		return "", nil
	}
	res, sess, err := a.helloResult(p)
	if err != nil {
		return "", nil
	}
	res.Authenticated = authenticated
	answer, err := proto.EncodeHelloHeader(res)
	if err != nil {
		return "", nil
	}
	return answer, &upgradeHello{sess: sess, protocol: res.Protocol}
}

// checkVersion refuses a method newer than the session's version, naming
// the version that added it. A session that never said hello speaks the
// agent's version: since protocol 4 a session says hello to authenticate,
// so only a peer authenticated before the session began (a Bearer token on
// the WebSocket upgrade) or served by an agent with --no-auth gets here
// without one. Those are clients written against this agent, or clients of
// versions 1 to 3 that skipped hello on WebSocket and were served every
// method then: the agent's version keeps them working.
func (s *session) checkVersion(method string) error {
	s.mu.Lock()
	v := s.protocol
	s.mu.Unlock()
	if v == 0 {
		v = proto.Version
	}
	if err := proto.CheckMethodVersion(method, v); err != nil {
		return err
	}
	return nil // not the nil *proto.Error: that is a non-nil error
}

// authenticate checks session.auth's proofs against this session's nonces.
func (s *session) authenticate(params json.RawMessage) (any, error) {
	var p proto.AuthParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	s.mu.Lock()
	sess := s.authSess
	s.mu.Unlock()
	if sess.HostNonce == nil {
		return nil, proto.Errorf(proto.ReasonInvalidRequest, "session.hello with a nonce must come before session.auth")
	}
	res, err := s.a.auth.verify(s.peer.Addr, sess, p)
	if err != nil {
		return nil, s.failed(err)
	}
	s.authenticated(res.Method, res.Host)
	s.logAuth()
	return res, nil
}

// failed counts a failed proof; the connection is closed after a few.
func (s *session) failed(err error) error {
	s.mu.Lock()
	s.failures++
	n := s.failures
	s.mu.Unlock()
	if n >= maxAuthFailures {
		s.a.log.Warn("session: too many failed proofs: closed", "peer", s.peer.Addr, "link", s.peer.Link, "failures", n)
		go s.conn.Close() // after the answer has gone out, as far as it can
	}
	return err
}

func (s *session) logAuth() {
	s.mu.Lock()
	method, host := s.method, s.host
	s.mu.Unlock()
	s.a.log.Info("session", "peer", s.peer.Addr, "link", s.peer.Link, "auth", method, "host", host)
}

// attach takes up the stream the peer named in field: a busy connection
// (too many streams) is busy, any other refusal the field's fault.
func attach(c *transport.Conn, field string, id uint32) (*transport.Stream, error) {
	st, err := c.AttachStream(id)
	if err != nil && !proto.IsReason(err, proto.ReasonBusy) {
		err = proto.InvalidField(field, "stream", "%v", err)
	}
	return st, err
}

// execStart attaches the caller's streams and starts the command. The
// streams are closed when the command ends.
func (s *session) execStart(c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.ExecStartParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	var (
		streams []*transport.Stream
		io      ExecIO
	)
	closeAll := func() {
		for _, st := range streams {
			st.Close()
		}
	}
	for _, want := range []struct {
		field string
		id    uint32
		set   func(*transport.Stream)
	}{
		{"stdin", p.Stdin, func(st *transport.Stream) { io.Stdin = st }},
		{"stdout", p.Stdout, func(st *transport.Stream) { io.Stdout = st }},
		{"stderr", p.Stderr, func(st *transport.Stream) { io.Stderr = st }},
	} {
		if want.id == 0 {
			continue
		}
		st, err := attach(c, want.field, want.id)
		if err != nil {
			closeAll()
			return nil, err
		}
		streams = append(streams, st)
		want.set(st)
	}
	cmd, err := s.results.Start(p, io)
	if err != nil {
		closeAll()
		return nil, err
	}
	if !p.Detach {
		s.mu.Lock()
		if s.owned == nil { // the connection ended while we started
			s.mu.Unlock()
			s.a.execs.Kill(cmd.ID())
		} else {
			s.owned[cmd.ID()] = cmd
			s.mu.Unlock()
		}
	}
	go func() {
		<-cmd.Done()
		closeAll()
		s.mu.Lock()
		delete(s.owned, cmd.ID())
		s.mu.Unlock()
	}()
	return proto.ExecStartResult{ID: cmd.ID(), PID: cmd.PID()}, nil
}
