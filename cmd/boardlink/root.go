package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/transport"
)

// globals are the flags every verb shares.
type globals struct {
	tokenFile   string
	verbose     bool
	ifaces      []string
	stderr      io.Writer
	knownFile   string
	hostKeyFile string
	fingerprint string
	strictKeys  bool
	insecure    bool
}

// usageError marks a mistake on the command line (exit status 2).
type usageError struct{ error }

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	// Notices (a board trusted on first use) come from the goroutines of
	// a rollout while its display draws: one writer, one writer at a time.
	stderr = &lockedWriter{w: stderr}
	g := &globals{stderr: stderr}
	root := &cobra.Command{
		Use:   "boardlink",
		Short: "Drive boards through their boardlink agent",
		Long: `boardlink drives boards that run the boardlink agent (boardlinkd): run a
command and get its real exit code and separate stdout and stderr, move
files both ways (resumable, sha256-checked), have the board download and
unpack packages itself, reboot it and wait until it is back, read its
serial console, update it to a signed A/B image (ota), and roll an image
out across a whole lab in stages (rollout, history), with no serial-shell
parsing.

BOARD is one of:
  ID                           a board id (or a unique prefix of one), found
                               by discovery as in 'boardlink ls'
  ws://HOST:PORT               the agent's WebSocket (default port 7207)
  serial:///dev/ttyUSB0?baud=115200
                               the agent's framed protocol on a serial port
  tcp://HOST:PORT              a serial line exported over TCP (ser2net)
  unix:///PATH                 a serial line on a unix socket (QEMU chardev)

Every session checks the board's key first: boardlink pins it by board
id in the known-boards file on first use (as ssh does its known_hosts) and
refuses a board whose key changed; --fingerprint names the key a board
must have. Then this host proves its right to the board, never by sending
a secret: with its own key, once paired with the board (boardlink pair),
or with a MAC keyed by a token from --token-file or BOARDLINK_TOKEN.`,
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the agent's token (default: $BOARDLINK_TOKEN)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log protocol activity to stderr")
	pf.StringArrayVar(&g.ifaces, "iface", nil, "network interface for mDNS discovery (repeatable; default: every multicast-capable one)")
	pf.StringVar(&g.knownFile, "known-boards", "", "the file of pinned board keys (default $XDG_CONFIG_HOME/boardlink/known_boards.json)")
	pf.StringVar(&g.hostKeyFile, "host-key", "", "this host's key, made by boardlink pair (default $XDG_CONFIG_HOME/boardlink/host_key.pem)")
	pf.StringVar(&g.fingerprint, "fingerprint", "", "the key the board must have, SHA256:... (boardlinkd fingerprint prints it)")
	pf.BoolVar(&g.strictKeys, "strict-keys", false, "refuse a board whose key is not pinned yet, rather than trust it on first use")
	pf.BoolVar(&g.insecure, "allow-legacy-agent", false, "talk to an agent older than protocol 4, which cannot prove its key (a token is then sent in the clear)")
	root.AddCommand(newPairCmd(g), newTrustCmd(g), newForgetCmd(g),
		newLsCmd(g), newInfoCmd(g), newExecCmd(g), newPushCmd(g), newPullCmd(g),
		newDownloadCmd(g), newRebootCmd(g), newConsoleCmd(g), newOTACmd(g), newRolloutCmd(g), newHistoryCmd(), newImageCmd(), newDemoCmd(g))
	return root
}

// token returns the token from --token-file (which others must not be
// able to read) or $BOARDLINK_TOKEN.
func (g *globals) token() (string, error) {
	if g.tokenFile == "" {
		return os.Getenv("BOARDLINK_TOKEN"), nil
	}
	if err := auth.CheckPrivate(g.tokenFile); err != nil {
		return "", &usageError{fmt.Errorf("--token-file: %w", err)}
	}
	b, err := os.ReadFile(g.tokenFile)
	if err != nil {
		return "", &usageError{fmt.Errorf("--token-file: %w", err)}
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", &usageError{fmt.Errorf("--token-file %s is empty", g.tokenFile)}
	}
	return tok, nil
}

// known is the known-boards file, pins on first use reported on stderr.
func (g *globals) known() (*dispatcher.KnownBoards, error) {
	path := g.knownFile
	if path == "" {
		var err error
		if path, err = dispatcher.DefaultKnownBoardsPath(); err != nil {
			return nil, err
		}
	}
	k := dispatcher.NewKnownBoards(path)
	k.Strict = g.strictKeys
	k.OnPin = func(b dispatcher.KnownBoard) {
		fmt.Fprintf(g.stderr, "boardlink: trusting board %s on first use: key %s (pinned in %s)\n", b.ID, b.Fingerprint, path)
	}
	return k, nil
}

// hostKeyPath is --host-key or the default.
func (g *globals) hostKeyPath() (string, error) {
	if g.hostKeyFile != "" {
		return g.hostKeyFile, nil
	}
	return dispatcher.DefaultHostKeyPath()
}

// hostKey is this host's key, if it has one (boardlink pair makes it).
func (g *globals) hostKey() (ed25519.PrivateKey, error) {
	path, err := g.hostKeyPath()
	if err != nil {
		return nil, err
	}
	k, err := auth.LoadKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return k, err
}

// dialOptions are the options every session of this process uses.
func (g *globals) dialOptions() (dispatcher.DialOptions, error) {
	tok, err := g.token()
	if err != nil {
		return dispatcher.DialOptions{}, err
	}
	known, err := g.known()
	if err != nil {
		return dispatcher.DialOptions{}, err
	}
	hk, err := g.hostKey()
	if err != nil {
		return dispatcher.DialOptions{}, &usageError{fmt.Errorf("host key: %w", err)}
	}
	opts := dispatcher.DialOptions{Token: tok, HostKey: hk, Trust: known, Logger: g.logger(), AllowLegacy: g.insecure}
	if g.fingerprint != "" {
		if opts.Fingerprint, err = auth.ParseFingerprint(g.fingerprint); err != nil {
			return opts, &usageError{fmt.Errorf("--fingerprint: %w", err)}
		}
	}
	return opts, nil
}

func (g *globals) logger() *slog.Logger {
	if !g.verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// dial connects to BOARD; a failure is a link failure (exit 255) unless
// the address itself is wrong.
func (g *globals) dial(ctx context.Context, addr string) (*dispatcher.Client, error) {
	opts, err := g.dialOptions()
	if err != nil {
		return nil, err
	}
	opts.Resolver = g.resolver()
	c, err := dispatcher.Dial(ctx, addr, opts)
	if errors.Is(err, dispatcher.ErrBadAddress) || errors.Is(err, dispatcher.ErrUnknownBoard) {
		return nil, &usageError{err}
	}
	if err != nil {
		return nil, linkFailure(err)
	}
	return c, nil
}

// linkFailure maps an error talking to the board to exit status 255,
// keeping usage errors as they are.
func linkFailure(err error) error {
	var ue *usageError
	if err == nil || errors.As(err, &ue) {
		return err
	}
	if errors.Is(err, transport.ErrClosed) {
		err = fmt.Errorf("link to the board failed: %w", err)
	}
	return &exitError{code: exitLink, err: err}
}

// lockedWriter serializes writes to w. It keeps w's file descriptor, so a
// terminal is still seen as one (isTerminal).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Fd is w's file descriptor, or an invalid one when w is not a file.
func (l *lockedWriter) Fd() uintptr {
	if f, ok := l.w.(interface{ Fd() uintptr }); ok {
		return f.Fd()
	}
	return ^uintptr(0)
}
