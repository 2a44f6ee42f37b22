// Package lineshare is what the processes sharing a serial-framed line
// agree on: where a line's mux listens (a unix socket in this user's
// runtime directory, named after the line), the line's lock file (the
// uucp LCK..NAME other programs honour), and the messages between a client
// and the mux (package linemux serves them).
//
// # The socket
//
// One mux serves one line (a serial port, a unix socket, a TCP serial
// server) at Socket(Dir(), addr). The directory is this user's alone
// (0700) and both ends check the other's uid (SO_PEERCRED): only the same
// user may share a line.
//
// # Messages
//
// Each message is a kind byte, a 4-byte big-endian length and that many
// bytes (at most MaxFrame). The client starts with a Hello (JSON), the
// mux answers with a Welcome (JSON); then
//
//	'T'  a JSON-RPC message (text), either way
//	'B'  a stream frame (binary), either way
//	'C'  console text, mux to client
//
// The mux is a JSON-RPC peer of its own to each client: it renumbers
// requests and streams onto its one session with the agent, so every
// client speaks the agent's protocol unchanged (see linemux).
package lineshare

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/uucplock"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Version is the version of the client-mux messages.
const Version = 1

// Message kinds.
const (
	kindHello   = 'H'
	kindText    = 'T'
	kindBinary  = 'B'
	kindConsole = 'C'
)

// MaxFrame bounds a message: the protocol's largest plus a stream header.
const MaxFrame = proto.MaxMessage + 64

// Hello opens a client's connection to a mux.
type Hello struct {
	Version int `json:"version"`
	// Console asks for the console text seen from now on; Ring also for
	// the text the mux kept from before (a console viewer).
	Console bool `json:"console,omitempty"`
	Ring    bool `json:"ring,omitempty"`
	// Resume, with Console, asks for the kept text after offset Since of
	// the mux's console first: a client that dials again (a reboot --wait)
	// misses nothing the line printed between its connections.
	Resume bool  `json:"resume,omitempty"`
	Since  int64 `json:"since,omitempty"`
	// ConsoleOnly: the client makes no calls (a console viewer), so the
	// mux need not open a session with the agent for it.
	ConsoleOnly bool `json:"console_only,omitempty"`
}

// Welcome is the mux's answer; Error, when set, refuses the client.
type Welcome struct {
	Version int    `json:"version"`
	PID     int    `json:"pid"`
	Line    string `json:"line"`
	Error   string `json:"error,omitempty"`
	// Hello is what the agent answered the mux's own session.hello, its
	// proof already checked by the mux, for a client that makes calls:
	// the client checks the board's id and key against its own
	// expectations (the mux is this user's, so its check stands) and
	// saves the round trip of a hello of its own.
	Hello *proto.HelloResult `json:"hello,omitempty"`
	// Console is the offset in the mux's console text at which the text
	// sent to this client begins.
	Console int64 `json:"console,omitempty"`
}

// Errors a caller branches on.
var (
	// ErrNoMux: no mux answers for the line (none started, or it ended).
	ErrNoMux = errors.New("no line mux")
	// ErrBusy: another process holds the line.
	ErrBusy = errors.New("line in use")
	// ErrPeer: the other end of the socket is another user.
	ErrPeer = errors.New("line mux peer refused")
)

// Dir is the directory of this user's muxes: $XDG_RUNTIME_DIR/boardlink,
// else boardlink-UID in the temporary directory. It is made 0700 if
// missing, and refused unless it is this user's own and no one else's.
func Dir() (string, error) {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("boardlink-%d", os.Getuid()))
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
		dir = filepath.Join(rt, "boardlink")
	}
	return dir, EnsureDir(dir)
}

// EnsureDir makes dir (0700) if missing and checks that it is a directory
// of this user's that no one else may enter.
func EnsureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("line mux directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("line mux directory: %w", err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("line mux directory %s: not a directory", dir)
	case int(st.Uid) != os.Getuid():
		return fmt.Errorf("line mux directory %s: owned by uid %d, not %d", dir, st.Uid, os.Getuid())
	case st.Mode&0o077 != 0:
		return fmt.Errorf("line mux directory %s: mode %o, others may enter (want 0700)", dir, st.Mode&0o777)
	}
	return nil
}

// Key names a line whatever the spelling of its address: a serial port by
// its device (symlinks resolved, baud aside), a unix socket by its
// absolute path, a TCP server by HOST:PORT.
func Key(addr string) (string, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("line %q: %w", addr, err)
	}
	switch u.Scheme {
	case "serial":
		return "serial:" + uucplock.Canonical(u.Path), nil
	case "unix":
		p, err := filepath.Abs(u.Path)
		if err != nil {
			return "", fmt.Errorf("line %q: %w", addr, err)
		}
		return "unix:" + p, nil
	case "tcp":
		return "tcp:" + u.Host, nil
	}
	return "", fmt.Errorf("line %q: not a serial line (serial://, tcp:// or unix://)", addr)
}

// Socket is where the mux of the line at addr listens, under dir.
func Socket(dir, addr string) (string, error) {
	key, err := Key(addr)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "line-"+hash(key)+".sock"), nil
}

func hash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:8])
}

// PeerUID is the uid of the process at the other end of c.
func PeerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		cred *unix.Ucred
		serr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return int(cred.Uid), nil
}

// CheckPeer refuses a peer whose uid is not uid.
func CheckPeer(c *net.UnixConn, uid int) error {
	got, err := PeerUID(c)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPeer, err)
	}
	if got != uid {
		return fmt.Errorf("%w: uid %d, only uid %d may share this line", ErrPeer, got, uid)
	}
	return nil
}

// Conn is one end of a client-mux connection: whole messages, written by
// any goroutine, read by one.
type Conn struct {
	c   net.Conn
	r   *bufio.Reader
	wmu sync.Mutex
	hdr [5]byte
}

// NewConn frames messages on c.
func NewConn(c net.Conn) *Conn { return &Conn{c: c, r: bufio.NewReaderSize(c, 64<<10)} }

// write sends one message. A peer that stops reading holds the writer
// until Close.
func (c *Conn) write(kind byte, p []byte) error {
	if len(p) > MaxFrame {
		return fmt.Errorf("line mux: message of %d bytes: %w", len(p), transport.ErrTooLarge)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var h [5]byte
	h[0] = kind
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	if _, err := (&net.Buffers{h[:], p}).WriteTo(c.c); err != nil {
		return fmt.Errorf("line mux: %w", err)
	}
	return nil
}

// read returns the next message; its bytes are the caller's.
func (c *Conn) read() (byte, []byte, error) {
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(c.hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("line mux: message of %d bytes, the limit is %d", n, MaxFrame)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.r, p); err != nil {
		return 0, nil, err
	}
	return c.hdr[0], p, nil
}

func (c *Conn) writeJSON(kind byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.write(kind, b)
}

func (c *Conn) readJSON(want byte, v any) error {
	kind, p, err := c.read()
	if err != nil {
		return fmt.Errorf("line mux: %w", err)
	}
	if kind != want {
		return fmt.Errorf("line mux: message %q where %q was due", kind, want)
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("line mux: %w", err)
	}
	return nil
}

// ReadHello reads a client's Hello (the mux's side).
func (c *Conn) ReadHello() (Hello, error) {
	var h Hello
	err := c.readJSON(kindHello, &h)
	return h, err
}

// WriteWelcome answers a Hello.
func (c *Conn) WriteWelcome(w Welcome) error { return c.writeJSON(kindHello, w) }

// WriteConsole sends console text to a client.
func (c *Conn) WriteConsole(p []byte) error { return c.write(kindConsole, p) }

// Close closes the socket, which ends a pending read or write.
func (c *Conn) Close() error { return c.c.Close() }

// Link makes the connection a transport.Link; console text that arrives
// goes to console (nil: dropped) from the reading goroutine.
func (c *Conn) Link(console io.Writer) transport.Link { return &link{c: c, console: console} }

type link struct {
	c       *Conn
	console io.Writer
}

func (l *link) ReadMessage() (transport.MessageType, []byte, error) {
	for {
		kind, p, err := l.c.read()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("%w: line mux: %w", transport.ErrClosed, err)
			}
			return 0, nil, err
		}
		switch kind {
		case kindText:
			return transport.Text, p, nil
		case kindBinary:
			return transport.Binary, p, nil
		case kindConsole:
			if l.console != nil {
				_, _ = l.console.Write(p)
			}
		default:
			return 0, nil, fmt.Errorf("line mux: unknown message kind %q", kind)
		}
	}
}

func (l *link) WriteMessage(ctx context.Context, t transport.MessageType, p []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	kind := byte(kindText)
	if t == transport.Binary {
		kind = kindBinary
	}
	return l.c.write(kind, p)
}

func (l *link) Close() error { return l.c.Close() }

// Dial connects to the mux at sock as a client: it checks that the mux
// runs as this user, says h and returns the connection and the mux's
// Welcome. No mux there is ErrNoMux.
func Dial(ctx context.Context, sock string, h Hello) (*Conn, Welcome, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, Welcome{}, fmt.Errorf("%w at %s: %w", ErrNoMux, sock, err)
		}
		return nil, Welcome{}, fmt.Errorf("line mux %s: %w", sock, err)
	}
	if err := CheckPeer(nc.(*net.UnixConn), os.Getuid()); err != nil {
		nc.Close()
		return nil, Welcome{}, err
	}
	c := NewConn(nc)
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	h.Version = Version
	var w Welcome
	err = c.writeJSON(kindHello, h)
	if err == nil {
		err = c.readJSON(kindHello, &w)
	}
	switch {
	case err != nil && ctx.Err() != nil:
		err = ctx.Err()
	case err != nil && (errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET)):
		err = fmt.Errorf("%w at %s: it closed the connection", ErrNoMux, sock) // it was ending
	case err == nil && w.Error != "":
		err = fmt.Errorf("line mux %s (pid %d): %s", w.Line, w.PID, w.Error)
	}
	if err != nil {
		nc.Close()
		return nil, Welcome{}, err
	}
	return c, w, nil
}
