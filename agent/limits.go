package agent

import (
	"time"

	"github.com/boardlink/boardlink/agent/fetch"
)

// Limits bound what peers may make the agent hold. Every size and count
// that comes from the network has one; hitting it is a clear error (busy,
// invalid_params or a closed connection, as each field says), never a
// crash or a silent hang. Zero values take the defaults (WithDefaults).
type Limits struct {
	// MaxConns bounds concurrent connections over WebSocket (each serial
	// line carries one session at a time). One more is refused with HTTP
	// 503 before the TLS handshake's cost is paid twice.
	MaxConns int
	// HandshakeTimeout bounds the TLS handshake, the HTTP upgrade and the
	// session's authentication together; a peer that has not
	// authenticated by then is disconnected.
	HandshakeTimeout time.Duration
	// IdleTimeout closes an authenticated connection that has had no
	// request, no open stream and no running command of its own for
	// this long.
	IdleTimeout time.Duration
	// KeepaliveTimeout closes a WebSocket connection whose peer stays
	// silent this long, not even answering the pings sent every third
	// of it (a peer that stopped reading, a cable pulled).
	KeepaliveTimeout time.Duration
	// MaxInflight bounds the requests served at once per connection; one
	// more is answered busy at once, never dropped.
	MaxInflight int
	// MaxStreams bounds the streams open at once per connection; a
	// request that would open one more is answered busy.
	MaxStreams int
	// MaxCommands bounds the commands running or holding a result not
	// collected yet; one more is answered busy.
	MaxCommands int
	// ResultGrace is how long the results of a connection's commands
	// that nobody waited for are kept after the connection ended, so a
	// client that reconnects still gets them.
	ResultGrace time.Duration
	// MaxDownload bounds one file.download or ota --url body, in bytes.
	MaxDownload int64
	// MaxUnpack bounds the bytes file.download --extract writes (sparse
	// extents count as written) and MaxUnpackEntries the entries.
	MaxUnpack        int64
	MaxUnpackEntries int
	// DownloadDeadline bounds one download from its first request to
	// its last byte, retries included.
	DownloadDeadline time.Duration
}

// Defaults of Limits, also shown in boardlinkd --help.
const (
	DefaultMaxConns         = 64
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 15 * time.Minute
	DefaultKeepaliveTimeout = 30 * time.Second
	DefaultMaxInflight      = 64
	DefaultMaxStreams       = 256
	DefaultMaxCommands      = 1024
	DefaultResultGrace      = 5 * time.Minute
	DefaultMaxDownload      = fetch.DefaultMaxSize
	DefaultMaxUnpack        = fetch.DefaultMaxUnpack
	DefaultMaxUnpackEntries = fetch.DefaultMaxUnpackEntries
	DefaultDownloadDeadline = fetch.DefaultDeadline
)

// WithDefaults returns l with every zero field set to its default.
func (l Limits) WithDefaults() Limits {
	set := func(p *int, d int) {
		if *p <= 0 {
			*p = d
		}
	}
	set(&l.MaxConns, DefaultMaxConns)
	set(&l.MaxInflight, DefaultMaxInflight)
	set(&l.MaxStreams, DefaultMaxStreams)
	set(&l.MaxCommands, DefaultMaxCommands)
	set(&l.MaxUnpackEntries, DefaultMaxUnpackEntries)
	for _, d := range []struct {
		p *time.Duration
		d time.Duration
	}{
		{&l.HandshakeTimeout, DefaultHandshakeTimeout}, {&l.IdleTimeout, DefaultIdleTimeout},
		{&l.KeepaliveTimeout, DefaultKeepaliveTimeout},
		{&l.ResultGrace, DefaultResultGrace}, {&l.DownloadDeadline, DefaultDownloadDeadline},
	} {
		if *d.p <= 0 {
			*d.p = d.d
		}
	}
	if l.MaxDownload <= 0 {
		l.MaxDownload = DefaultMaxDownload
	}
	if l.MaxUnpack <= 0 {
		l.MaxUnpack = DefaultMaxUnpack
	}
	return l
}
