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
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/proto"
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
	boardsPath  string
	server      string // the lab service's URL (--server, $BOARDLINK_SERVER)

	boardsOnce sync.Once
	boardsFile *boardsFile
	boardsErr  error
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
must have. Then this host proves its right to the board, never to a
board it has not checked: with its own key, once paired with the board
(boardlink pair), or with a token from --token-file or BOARDLINK_TOKEN,
proven by a MAC, or presented inside TLS to a board whose key is pinned.`,
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
	pf.StringVar(&g.boardsPath, "boards-file", "", "names for boards, with their address, token file and fingerprint (default $XDG_CONFIG_HOME/boardlink/boards.yaml)")
	pf.StringVar(&g.server, "server", "", "the lab service's URL (boardlink serve), e.g. http://lab:7300 (default $BOARDLINK_SERVER)")
	root.AddCommand(newPairCmd(g), newTrustCmd(g), newForgetCmd(g),
		newLsCmd(g), newInfoCmd(g), newExecCmd(g), newPushCmd(g), newPullCmd(g),
		newDownloadCmd(g), newRebootCmd(g), newWaitCmd(g), newConsoleCmd(g), newOTACmd(g), newRolloutCmd(g), newHistoryCmd(), newImageCmd(), newDemoCmd(g))
	root.AddCommand(newShellCmd(g))
	root.AddCommand(newForwardCmd(g))
	root.AddCommand(newServeCmd(g), newLeaseCmd(g), newPowerCmd(g))
	root.AddCommand(newLineMuxCmd(g))
	root.AddCommand(newBootstrapCmd(g))
	completeBoards(g, root)
	return root
}

// token returns the token for a board: from --token-file (which others
// must not be able to read), else for a board named in the boards file
// its token file or the file's own, else $BOARDLINK_TOKEN.
func (g *globals) token(a *boardAlias) (string, error) {
	switch {
	case g.tokenFile != "":
		return readToken(g.tokenFile, "--token-file")
	case a != nil && a.tokenFile != "":
		return readToken(a.tokenFile, "token_file of "+a.name)
	case a != nil && g.boardsFile.tokenFile != "":
		return readToken(g.boardsFile.tokenFile, "token_file of "+g.boardsFile.path)
	}
	return os.Getenv("BOARDLINK_TOKEN"), nil
}

// readToken reads a token file; what names it in errors.
func readToken(path, what string) (string, error) {
	if err := auth.CheckPrivate(path); err != nil {
		return "", &usageError{fmt.Errorf("%s: %w", what, err)}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", &usageError{fmt.Errorf("%s: %w", what, err)}
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", &usageError{fmt.Errorf("%s: %s is empty", what, path)}
	}
	return tok, nil
}

// boards is the boards file (--boards-file), read once.
func (g *globals) boards() (*boardsFile, error) {
	g.boardsOnce.Do(func() {
		path := g.boardsPath
		if path == "" {
			if path, g.boardsErr = defaultBoardsFile(); g.boardsErr != nil {
				g.boardsFile = &boardsFile{boards: map[string]boardAlias{}} // no config dir: no names
				g.boardsErr = nil
				return
			}
		}
		g.boardsFile, g.boardsErr = loadBoardsFile(path)
		if g.boardsErr != nil {
			g.boardsErr = &usageError{g.boardsErr}
		}
	})
	return g.boardsFile, g.boardsErr
}

// target is what BOARD names: the entry of the boards file, if it names
// one, and the address (or board id) to dial.
func (g *globals) target(board string) (string, *boardAlias, error) {
	f, err := g.boards()
	if err != nil {
		return "", nil, err
	}
	if a, ok := f.alias(board); ok {
		return a.address, &a, nil
	}
	return board, nil, nil
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

// dialOptions are the options of a session with the board a names
// (nil: any other board).
func (g *globals) dialOptions(a *boardAlias) (dispatcher.DialOptions, error) {
	if _, err := g.boards(); err != nil {
		return dispatcher.DialOptions{}, err
	}
	tok, err := g.token(a)
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
	opts.Lines = g.lineShare(tok)
	switch {
	case g.fingerprint != "":
		if opts.Fingerprint, err = auth.ParseFingerprint(g.fingerprint); err != nil {
			return opts, &usageError{fmt.Errorf("--fingerprint: %w", err)}
		}
	case a != nil:
		opts.Fingerprint = a.fingerprint
	}
	return opts, nil
}

func (g *globals) logger() *slog.Logger {
	if !g.verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// debug logs with -v.
func (g *globals) debug(msg string, args ...any) {
	if l := g.logger(); l != nil {
		l.Debug(msg, args...)
	}
}

// dial connects to BOARD (a name from the boards file, an address or a
// board id); a failure is a link failure (exit 255) unless the address
// itself is wrong.
func (g *globals) dial(ctx context.Context, board string) (*dispatcher.Client, error) {
	return g.connect(ctx, board, dispatcher.Dial)
}

// dialFunc is dispatcher.Dial, or a dial that waits.
type dialFunc func(context.Context, string, dispatcher.DialOptions) (*dispatcher.Client, error)

// connect is dial with dial.
func (g *globals) connect(ctx context.Context, board string, dial dialFunc) (*dispatcher.Client, error) {
	addr, a, err := g.target(board)
	if err != nil {
		return nil, err
	}
	opts, err := g.dialOptions(a)
	if err != nil {
		return nil, err
	}
	opts.Resolver = g.resolver()
	start := time.Now()
	g.debug("dial", "board", board, "address", addr, "token", opts.Token != "", "host_key", opts.HostKey != nil)
	c, err := dial(ctx, addr, opts)
	if errors.Is(err, dispatcher.ErrBadAddress) || errors.Is(err, dispatcher.ErrUnknownBoard) {
		return nil, &usageError{err}
	}
	if err != nil && opts.Token == "" && proto.IsReason(err, proto.ReasonUnauthorized) {
		err = fmt.Errorf("no token given (--token-file, BOARDLINK_TOKEN, or token_file in %s), and %w", g.boardsFile.path, err)
	}
	if err != nil {
		return nil, linkFailure(err)
	}
	h := c.Hello()
	rememberIDs(h.BoardID)
	g.debug("session open", "board", h.BoardID, "agent", h.Agent, "protocol", h.Protocol, "took", time.Since(start).Round(time.Millisecond))
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
