package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

func newForwardCmd(g *globals) *cobra.Command {
	var reverse bool
	cmd := &cobra.Command{
		Use:   "forward BOARD LOCAL:REMOTE | forward --reverse BOARD REMOTE:LOCAL",
		Short: "Forward a board's TCP port to the host, or a host's port to the board",
		Long: `forward makes a TCP port of the board reachable on the host, as ssh -L and
adb forward do: every connection made to the host's LOCAL port is joined to
one the board makes to REMOTE. With --reverse it is the other way, as ssh -R
and adb reverse: the board listens on REMOTE and every connection made there
is joined to one this host makes to LOCAL. Each connection is a stream of
the session with its own flow control, over WebSocket or a serial line alike
(a web server on a board with no network is reached over its UART).

The forms, as ssh's:
  PORT:PORT                  listen on loopback, connect to localhost
  PORT:HOST:PORT             connect to HOST
  BIND:PORT:PORT             listen on the address BIND
  BIND:PORT:HOST:PORT        both
An IPv6 address goes in brackets ([::1]:8080:localhost:80). A listening
port of 0 takes any free one. The board connects to any host it reaches
(every credential already runs any command there); it listens on loopback
unless BIND says otherwise. The agent logs each connection forwarded.

forward prints where it listens, then waits for connections until
interrupted; -v logs each one. Ctrl-C (or SIGTERM) closes every connection
and says how many were open.

Exit status: 130 after Ctrl-C; 1 a port that cannot be listened on; 2 a
malformed argument; 255 the link failed.`,
		Example: `  boardlink forward board1 8080:80              # http://127.0.0.1:8080 is the board's port 80
  boardlink forward board1 0:localhost:22        # prints the port it picked
  boardlink forward --reverse board1 9000:3000   # the board's 127.0.0.1:9000 is the host's port 3000`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := parseForwardSpec(args[1])
			if err != nil {
				return &usageError{err}
			}
			ctx := cmd.Context()
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			f := &forwarding{g: g, board: c.Hello().BoardID}
			if reverse {
				err = f.reverse(ctx, cmd, c, spec)
			} else {
				err = f.forward(ctx, cmd, c, spec)
			}
			if err != nil {
				return err
			}
			return interrupted(ctx, "%s", f.summary())
		},
	}
	cmd.Flags().BoolVarP(&reverse, "reverse", "R", false, "listen on the board and connect from the host (REMOTE:LOCAL)")
	return cmd
}

// forwardSpec is where to listen and where to connect each connection.
type forwardSpec struct {
	bind string // "" : loopback
	port int    // 0: any free port
	host string // "": localhost
	to   int
}

// parseForwardSpec reads [BIND:]PORT:[HOST:]PORT.
func parseForwardSpec(s string) (forwardSpec, error) {
	f, err := splitSpec(s)
	if err != nil {
		return forwardSpec{}, err
	}
	var (
		spec  forwardSpec
		ports [2]string
		addrs []string // the addresses given, none of them empty
	)
	switch {
	case len(f) == 2:
		ports = [2]string{f[0], f[1]}
	case len(f) == 3 && isNumber(f[1]) && !isNumber(f[0]):
		spec.bind, ports, addrs = f[0], [2]string{f[1], f[2]}, f[:1]
	case len(f) == 3:
		spec.host, ports, addrs = f[1], [2]string{f[0], f[2]}, f[1:2]
	case len(f) == 4:
		spec.bind, spec.host, ports, addrs = f[0], f[2], [2]string{f[1], f[3]}, []string{f[0], f[2]}
	default:
		return spec, fmt.Errorf("%q: want [BIND:]PORT:[HOST:]PORT", s)
	}
	if slices.Contains(addrs, "") {
		return spec, fmt.Errorf("%q: an empty address", s)
	}
	if spec.port, err = parsePort(s, ports[0], 0); err != nil {
		return spec, err
	}
	if spec.to, err = parsePort(s, ports[1], 1); err != nil {
		return spec, err
	}
	return spec, nil
}

// splitSpec splits s at its colons, but not within brackets, which it
// takes off.
func splitSpec(spec string) ([]string, error) {
	var f []string
	for s := spec; ; {
		var field string
		if strings.HasPrefix(s, "[") {
			end := strings.IndexByte(s, ']')
			if end < 0 || end+1 < len(s) && s[end+1] != ':' {
				return nil, fmt.Errorf("%q: want [ADDRESS] between colons", spec)
			}
			field, s = s[1:end], s[end+1:]
		} else {
			i := strings.IndexByte(s, ':')
			if i < 0 {
				i = len(s)
			}
			field, s = s[:i], s[i:]
		}
		f = append(f, field)
		if s == "" {
			return f, nil
		}
		s = s[1:] // the colon
	}
}

func isNumber(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// parsePort reads a port of spec, from min to 65535.
func parsePort(spec, s string, min int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > 65535 {
		return 0, fmt.Errorf("%q: port %q: want %d to 65535", spec, s, min)
	}
	return n, nil
}

// forwarding is one run of forward: it counts the connections to say how
// many the stop closed.
type forwarding struct {
	g     *globals
	board string

	mu                  sync.Mutex
	opened, failed, cut int
}

// event logs one connection with -v and counts it.
func (f *forwarding) event(ev dispatcher.ForwardEvent) {
	f.mu.Lock()
	switch {
	case ev.Kind == dispatcher.ForwardOpened:
		f.opened++
	case ev.Kind == dispatcher.ForwardFailed:
		f.failed++
	case ev.Cut:
		f.cut++
	}
	f.mu.Unlock()
	switch ev.Kind {
	case dispatcher.ForwardOpened:
		f.g.debug("forward: connection", "from", ev.From, "to", ev.To)
	case dispatcher.ForwardFailed:
		f.g.debug("forward: connection failed", "from", ev.From, "err", ev.Err)
	default:
		f.g.debug("forward: connection closed", "from", ev.From, "to", ev.To, "sent", ev.Sent, "received", ev.Received,
			"stopped", ev.Cut, "err", ev.Err)
	}
}

// summary says what the stop closed.
func (f *forwarding) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("closed %d open connection(s); %d forwarded in all, %d failed", f.cut, f.opened, f.failed)
}

// forward listens on the host and forwards to the board until ctx ends.
func (f *forwarding) forward(ctx context.Context, cmd *cobra.Command, c *dispatcher.Client, spec forwardSpec) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(cmp.Or(spec.bind, "127.0.0.1"), strconv.Itoa(spec.port)))
	if err != nil {
		return err
	}
	target := net.JoinHostPort(cmp.Or(spec.host, "localhost"), strconv.Itoa(spec.to))
	fmt.Fprintf(cmd.OutOrStdout(), "listening on %s, forwarding to %s on %s\n", ln.Addr(), target, f.board)
	fmt.Fprintf(cmd.ErrOrStderr(), "waiting for connections to %s (Ctrl-C stops)\n", ln.Addr())
	err = c.Forward(ctx, ln, spec.host, spec.to, f.event)
	if errors.Is(err, dispatcher.ErrNoForwarding) {
		return err
	}
	return linkFailure(err)
}

// reverse listens on the board and forwards to the host until ctx ends.
func (f *forwarding) reverse(ctx context.Context, cmd *cobra.Command, c *dispatcher.Client, spec forwardSpec) error {
	ln, err := c.ListenTCP(ctx, spec.bind, spec.port)
	switch {
	case errors.Is(err, dispatcher.ErrNoForwarding),
		proto.IsReason(err, proto.ReasonBusy), proto.IsReason(err, proto.ReasonInvalidParams):
		return fmt.Errorf("listen on the board: %w", err)
	case err != nil:
		return linkFailure(err)
	}
	target := net.JoinHostPort(cmp.Or(spec.host, "localhost"), strconv.Itoa(spec.to))
	fmt.Fprintf(cmd.OutOrStdout(), "listening on %s on %s, forwarding to %s\n", ln.Address, f.board, target)
	fmt.Fprintf(cmd.ErrOrStderr(), "waiting for connections to %s on the board (Ctrl-C stops)\n", ln.Address)
	d := net.Dialer{Timeout: 10 * time.Second}
	dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) }
	return linkFailure(ln.Serve(ctx, dial, f.event))
}
