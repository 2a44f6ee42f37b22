package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher/bootstrap"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
	"github.com/boardlink/boardlink/internal/units"
	"github.com/boardlink/boardlink/transport/seriallink"
)

func newBootstrapCmd(g *globals) *cobra.Command {
	var (
		o            bootstrap.Options
		passwordFile string
		chunk        string
	)
	cmd := &cobra.Command{
		Use:   "bootstrap ADDRESS [flags]",
		Short: "Put the agent on a board that has only a shell on its serial console",
		Long: `bootstrap reaches a board that has no agent yet through the shell on its
serial console (serial:///dev/ttyUSB0?baud=115200, tcp://HOST:PORT, or
unix:///PATH), sends it the static agent and starts the agent on the same
line, in place of the shell, so that 'boardlink exec ADDRESS' works at once.

It never types into a line before it knows what listens there: it listens
first (--listen), and stops if an agent beacons. Otherwise it types one
newline and expects a shell prompt ("# ", "$ ") or a login prompt, which it
answers with --user and --password-file. It turns echo off, finds the
board's architecture (uname -m) and sends the agent for it: --agent, else
boardlinkd-linux-GOARCH beside this binary, in $XDG_DATA_HOME/boardlink/agents
or in /usr/lib/boardlink/agents. The agent goes gzipped when the board can
decompress (gzip or zcat), through base64 -d (else printf escapes), in
chunks each checked by sha256 on the board; kernel messages on the console
do no harm, and a chunk that arrives wrong is sent again. Interrupted
(Ctrl-C), it says how much is on the board; run it again and it sends only
the rest.

The agent serves the line with the token of --token-file or
BOARDLINK_TOKEN, which bootstrap writes to the board (mode 0600). With
--install it is also installed to start at boot: the binary in
/usr/local/bin (else /usr/sbin), /etc/boardlink/boardlinkd.yaml and
/etc/boardlink/tokens, and a systemd unit (which takes the line from its
serial getty) or an init.d script (remove a getty on the same line from
/etc/inittab yourself).`,
		Example: `  boardlink bootstrap serial:///dev/ttyUSB0?baud=115200 --user root --password-file ~/.board-pw --token-file ~/.board-token
  boardlink bootstrap unix:///tmp/qemu/ttyS1.sock --agent ./boardlinkd-linux-amd64 --id lab-7 --install`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &usageError{fmt.Errorf("bootstrap takes one ADDRESS (see '%s --help')", cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			addr, a, err := g.target(args[0])
			if err != nil {
				return err
			}
			dev, baud, err := bootstrapLine(addr)
			if err != nil {
				return err
			}
			if o.Token, err = g.token(a); err != nil {
				return err
			}
			if o.Token == "" {
				return &usageError{errors.New("bootstrap needs the token the agent will accept: --token-file or BOARDLINK_TOKEN")}
			}
			if passwordFile != "" {
				if o.Password, err = readToken(passwordFile, "--password-file"); err != nil {
					return err
				}
			}
			if chunk != "" {
				n, err := units.ParseSize(chunk)
				if err != nil {
					return &usageError{fmt.Errorf("--chunk-size: %w", err)}
				}
				o.ChunkSize = int(n)
			}
			if g.verbose {
				o.Trace = g.stderr
			}
			return runBootstrap(ctx, g, cmd.OutOrStdout(), addr, dev, baud, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Agent, "agent", "", "the static agent binary to send (default: found by the board's architecture)")
	f.StringVar(&o.User, "user", "", "the user to log in as, if the board asks")
	f.StringVar(&passwordFile, "password-file", "", "file holding the password, if the board asks (mode 0600)")
	f.BoolVar(&o.Install, "install", false, "also install the agent to start at boot (needs root on the board)")
	f.BoolVar(&o.NoStart, "no-start", false, "leave the agent on the board (and installed) without starting it: the shell stays")
	f.StringVar(&o.Dir, "dir", bootstrap.DefaultDir, "directory on the board for the agent and its state")
	f.StringVar(&o.ID, "id", "", "the board id the agent takes (default: from the board)")
	f.StringVar(&o.Model, "model", "", "the board model the agent reports (default: from the board)")
	f.StringArrayVar(&o.Args, "agent-arg", nil, "one more flag for the agent (repeatable), e.g. --agent-arg=--root=/srv")
	f.DurationVar(&o.Listen, "listen", bootstrap.DefaultListen, "how long to listen for an agent before typing anything")
	f.DurationVar(&o.PromptTimeout, "prompt-timeout", bootstrap.DefaultPromptTimeout, "how long to wait for a prompt")
	f.DurationVar(&o.StartTimeout, "start-timeout", bootstrap.DefaultStartTimeout, "how long to wait for the started agent's beacon")
	f.StringVar(&chunk, "chunk-size", "", "bytes per sha256-checked chunk (default 32KiB)")
	f.StringVar(&o.Encoding, "encoding", "", "base64 or printf (default: base64 when the board has it)")
	f.BoolVar(&o.NoCompress, "no-compress", false, "send the agent uncompressed")
	return cmd
}

// runBootstrap opens the line at addr (dev at baud) and bootstraps the
// board on it.
func runBootstrap(ctx context.Context, g *globals, stdout io.Writer, addr, dev string, baud int, o bootstrap.Options) error {
	// The line's lock, as every boardlink call on a line takes it: held
	// by a line mux (an agent answers there) or by another program (a
	// terminal on the console), the line is not bootstrap's to type into.
	dir, err := lineshare.Dir()
	if err != nil {
		return err
	}
	unlock, err := lineshare.Lock(addr, dir)
	if errors.Is(err, lineshare.ErrBusy) {
		return &exitError{code: 1, err: fmt.Errorf("%w; bootstrap types into a line only when nothing else holds it, and typed nothing", err)}
	}
	if err != nil {
		return err
	}
	defer unlock()
	rwc, err := seriallink.OpenLine(ctx, dev, baud)
	if err != nil {
		return linkFailure(err)
	}
	defer rwc.Close()
	bar := newProgressBar(g.stderr, "agent", 0)
	o.Progress = func(p bootstrap.Progress) { bar.set(p.OnBoard, p.Total) }
	start := time.Now()
	res, err := bootstrap.Run(ctx, rwc, o)
	bar.done(err == nil)
	var ie *bootstrap.InterruptedError
	switch {
	case errors.As(err, &ie) && ctx.Err() != nil:
		return interrupted(ctx, "%d of %d bytes of the agent (%d of %d chunks) are on the board: run bootstrap again to send the rest",
			ie.OnBoard, ie.Total, ie.Chunks, ie.Of)
	case err != nil && ctx.Err() != nil:
		return interrupted(ctx, "%v", err)
	case errors.Is(err, bootstrap.ErrAgentPresent):
		return &exitError{code: 1, err: fmt.Errorf("%w; nothing was typed", err)}
	case err != nil:
		return linkFailure(err)
	}
	sent := "the agent was on the board already"
	if !res.Present {
		how := res.Encoding
		if res.Compressed {
			how = "gzip, " + how
		}
		sent = fmt.Sprintf("sent %d of %d chunks (%s, %s) in %s", res.Sent, res.Chunks, humanBytes(res.Total), how, seconds(time.Since(start)))
	}
	what := "started"
	if o.NoStart {
		what = "is at " + res.Remote + ", not started,"
	}
	fmt.Fprintf(stdout, "agent %s %s on %s (%s, %s): %s\n", res.Agent, what, addr, res.Arch, res.Tty, sent)
	for _, f := range res.Installed {
		fmt.Fprintf(stdout, "installed %s\n", f)
	}
	if !o.NoStart {
		fmt.Fprintf(stdout, "next: boardlink exec %s -- uname -a\n", addr)
	}
	return nil
}

// bootstrapLine is the line addr names, as seriallink.OpenLine takes
// it: a serial device (serial:///dev/ttyUSB0?baud=115200) and its baud
// rate, or the tcp:// or unix:// address itself.
func bootstrapLine(addr string) (string, int, error) {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "serial" && u.Scheme != "tcp" && u.Scheme != "unix") {
		return "", 0, &usageError{fmt.Errorf("bootstrap needs a line: serial:///dev/..., tcp://HOST:PORT or unix:///PATH, not %q", addr)}
	}
	if u.Scheme != "serial" {
		return addr, 0, nil
	}
	baud := 115200
	if b := u.Query().Get("baud"); b != "" {
		if baud, err = strconv.Atoi(b); err != nil || baud <= 0 {
			return "", 0, &usageError{fmt.Errorf("%s: bad baud %q", addr, b)}
		}
	}
	if !strings.HasPrefix(u.Path, "/") {
		return "", 0, &usageError{fmt.Errorf("%s: no device path", addr)}
	}
	return u.Path, baud, nil
}
