package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/transport"
)

// globals are the flags every verb shares.
type globals struct {
	tokenFile string
	verbose   bool
	ifaces    []string
	stderr    io.Writer
}

// usageError marks a mistake on the command line (exit status 2).
type usageError struct{ error }

func newRoot(stdout, stderr io.Writer) *cobra.Command {
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

The token comes from --token-file or the BOARDLINK_TOKEN environment
variable.`,
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
	root.AddCommand(newLsCmd(g), newInfoCmd(g), newExecCmd(g), newPushCmd(g), newPullCmd(g),
		newDownloadCmd(g), newRebootCmd(g), newConsoleCmd(g), newOTACmd(g), newRolloutCmd(g), newHistoryCmd(), newImageCmd(), newDemoCmd(g))
	return root
}

// token returns the token from --token-file or $BOARDLINK_TOKEN.
func (g *globals) token() (string, error) {
	if g.tokenFile == "" {
		return os.Getenv("BOARDLINK_TOKEN"), nil
	}
	b, err := os.ReadFile(g.tokenFile)
	if err != nil {
		return "", &usageError{fmt.Errorf("token: %w", err)}
	}
	return strings.TrimSpace(string(b)), nil
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
	tok, err := g.token()
	if err != nil {
		return nil, err
	}
	opts := dispatcher.DialOptions{Token: tok, Logger: g.logger()}
	c, err := dispatcher.Dial(ctx, addr, opts)
	if errors.Is(err, dispatcher.ErrNeedsDiscovery) {
		c, err = g.dialID(ctx, addr, opts)
	}
	if errors.Is(err, dispatcher.ErrBadAddress) || errors.Is(err, errUnknownBoard) {
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
