package linemux

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// helloTimeout bounds a client's Hello.
const helloTimeout = 5 * time.Second

// cleanupTimeout bounds what the mux does for a client that left: TERM
// to its commands and collecting their results, closing its listeners.
const cleanupTimeout = 30 * time.Second

// noteQueue bounds the notifications waiting for a slow client; beyond
// it they are dropped (progress is the newest that counts).
const noteQueue = 64

// client is one connection to the mux.
type client struct {
	m     *Mux
	sc    *lineshare.Conn
	conn  *transport.Conn
	notes chan *transport.Request

	mu    sync.Mutex
	agent *dispatcher.Client // the session its calls go to, set before it is served
	execs map[string]bool    // commands it started and has not seen end
	gone  bool
}

// serveClient checks the peer, reads its Hello and serves it until it
// leaves or the mux ends.
func (m *Mux) serveClient(ctx context.Context, nc *net.UnixConn) {
	sc := lineshare.NewConn(nc)
	defer sc.Close()
	if err := lineshare.CheckPeer(nc, m.uid); err != nil {
		m.log.Warn("line mux: client refused", "err", err)
		_ = nc.SetDeadline(time.Now().Add(helloTimeout))
		_, _ = sc.ReadHello() // so that it reads why, not a reset
		_ = sc.WriteWelcome(lineshare.Welcome{Version: lineshare.Version, PID: os.Getpid(), Line: m.cfg.Addr, Error: err.Error()})
		return
	}
	_ = nc.SetReadDeadline(time.Now().Add(helloTimeout))
	h, err := sc.ReadHello()
	if err != nil {
		m.log.Debug("line mux: no hello", "err", err)
		return
	}
	_ = nc.SetReadDeadline(time.Time{})
	c := &client{m: m, sc: sc, execs: map[string]bool{}, notes: make(chan *transport.Request, noteQueue)}
	m.mu.Lock()
	m.clients[c] = struct{}{}
	m.mu.Unlock()
	m.wakeIdle()
	defer m.clientGone(c)
	w := lineshare.Welcome{Version: lineshare.Version, PID: os.Getpid(), Line: m.cfg.Addr}
	// The console from now on, kept until the welcome is out: what a board
	// prints while the client waits for its agent (a boot after a reboot)
	// is the text a reboot --wait is there for.
	var s *sink
	if h.Console || h.Ring {
		s = newSink(sc)
		w.Console = m.hub.add(s, h.Ring, h.Resume, h.Since)
		defer m.hub.remove(s)
		defer s.close()
	}
	if !h.ConsoleOnly {
		// A caller gets the session's hello at once: the dial, if one is
		// needed, is the only wait.
		a, err := m.waitAgent(ctx, nc)
		if err != nil {
			w.Error = err.Error()
			_ = sc.WriteWelcome(w)
			return
		}
		hello := a.Hello()
		w.Hello, c.agent = &hello, a
	}
	if err := sc.WriteWelcome(w); err != nil {
		return
	}
	if s != nil {
		m.wg.Go(s.run)
	}
	link := sc.Link(nil)
	if h.ConsoleOnly {
		// A viewer: it sends nothing more; its end ends it.
		_, _, _ = link.ReadMessage()
		return
	}
	c.conn = transport.NewConn(link, transport.Config{Handler: c, Logger: m.log})
	c.conn.Start()
	c.watch(c.agent)
	m.wg.Go(c.sendNotes)
	select {
	case <-c.conn.Done():
	case <-ctx.Done():
		c.conn.Close()
	}
	c.leave()
}

// waitAgent waits for the session with the agent on behalf of a client
// that has said its Hello and awaits its Welcome: a client that leaves
// meanwhile (its call timed out, the board is off) ends the wait, so that
// a mux whose clients all gave up still ends when idle.
func (m *Mux) waitAgent(ctx context.Context, nc *net.UnixConn) (*dispatcher.Client, error) {
	wait, stop := context.WithCancel(ctx)
	defer stop()
	left := make(chan error, 1)
	go func() {
		var b [1]byte
		n, err := nc.Read(b[:]) // nothing is due: only its end, or the deadline below
		if n > 0 {
			err = errors.New("the client spoke before its welcome")
		}
		stop()
		left <- err
	}()
	a, err := m.agentClient(wait, ctx)
	_ = nc.SetReadDeadline(time.Now())
	rerr := <-left
	_ = nc.SetReadDeadline(time.Time{})
	if !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return nil, fmt.Errorf("client gone: %w", rerr)
	}
	return a, err
}

// watch closes the client's connection when the session it uses ends,
// as a direct link would end.
func (c *client) watch(a *dispatcher.Client) {
	done := a.Conn().Done()
	c.m.wg.Go(func() {
		select {
		case <-done:
			c.conn.Close()
		case <-c.conn.Done():
		}
	})
}

// Handle serves one of the client's calls on the agent's session.
func (c *client) Handle(ctx context.Context, conn *transport.Conn, r *transport.Request) (any, error) {
	if r.Notification {
		return nil, nil
	}
	switch r.Method {
	case proto.MethodAuth, proto.MethodPairBegin, proto.MethodPairExchange, proto.MethodPairConfirm:
		return nil, proto.Errorf(proto.ReasonInvalidRequest,
			"%s: the line mux's session with the board is authenticated already, and is not paired through it", r.Method)
	}
	a := c.agent
	if r.Method == proto.MethodHello {
		return c.hello(ctx, a, r.Params)
	}
	params, streams, err := c.rewrite(a, r.Params)
	if err != nil {
		return nil, err
	}
	callCtx := ctx
	switch r.Method {
	case proto.MethodExecStart, proto.MethodExecRun, proto.MethodTCPListen:
		// What it makes is the client's to end: take the answer (and
		// exec.run's exec.started) even if the client is going, so the
		// mux can end it then.
		callCtx = context.WithoutCancel(ctx)
	}
	var res json.RawMessage
	err = a.Conn().Call(callCtx, r.Method, params, &res)
	c.m.dropTokens(c, params)
	if err != nil {
		for _, s := range streams {
			s.Reset("canceled")
		}
		if proto.ReasonOf(err) == "" && ctx.Err() == nil {
			// The session with the agent failed (a reboot, a reset): the
			// client's link fails too, as a direct one would, never an
			// answer the board did not give.
			c.conn.Close()
		}
		return nil, err
	}
	c.track(a, r.Method, r.Params, res)
	return res, nil
}

// hello forwards session.hello, so the client checks the board's proof
// itself, at the version the mux's session speaks (a client's lower
// version must not lower it for the others); the answer names the
// client's version, and that the session is authenticated.
func (c *client) hello(ctx context.Context, a *dispatcher.Client, raw json.RawMessage) (any, error) {
	var p proto.HelloParams
	if err := proto.DecodeParams(raw, &p); err != nil {
		return nil, err
	}
	if p.Protocol < proto.MinVersion {
		return nil, proto.Errorf(proto.ReasonIncompatible, "protocol %d is not served; this line mux speaks %d to %d",
			p.Protocol, proto.MinVersion, proto.Version)
	}
	fwd := proto.HelloParams{Protocol: a.Hello().Protocol, Client: p.Client, Nonce: p.Nonce}
	var res proto.HelloResult
	if err := a.Conn().Call(ctx, proto.MethodHello, fwd, &res); err != nil {
		return nil, err
	}
	res.Protocol = min(res.Protocol, p.Protocol)
	return res, nil
}

// streamKeys are the params that name streams the caller opened;
// tokenKeys those that name a token the agent's notifications echo
// (progress, and exec.started for exec.run).
var (
	streamKeys = []string{"stream", "stdin", "stdout", "stderr", "stdin_stream"}
	tokenKeys  = []string{"progress", "started"}
)

// rewrite bridges each stream the params name to a stream the mux opens
// on the agent's session, and renames a progress token; it returns the
// params to forward.
func (c *client) rewrite(a *dispatcher.Client, raw json.RawMessage) (json.RawMessage, []*transport.Stream, error) {
	var obj map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &obj) != nil {
		return raw, nil, nil // not an object: nothing to rename
	}
	var opened []*transport.Stream
	fail := func(err error) (json.RawMessage, []*transport.Stream, error) {
		for _, s := range opened {
			s.Reset("canceled")
		}
		return nil, nil, err
	}
	changed := false
	for _, k := range streamKeys {
		var id uint32
		if v, ok := obj[k]; !ok || json.Unmarshal(v, &id) != nil || id == 0 {
			continue // absent, or not a stream (exec.run's stdin is bytes)
		}
		cs, err := c.conn.AttachStream(id)
		if err != nil {
			return fail(err)
		}
		as, err := a.Conn().OpenStream()
		if err != nil {
			cs.Reset("busy")
			return fail(err)
		}
		opened = append(opened, cs, as)
		obj[k] = json.RawMessage(fmt.Sprint(as.ID()))
		changed = true
		c.m.wg.Go(func() { pump(as, cs) })
		c.m.wg.Go(func() { pump(cs, as) })
	}
	for _, k := range tokenKeys {
		var tok string
		if v, ok := obj[k]; ok && json.Unmarshal(v, &tok) == nil && tok != "" {
			b, _ := json.Marshal(c.m.renameToken(c, tok))
			obj[k] = b
			changed = true
		}
	}
	if !changed {
		return raw, nil, nil
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return fail(err)
	}
	return out, opened, nil
}

// pump copies src to dst until src ends: its FIN becomes dst's, a reset
// either way resets both.
func pump(dst, src *transport.Stream) {
	_, err := io.Copy(dst, src)
	if err == nil {
		_ = dst.CloseWrite()
		return
	}
	reason := "closed"
	var se *transport.StreamError
	if errors.As(err, &se) {
		reason = se.Reason
	}
	dst.Reset(reason)
	src.Reset(reason)
}

// track records what a call made that is the client's: a command to end
// if it goes, a listener whose connections it is told of.
func (c *client) track(a *dispatcher.Client, method string, params, res json.RawMessage) {
	switch method {
	case proto.MethodExecStart:
		var p proto.ExecStartParams
		var r proto.ExecStartResult
		if json.Unmarshal(params, &p) != nil || json.Unmarshal(res, &r) != nil || p.Detach || r.ID == "" {
			return
		}
		c.own(r.ID)
	case proto.MethodExecWait, proto.MethodExecRun:
		var r proto.ExecResult
		if json.Unmarshal(res, &r) == nil {
			c.mu.Lock()
			delete(c.execs, r.ID)
			c.mu.Unlock()
		}
	case proto.MethodTCPListen:
		var r proto.TCPListenResult
		if json.Unmarshal(res, &r) != nil || r.ID == "" {
			return
		}
		c.m.mu.Lock()
		c.mu.Lock()
		gone := c.gone
		c.mu.Unlock()
		if !gone {
			c.m.lns[r.ID] = c
		}
		c.m.mu.Unlock()
		if gone {
			c.m.wg.Go(func() { c.m.unlisten(a, r.ID) })
		}
	case proto.MethodTCPUnlisten:
		var p proto.TCPUnlistenParams
		if json.Unmarshal(params, &p) == nil {
			c.m.mu.Lock()
			delete(c.m.lns, p.ID)
			c.m.mu.Unlock()
		}
	}
}

// leave ends what the client left running: TERM to its commands (their
// results collected, so the agent does not keep them), its listeners
// closed.
func (c *client) leave() {
	c.mu.Lock()
	c.gone = true
	a := c.agent
	execs := c.execs
	c.execs = nil
	c.mu.Unlock()
	c.m.mu.Lock()
	var lns []string
	for id, o := range c.m.lns {
		if o == c {
			lns = append(lns, id)
		}
	}
	c.m.mu.Unlock()
	if a == nil {
		return
	}
	for id := range execs {
		c.m.wg.Go(func() { c.m.endExec(a, id) })
	}
	for _, id := range lns {
		c.m.wg.Go(func() { c.m.unlisten(a, id) })
	}
}

// endExec sends TERM to a command whose client went, and collects its
// result.
func (m *Mux) endExec(a *dispatcher.Client, id string) {
	ctx, cancel := context.WithTimeout(a.Conn().Context(), cleanupTimeout)
	defer cancel()
	if err := a.Cancel(ctx, id, "TERM"); err != nil && !proto.IsReason(err, proto.ReasonNotFound) {
		m.log.Debug("line mux: ending a command of a client that left", "id", id, "err", err)
	}
	_ = a.Conn().Call(ctx, proto.MethodExecWait, proto.ExecWaitParams{ID: id}, nil)
	m.log.Debug("line mux: ended a command of a client that left", "id", id)
}

func (m *Mux) unlisten(a *dispatcher.Client, id string) {
	ctx, cancel := context.WithTimeout(a.Conn().Context(), cleanupTimeout)
	defer cancel()
	_ = a.Conn().Call(ctx, proto.MethodTCPUnlisten, proto.TCPUnlistenParams{ID: id}, nil)
}

// renameToken gives a client's progress token a name unique on the
// session.
func (m *Mux) renameToken(c *client, tok string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextTok++
	name := fmt.Sprintf("m%d", m.nextTok)
	m.tokens[name] = route{c: c, tok: tok}
	return name
}

// dropTokens forgets the tokens a finished call named.
func (m *Mux) dropTokens(c *client, params json.RawMessage) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(params, &obj) != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range tokenKeys {
		var tok string
		if json.Unmarshal(obj[k], &tok) != nil {
			continue
		}
		if r, ok := m.tokens[tok]; ok && r.c == c {
			delete(m.tokens, tok)
		}
	}
}

// notify routes a notification of the agent's to the client whose call
// named its token, with the client's token back in it. exec.started also
// makes the command the client's, to end if it goes.
func (m *Mux) notify(r *transport.Request) {
	var obj map[string]json.RawMessage
	var tok string
	if json.Unmarshal(r.Params, &obj) != nil || json.Unmarshal(obj["token"], &tok) != nil {
		m.log.Debug("line mux: notification for no client", "method", r.Method)
		return
	}
	m.mu.Lock()
	rt, ok := m.tokens[tok]
	m.mu.Unlock()
	if !ok {
		return // its call ended
	}
	if r.Method == proto.NoteExecStarted {
		var st proto.ExecStarted
		if json.Unmarshal(r.Params, &st) == nil && st.ID != "" {
			rt.c.own(st.ID)
		}
	}
	obj["token"], _ = json.Marshal(rt.tok)
	params, err := json.Marshal(obj)
	if err != nil {
		return
	}
	select {
	case rt.c.notes <- &transport.Request{Method: r.Method, Params: params, Notification: true}:
	default:
		m.log.Debug("line mux: notification dropped: the client reads too slowly", "method", r.Method)
	}
}

// own makes a running command the client's; one of a client that went
// is ended at once.
func (c *client) own(id string) {
	c.mu.Lock()
	gone, a := c.gone, c.agent
	if !gone {
		c.execs[id] = true
	}
	c.mu.Unlock()
	if gone && a != nil {
		c.m.wg.Go(func() { c.m.endExec(a, id) })
	}
}

// sendNotes passes notifications on to the client, in order.
func (c *client) sendNotes() {
	for {
		select {
		case r := <-c.notes:
			if err := c.conn.Notify(c.conn.Context(), r.Method, r.Params); err != nil {
				return
			}
		case <-c.conn.Done():
			return
		}
	}
}
