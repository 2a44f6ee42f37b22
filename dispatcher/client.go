package dispatcher

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// DialOptions configures Dial. A session needs a Trust (or a
// Fingerprint) to check the board's key, and a Token or a HostKey the
// board accepts.
type DialOptions struct {
	// Token is proven with a MAC over the session (never sent itself),
	// and only once the board proved its key.
	Token string
	// HostKey is this host's key; boards paired with it accept it.
	HostKey ed25519.PrivateKey
	// Trust checks the board's key (a KnownBoards pins it on first use).
	Trust Trust
	// Fingerprint, when set, is the only key the board may show: for a
	// connection by address, or the fingerprint a board announced.
	Fingerprint auth.Fingerprint
	// BoardID, when set, is the board meant (a dial by id): a session
	// with another board is refused.
	BoardID string
	// AllowLegacy talks to an agent older than protocol 4, which cannot
	// prove its key; the token, if any, then travels in the clear.
	AllowLegacy bool
	Logger      *slog.Logger
	// Console receives console text seen on a serial line (boot log,
	// kernel messages) while the client is connected; nil discards it.
	Console io.Writer
	// Resolver, when set, lets Dial take a board id (or a unique prefix
	// of one) for an address; without it an id is ErrNeedsDiscovery.
	Resolver *Resolver
	// Lines, when set, reaches serial-framed lines through their line
	// mux, shared with this user's other processes (see LineShare).
	Lines *LineShare
	// ReadBuffer, when set, is a WebSocket link's read buffer (default
	// 16 KiB): a host holding many mostly idle sessions (the lab service)
	// takes a small one; bulk data is read past it.
	ReadBuffer int
}

// Errors a caller branches on: the address is wrong (not worth retrying),
// or it is a board id and no Resolver was given; the board could not be
// trusted, or this host has nothing the board accepts.
var (
	ErrBadAddress     = errors.New("bad board address")
	ErrNeedsDiscovery = errors.New("board ids are resolved by discovery")
	ErrUntrusted      = errors.New("board not trusted")
	ErrNoCredentials  = errors.New("no credentials")
)

// WrongBoardError refuses a session with another board than the one
// meant (an address that now holds another board, an impostor).
type WrongBoardError struct{ Want, Got string }

func (e *WrongBoardError) Error() string {
	return fmt.Sprintf("wanted board %s, but %s answered", e.Want, e.Got)
}

// Unwrap makes it an ErrUntrusted.
func (e *WrongBoardError) Unwrap() error { return ErrUntrusted }

// FingerprintError refuses a board whose key is not the one given.
type FingerprintError struct {
	Board     string
	Want, Got auth.Fingerprint
}

func (e *FingerprintError) Error() string {
	return fmt.Sprintf("board %s showed key %s, not %s", e.Board, e.Got, e.Want)
}

// Unwrap makes it an ErrUntrusted.
func (e *FingerprintError) Unwrap() error { return ErrUntrusted }

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	opts DialOptions
	// redial opens a new link to the same agent: the same URL, or a new
	// session on the same serial line.
	redial  func(ctx context.Context) (transport.Link, error)
	line    io.Closer    // the serial-framed line under the link, if any
	console *consoleRing // console text seen on that line
	notes   notes
	runs    runs

	mu    sync.Mutex
	conn  *transport.Conn
	hello proto.HelloResult
}

// Dial connects to the agent at addr and opens a session. addr is an
// address (see ParseAddress) or, with opts.Resolver, a board id: see
// Resolver.
func Dial(ctx context.Context, addr string, opts DialOptions) (*Client, error) {
	if opts.Resolver != nil && !isAddress(addr) {
		return opts.Resolver.dial(ctx, addr, opts)
	}
	return dialAddr(ctx, addr, opts)
}

// closeWait bounds how long closing a WebSocket waits for the board's
// close frame.
const closeWait = 10 * time.Millisecond

// DefaultPort is the agent's WebSocket port, taken when an address names
// none.
const DefaultPort = 7207

// ParseAddress checks an address and returns it in the form Dial uses: a
// URL (ws://, wss://, serial://, tcp://, unix://) as given, or HOST:PORT
// and HOST, which are WebSocket addresses: wss://HOST:PORT, the port 7207
// by default. A board id (letters, digits, '-' and '_': no dot, no colon,
// no scheme) is no address: ErrNeedsDiscovery. Anything else that is wrong
// (no host, a port out of range, an unknown scheme) is ErrBadAddress,
// found here, before anything is dialed.
func ParseAddress(s string) (string, error) {
	if isBoardID(s) {
		return "", fmt.Errorf("%q: %w: give DialOptions.Resolver (or use an address: HOST[:PORT], ws://, serial://, tcp:// or unix://)",
			s, ErrNeedsDiscovery)
	}
	if !strings.Contains(s, "://") {
		return parseHostPort(s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w %q: %w", ErrBadAddress, s, err)
	}
	switch u.Scheme {
	case "ws", "wss", "tcp":
		if _, err := checkHostPort(s, u.Host, u.Scheme == "tcp"); err != nil {
			return "", err
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(DefaultPort))
		}
		return u.String(), nil
	case "serial", "unix":
		if u.Path == "" {
			return "", fmt.Errorf("%w %q: no path (%s:///PATH)", ErrBadAddress, s, u.Scheme)
		}
		return s, nil
	}
	return "", fmt.Errorf("%w %q: unknown scheme %q (want ws, wss, serial, tcp or unix)", ErrBadAddress, s, u.Scheme)
}

// isBoardID tells a board id from an address: an id is one DNS-label-like
// word, letters, digits, '-' and '_'.
func isBoardID(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// isAddress tells an address from a board id; a malformed address counts
// as one, so that it is refused at once rather than looked for.
func isAddress(s string) bool { return !isBoardID(s) }

// parseHostPort makes HOST[:PORT] a wss:// URL.
func parseHostPort(s string) (string, error) {
	hostport, err := checkHostPort(s, s, false)
	if err != nil {
		return "", err
	}
	return "wss://" + hostport, nil
}

// checkHostPort checks hostport, from the address s: a host, and a port
// in range (needPort: required, else DefaultPort when missing). It
// returns HOST:PORT.
func checkHostPort(s, hostport string, needPort bool) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	switch {
	case err == nil && port == "":
		return "", fmt.Errorf("%w %q: no port after the colon", ErrBadAddress, s)
	case err == nil:
	case strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]"):
		host = hostport[1 : len(hostport)-1] // [IPv6], no port
	case strings.Count(hostport, ":") == 1:
		return "", fmt.Errorf("%w %q: %w", ErrBadAddress, s, err)
	default:
		host = hostport // a name, an IPv4 address or a bare IPv6 one, no port
	}
	if host == "" || strings.ContainsAny(host, "/ ?#@") {
		return "", fmt.Errorf("%w %q: no host", ErrBadAddress, s)
	}
	if port == "" {
		if needPort {
			return "", fmt.Errorf("%w %q: no port", ErrBadAddress, s)
		}
		port = strconv.Itoa(DefaultPort)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%w %q: port %q: want 1 to 65535", ErrBadAddress, s, port)
	}
	return net.JoinHostPort(host, port), nil
}

// dialAddr is Dial of an address.
func dialAddr(ctx context.Context, addr string, opts DialOptions) (*Client, error) {
	c, err := newClient(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	onLine := c.line != nil
	c, err = open(ctx, c)
	if err != nil && onLine {
		return nil, fmt.Errorf("%s: %w", addr, err) // the address says which line
	}
	return c, err
}

// newClient prepares a client for addr without opening a session: a
// serial-framed line is opened (and listened to), a URL is only parsed.
func newClient(ctx context.Context, addr string, opts DialOptions) (*Client, error) {
	addr, err := ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrBadAddress, addr, err)
	}
	if u.Scheme == "ws" || u.Scheme == "wss" {
		redial := func(ctx context.Context) (transport.Link, error) {
			// The token rides on the upgrade only to a key the TLS
			// handshake showed to be the expected one (upgradeToken);
			// otherwise it is proven in the session, once the board
			// proved its key. The TLS key is checked against that proof
			// (handshake).
			// Close sends the close frame and waits little for the
			// board's: by then every answer is in, and a short-lived CLI
			// would spend a round trip on politeness.
			// session.hello rides on the upgrade too (helloHeader).
			return wslink.Dial(ctx, addr, "", wslink.Config{Logger: opts.Logger, CloseWait: closeWait, ReadBufferSize: opts.ReadBuffer,
				VerifyKey: func(ed25519.PublicKey) error { return nil },
				Authorize: func(cs tls.ConnectionState) string { return upgradeToken(cs, opts) },
				Header:    helloHeader()})
		}
		return &Client{opts: opts, redial: redial}, nil
	}
	return serialClient(ctx, addr, u, opts)
}

// DialLine opens a session over the serial-framed link on rwc, a byte
// stream that carries an agent (an open serial port, pty or socket). It
// listens for the agent's beacon before writing anything. Closing the
// client closes rwc.
func DialLine(ctx context.Context, rwc io.ReadWriteCloser, opts DialOptions) (*Client, error) {
	return open(ctx, lineClient(rwc, "this line", opts))
}

// lineClient prepares a client for the line on rwc; addr names it.
func lineClient(rwc io.ReadWriteCloser, addr string, opts DialOptions) *Client {
	c := &Client{opts: opts, console: newConsoleRing(consoleKeep)}
	line := serialLine(rwc, addr, opts, c.console)
	c.line, c.redial = line, line.dial
	return c
}

// open starts the first connection and its session.
func open(ctx context.Context, c *Client) (*Client, error) {
	if c.opts.Logger == nil {
		c.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := c.connect(ctx); err != nil {
		if c.line != nil {
			c.line.Close()
		}
		return nil, err
	}
	return c, nil
}

// connect opens a link and a session on it, replacing the current one.
func (c *Client) connect(ctx context.Context) error {
	l, err := c.redial(ctx)
	if err != nil {
		return err
	}
	conn := transport.NewConn(l, transport.Config{Client: true, Handler: handler{c}, Logger: c.opts.Logger})
	conn.Start()
	hello, err := c.sessionHello(ctx, conn, l)
	if err != nil {
		conn.Close()
		return err
	}
	c.mu.Lock()
	old := c.conn
	c.conn, c.hello = conn, hello
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Reconnect replaces the connection with a new one to the same board: the
// same address, or a new session on the same serial line. Calls made on
// the old connection fail.
func (c *Client) Reconnect(ctx context.Context) error { return c.connect(ctx) }

// Hello is what the agent answered to session.hello.
func (c *Client) Hello() proto.HelloResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hello
}

// Conn is the current connection, for callers that need raw calls.
func (c *Client) Conn() *transport.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// Close ends the session.
func (c *Client) Close() error {
	err := c.Conn().Close()
	if c.line != nil {
		if lerr := c.line.Close(); err == nil {
			err = lerr
		}
	}
	return err
}

// Info returns the board's identity and state.
func (c *Client) Info(ctx context.Context) (proto.BoardInfo, error) {
	var info proto.BoardInfo
	err := c.Conn().Call(ctx, proto.MethodBoardInfo, nil, &info)
	return info, err
}

// ExecRequest is one command to run on the board. Nil Stdin sends no input;
// nil Stdout or Stderr discards that output on the board.
type ExecRequest struct {
	Argv       []string
	Shell      bool
	Env        map[string]string
	Cwd        string
	Timeout    time.Duration
	KillSignal string
	Detach     bool
	Stdin      io.Reader
	Stdout     io.Writer
	Stderr     io.Writer
}

// cancelGrace is how long Exec waits for a canceled command's final record.
const cancelGrace = 5 * time.Second

// Exec runs a command and returns its final record once its output has
// been copied out. Canceling ctx sends TERM to the command and still
// returns its record when the board answers within a few seconds. An
// output writer that fails is an *OutputError, with the record.
//
// With an agent of protocol 5 a command that is not detached costs one
// round trip (exec.run); older agents get exec.start and exec.wait.
func (c *Client) Exec(ctx context.Context, r ExecRequest) (proto.ExecResult, error) {
	conn := c.Conn()
	e := execStreams{conn: conn}
	// On every way out, no copy may still touch the caller's writers.
	defer e.close()
	if c.Hello().Protocol >= 5 && !r.Detach {
		return c.run(ctx, conn, r, &e)
	}
	p := proto.ExecStartParams{Argv: r.Argv, Shell: r.Shell, Env: r.Env, Cwd: r.Cwd,
		TimeoutMs: r.Timeout.Milliseconds(), KillSignal: r.KillSignal, Detach: r.Detach}
	stdin, err := e.open(r, &p.Stdout, &p.Stderr, &p.Stdin)
	if err != nil {
		return proto.ExecResult{}, err
	}
	var started proto.ExecStartResult
	if err := conn.Call(ctx, proto.MethodExecStart, p, &started); err != nil {
		return proto.ExecResult{}, err
	}
	e.feed(stdin, r.Stdin)
	res, err := c.wait(ctx, started.ID)
	if err != nil {
		return res, err
	}
	return e.outcome(res)
}

// execStreams are the streams one Exec opened, and the copies of their
// output to the caller's writers.
type execStreams struct {
	conn   *transport.Conn
	copies sync.WaitGroup
	opened []*transport.Stream
	mu     sync.Mutex
	lost   error // the first output writer that failed (an *OutputError)
}

// OutputError is Exec's error when a writer of the command's output
// failed: from then on that output was not read, and the board dropped
// it (the command ran on, not held up by output nobody reads). The
// command's record comes with it.
type OutputError struct {
	Stream string // "stdout", "stderr" or "terminal output" (Shell)
	Err    error
}

func (e *OutputError) Error() string {
	return fmt.Sprintf("exec: the command's %s was not copied out: %v", e.Stream, e.Err)
}

func (e *OutputError) Unwrap() error { return e.Err }

// copyOut copies the output stream s to w. A write that fails ends the
// copy and resets s: the board then drops that output instead of waiting
// for a window nobody opens again (the command would block on its pipe,
// and its record, even a canceled one's, would never come). It returns
// that failure, an *OutputError, or nil.
func copyOut(name string, w io.Writer, s *transport.Stream) error {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := s.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				s.Reset(name + " not read: its writer failed")
				return &OutputError{Stream: name, Err: werr}
			}
		}
		if rerr != nil {
			return nil // the stream's end, or the session's: Exec's error says
		}
	}
}

// outcome is an ended command's record with the output lost, if any.
func (e *execStreams) outcome(res proto.ExecResult) (proto.ExecResult, error) {
	e.copies.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	return res, e.lost
}

// open opens a stream for each of r's writers and for its reader, copies
// the output streams to the writers, and sets the ids the request names
// them by; it returns the stdin stream, if any.
func (e *execStreams) open(r ExecRequest, stdout, stderr, stdinID *uint32) (*transport.Stream, error) {
	stream := func(id *uint32) (*transport.Stream, error) {
		s, err := e.conn.OpenStream()
		if err != nil {
			return nil, err
		}
		e.opened = append(e.opened, s)
		*id = s.ID()
		return s, nil
	}
	for _, out := range []struct {
		name string
		w    io.Writer
		id   *uint32
	}{{"stdout", r.Stdout, stdout}, {"stderr", r.Stderr, stderr}} {
		if out.w == nil {
			continue
		}
		s, err := stream(out.id)
		if err != nil {
			return nil, err
		}
		e.copies.Go(func() {
			if err := copyOut(out.name, out.w, s); err != nil {
				e.mu.Lock()
				e.lost = cmp.Or(e.lost, err)
				e.mu.Unlock()
			}
		})
	}
	if r.Stdin == nil {
		return nil, nil
	}
	return stream(stdinID)
}

// feed copies in to the stdin stream once the command is started. It is
// not waited for: a terminal on stdin may never reach EOF.
func (e *execStreams) feed(stdin *transport.Stream, in io.Reader) {
	if stdin == nil {
		return
	}
	go func() {
		if _, err := io.Copy(stdin, in); err == nil {
			_ = stdin.CloseWrite()
		}
	}()
}

func (e *execStreams) close() {
	for _, s := range e.opened {
		s.Close()
	}
	e.copies.Wait()
}

// run is Exec by exec.run: one request that answers when the command has
// ended. When ctx can be canceled (or stdin is fed), the agent announces
// the command with exec.started: its id to cancel it by, and the moment
// stdin may flow.
func (c *Client) run(ctx context.Context, conn *transport.Conn, r ExecRequest, e *execStreams) (proto.ExecResult, error) {
	p := proto.ExecRunParams{Argv: r.Argv, Shell: r.Shell, Env: r.Env, Cwd: r.Cwd,
		TimeoutMs: r.Timeout.Milliseconds(), KillSignal: r.KillSignal}
	stdin, err := e.open(r, &p.Stdout, &p.Stderr, &p.StdinStream)
	if err != nil {
		return proto.ExecResult{}, err
	}
	var res proto.ExecRunResult
	if ctx.Done() == nil && stdin == nil {
		if err := conn.Call(ctx, proto.MethodExecRun, p, &res); err != nil {
			return proto.ExecResult{}, err
		}
		return e.outcome(res.Result())
	}
	tok, started, unsubscribe := c.runs.subscribe()
	defer unsubscribe()
	p.Started = tok
	// The call outlives ctx: a canceled command still answers with its record.
	done := make(chan error, 1)
	go func() { done <- conn.Call(context.WithoutCancel(ctx), proto.MethodExecRun, p, &res) }()
	var id string
	for wait := started; ; {
		select {
		case st := <-wait:
			id, wait = st.ID, nil
			e.feed(stdin, r.Stdin)
		case err := <-done:
			if err != nil {
				return proto.ExecResult{}, err
			}
			return e.outcome(res.Result())
		case <-ctx.Done():
			return c.cancelRun(ctx, id, started, done, &res, e)
		}
	}
}

func (c *Client) wait(ctx context.Context, id string) (proto.ExecResult, error) {
	var res proto.ExecResult
	err := c.Conn().Call(ctx, proto.MethodExecWait, proto.ExecWaitParams{ID: id}, &res)
	if err == nil || ctx.Err() == nil {
		return res, err
	}
	// Canceled here: end the command on the board too, and report how it ended.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelGrace)
	defer cancel()
	if cerr := c.Cancel(bg, id, "TERM"); cerr != nil && !proto.IsReason(cerr, proto.ReasonNotFound) {
		return res, errors.Join(err, cerr)
	}
	if werr := c.Conn().Call(bg, proto.MethodExecWait, proto.ExecWaitParams{ID: id}, &res); werr != nil {
		return res, errors.Join(err, werr)
	}
	return res, nil
}

// cancelRun ends the command of an exec.run whose ctx was canceled (once
// its id is known, if it is not yet) and waits for its record.
func (c *Client) cancelRun(ctx context.Context, id string, started <-chan proto.ExecStarted, done <-chan error, res *proto.ExecRunResult, e *execStreams) (proto.ExecResult, error) {
	canceled := fmt.Errorf("exec.run: %w", ctx.Err())
	if cause := context.Cause(ctx); cause != ctx.Err() {
		canceled = fmt.Errorf("exec.run: %w: %w", ctx.Err(), cause) // why, for the log
	}
	grace := time.NewTimer(cancelGrace)
	defer grace.Stop()
	// The record can come before the last of the output (what the
	// command said on its way out): it is copied too, within the grace.
	ended := func() (proto.ExecResult, error) {
		copied := make(chan struct{})
		go func() {
			e.copies.Wait()
			close(copied)
		}()
		select {
		case <-copied:
		case <-grace.C:
		}
		return res.Result(), nil
	}
	if id == "" {
		select {
		case st := <-started:
			id = st.ID
		case err := <-done:
			if err != nil {
				return proto.ExecResult{}, errors.Join(canceled, err)
			}
			return ended()
		case <-grace.C:
			return proto.ExecResult{}, canceled
		}
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelGrace)
	defer cancel()
	if err := c.Cancel(bg, id, "TERM"); err != nil && !proto.IsReason(err, proto.ReasonNotFound) {
		return proto.ExecResult{}, errors.Join(canceled, err)
	}
	select {
	case err := <-done:
		if err != nil {
			return proto.ExecResult{}, errors.Join(canceled, err)
		}
		return ended()
	case <-grace.C:
		return proto.ExecResult{}, canceled
	}
}

// runs routes exec.started notifications to the exec.run calls that wait
// for them, by token.
type runs struct {
	mu      sync.Mutex
	next    uint64
	waiting map[string]chan proto.ExecStarted
}

// subscribe returns a fresh token and the channel its exec.started comes
// on; the returned func forgets the token.
func (r *runs) subscribe() (string, <-chan proto.ExecStarted, func()) {
	ch := make(chan proto.ExecStarted, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	tok := "r" + strconv.FormatUint(r.next, 10)
	if r.waiting == nil {
		r.waiting = map[string]chan proto.ExecStarted{}
	}
	r.waiting[tok] = ch
	return tok, ch, func() {
		r.mu.Lock()
		delete(r.waiting, tok)
		r.mu.Unlock()
	}
}

// started delivers an exec.started; it never blocks the connection's
// notifications: a token announced twice keeps the first.
func (r *runs) started(params []byte) {
	var st proto.ExecStarted
	if err := json.Unmarshal(params, &st); err != nil {
		return
	}
	r.mu.Lock()
	ch := r.waiting[st.Token]
	r.mu.Unlock()
	if ch != nil {
		select {
		case ch <- st:
		default:
		}
	}
}

// handler takes the agent's notifications for c.
type handler struct{ c *Client }

func (h handler) Handle(ctx context.Context, conn *transport.Conn, r *transport.Request) (any, error) {
	if r.Notification && r.Method == proto.NoteExecStarted && h.c.notes.all == nil { // a line mux takes all
		h.c.runs.started(r.Params)
		return nil, nil
	}
	return h.c.notes.Handle(ctx, conn, r)
}

// Cancel sends signal (default TERM) to a running command's process group.
func (c *Client) Cancel(ctx context.Context, id, signal string) error {
	return c.Conn().Call(ctx, proto.MethodExecCancel, proto.ExecCancelParams{ID: id, Signal: signal}, nil)
}

// ExecLog returns the board's command log, newest first (limit 0: all kept).
func (c *Client) ExecLog(ctx context.Context, limit int) ([]proto.ExecLogEntry, error) {
	var res proto.ExecLogResult
	err := c.Conn().Call(ctx, proto.MethodExecLog, proto.ExecLogParams{Limit: limit}, &res)
	return res.Entries, err
}
