// Package linemux shares one serial-framed line among many clients, as
// ssh's ControlMaster shares a connection: a Mux holds the line (and its
// lock file), the session with the agent (authenticated as this host, the
// board's key checked as Dial checks it) and the console, and serves this
// user's processes on a unix socket (see package lineshare for where, and
// the messages). A client then pays one round trip per call instead of a
// wait for the agent's beacon, and a console sees the line while commands
// run on it.
//
// To each client the mux is the agent: it serves the agent's protocol on
// the client's connection and forwards every call on its own session,
// with the client's streams bridged to streams of its own (so ids never
// clash and flow control holds end to end) and progress tokens renamed.
// The mux checked the board's proof of its key when it opened its
// session; a client, this user's own process (the socket's directory and
// SO_PEERCRED say so), gets that session's hello in the mux's Welcome and
// checks the board's id and key against its own expectations (the known
// boards, a fingerprint) without a round trip. The session is
// authenticated already, so clients skip session.auth. Notifications go
// to the client that asked: progress and exec.started by token. When a
// client goes, the commands it started (not detached) get TERM and its
// listeners close, as the agent does for a session that ends.
package linemux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/bootstrap"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
)

// Config configures a Mux.
type Config struct {
	// Addr is the line: serial://, tcp:// or unix://.
	Addr string
	// Dial authenticates the mux's session and checks the board's key
	// (Token or HostKey, Trust or Fingerprint). Its Console is ignored.
	Dial dispatcher.DialOptions
	// Dir holds the socket and, for sockets or where this user may not
	// write /run/lock, the lock file; "" is lineshare.Dir().
	Dir string
	// Idle is how long the mux stays once its last client left (and
	// after it starts, until the first one comes); default DefaultIdle,
	// negative: until its context ends.
	Idle time.Duration
	// ConsoleKeep is how much console text is kept for clients that ask
	// for it (default 256 KiB).
	ConsoleKeep int
	// Console, if set, gets a copy of all the line's console text as it
	// comes, whoever is connected (a lab service's record of the board).
	Console io.Writer
	Logger  *slog.Logger
}

// DefaultIdle is how long a mux outlives its last client by default.
const DefaultIdle = 60 * time.Second

// ErrRunning: another mux serves the line already; connect to it.
var ErrRunning = errors.New("a line mux serves this line already")

// Mux is one line's mux. Listen makes it, Serve runs it.
type Mux struct {
	cfg   Config
	log   *slog.Logger
	sock  string
	uid   int // the only uid served
	ln    *net.UnixListener
	line  *dispatcher.SerialLine
	hub   *hub
	flock string // serializes starting and ending muxes of this line

	unlock func() // the line's lock file
	wg     sync.WaitGroup

	mu      sync.Mutex
	clients map[*client]struct{}
	left    chan struct{} // poked when a client leaves
	agent   *dispatcher.Client
	dialing chan struct{} // closed when the dial under way ends
	dialErr error
	// shell: the last dial found a shell on the line and no agent; the
	// mux then ends as soon as no client is left, so that the line is
	// free for the boardlink bootstrap its error suggests.
	shell   bool
	tokens  map[string]route // progress tokens renamed, to their client
	lns     map[string]*client
	nextTok uint64
}

// route is where a renamed progress token goes.
type route struct {
	c   *client
	tok string
}

// Listen takes the line at cfg.Addr for a new mux: its lock file, the
// line itself (listened to, not written), and the socket. A mux already
// serving the line is ErrRunning; another process holding the line is a
// *lineshare.BusyError naming it.
func Listen(ctx context.Context, cfg Config) (*Mux, error) {
	if cfg.Idle == 0 {
		cfg.Idle = DefaultIdle
	}
	if cfg.ConsoleKeep <= 0 {
		cfg.ConsoleKeep = 256 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Dir == "" {
		dir, err := lineshare.Dir()
		if err != nil {
			return nil, err
		}
		cfg.Dir = dir
	} else if err := lineshare.EnsureDir(cfg.Dir); err != nil {
		return nil, err
	}
	sock, err := lineshare.Socket(cfg.Dir, cfg.Addr)
	if err != nil {
		return nil, err
	}
	m := &Mux{cfg: cfg, log: cfg.Logger.With("line", cfg.Addr), sock: sock, uid: os.Getuid(),
		hub: newHub(cfg.ConsoleKeep, cfg.Console), flock: sock + ".lock", clients: map[*client]struct{}{},
		left: make(chan struct{}, 1), tokens: map[string]route{}, lns: map[string]*client{}}
	release, err := m.serialize()
	if err != nil {
		return nil, err
	}
	defer release()
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: %w (%s)", cfg.Addr, ErrRunning, sock)
	}
	if m.unlock, err = lineshare.Lock(cfg.Addr, cfg.Dir); err != nil {
		return nil, err
	}
	opts := cfg.Dial
	opts.Console, opts.Lines = m.hub, nil
	if opts.Logger == nil {
		opts.Logger = cfg.Logger
	}
	if m.line, err = dispatcher.OpenSerialLine(ctx, cfg.Addr, opts); err != nil {
		m.unlock()
		return nil, err
	}
	_ = os.Remove(sock) // a dead mux's: nothing answered on it
	if m.ln, err = listen(sock); err != nil {
		m.line.Close()
		m.unlock()
		return nil, err
	}
	return m, nil
}

// listen makes the socket, this user's alone.
func listen(sock string) (*net.UnixListener, error) {
	old := unix.Umask(0o077)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("line mux: %w", err)
	}
	ln.SetUnlinkOnClose(false) // removed by the mux, under its flock
	return ln, nil
}

// serialize takes the line's flock: starting muxes and an ending one take
// turns, so a new mux never finds the line still held by one that is
// going, nor two start at once.
func (m *Mux) serialize() (release func(), err error) {
	f, err := os.OpenFile(m.flock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("line mux: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("line mux: flock %s: %w", m.flock, err)
	}
	return func() { f.Close() }, nil
}

// Socket is where the mux listens.
func (m *Mux) Socket() string { return m.sock }

// Serve serves clients until ctx ends, the line ends (an error), or the
// mux has had no client for Config.Idle. It then closes every client's
// connection, the session and the line, and releases the lock.
func (m *Mux) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.log.Info("line mux serving", "socket", m.sock, "idle", m.cfg.Idle)
	m.wg.Go(func() { m.accept(ctx) })
	err := m.wait(ctx)
	cancel() // ends a dial waiting for the agent
	m.shutdown()
	m.wg.Wait()
	m.log.Info("line mux stopped", "err", err)
	return err
}

// wait returns when the mux should end.
func (m *Mux) wait(ctx context.Context) error {
	var idle <-chan time.Time
	arm := func() {
		m.mu.Lock()
		n, shell := len(m.clients), m.shell
		m.mu.Unlock()
		switch {
		case n == 0 && shell:
			idle = time.After(0)
		case n == 0 && m.cfg.Idle > 0:
			idle = time.After(m.cfg.Idle)
		}
	}
	arm()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.line.Done():
			return fmt.Errorf("%s: %w", m.cfg.Addr, dispatcher.ErrLineClosed)
		case <-m.left:
			idle = nil
			arm()
		case <-idle:
			m.mu.Lock()
			n := len(m.clients)
			m.mu.Unlock()
			if n == 0 {
				return nil
			}
			idle = nil
		}
	}
}

// shutdown ends everything, under the flock so that a mux starting for
// the line waits until the line is free.
func (m *Mux) shutdown() {
	release, err := m.serialize()
	if err != nil {
		m.log.Warn("line mux: ending without the flock", "err", err)
		release = func() {}
	}
	defer release()
	_ = os.Remove(m.sock)
	m.ln.Close()
	m.mu.Lock()
	clients := make([]*client, 0, len(m.clients))
	for c := range m.clients {
		clients = append(clients, c)
	}
	dialing := m.dialing
	m.mu.Unlock()
	for _, c := range clients {
		c.sc.Close()
	}
	if dialing != nil {
		<-dialing // its context, the mux's, has ended
	}
	m.mu.Lock()
	agent := m.agent
	m.mu.Unlock()
	if agent != nil {
		agent.Close()
	}
	m.line.Close()
	m.hub.close()
	m.unlock()
}

// accept takes clients until the listener closes.
func (m *Mux) accept(ctx context.Context) {
	for {
		nc, err := m.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				m.log.Warn("line mux: accept", "err", err)
			}
			return
		}
		m.wg.Go(func() { m.serveClient(ctx, nc) })
	}
}

// wakeIdle tells wait that the number of clients changed.
func (m *Mux) wakeIdle() {
	select {
	case m.left <- struct{}{}:
	default:
	}
}

// agentClient returns the session with the agent, dialing it if there is
// none (or it ended): one dial at a time, on the mux's context, which
// every caller may wait for with its own ctx.
func (m *Mux) agentClient(ctx context.Context, serveCtx context.Context) (*dispatcher.Client, error) {
	for {
		m.mu.Lock()
		if a := m.agent; a != nil && a.Conn().Err() == nil {
			m.mu.Unlock()
			return a, nil
		}
		ch := m.dialing
		if ch == nil {
			ch = make(chan struct{})
			m.dialing = ch
			m.wg.Go(func() { m.dial(serveCtx, ch) })
		}
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		m.mu.Lock()
		a, err := m.agent, m.dialErr
		m.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if a != nil && a.Conn().Err() == nil {
			return a, nil
		}
	}
}

func (m *Mux) dial(ctx context.Context, done chan struct{}) {
	a, err := m.line.Dial(ctx, m.notify)
	m.mu.Lock()
	if old := m.agent; old != nil {
		old.Close()
	}
	m.agent, m.dialErr, m.dialing = a, err, nil
	var hint *bootstrap.HintError
	m.shell = errors.As(err, &hint)
	m.mu.Unlock()
	close(done)
	if err != nil {
		m.log.Warn("line mux: session with the agent", "err", err)
		m.wakeIdle()
		return
	}
	m.log.Debug("line mux: session open", "board", a.Hello().BoardID)
}

// clientGone removes c; the idle timer starts when none is left.
func (m *Mux) clientGone(c *client) {
	m.mu.Lock()
	delete(m.clients, c)
	for tok, r := range m.tokens {
		if r.c == c {
			delete(m.tokens, tok)
		}
	}
	for id, o := range m.lns {
		if o == c {
			delete(m.lns, id)
		}
	}
	m.mu.Unlock()
	m.wakeIdle()
}
