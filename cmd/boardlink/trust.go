package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// newPairCmd is `boardlink pair BOARD`.
func newPairCmd(g *globals) *cobra.Command {
	var code, name string
	cmd := &cobra.Command{
		Use:   "pair BOARD [--code CODE] [--name NAME]",
		Short: "Pair this host with a board, with a one-time code: no token needed afterwards",
		Long: `pair pairs this host with a board, as adb pair does a phone: the board shows
a one-time code (XXXX-XXXX) on its console and in its log, or its operator
runs 'boardlinkd pair' there to print one; you type it here. Both ends then
prove they saw the same code (SPAKE2, bound to both keys, so a man in the
middle learns nothing and gets one guess), and each stores the other's key:
the board accepts this host's key from then on, and this host pins the
board's key as paired in the known-boards file.

This host's key is made on first use, in $XDG_CONFIG_HOME/boardlink/host_key.pem
(--host-key). --code gives the code without asking (for scripts); without a
terminal the code is read from stdin.`,
		Example: `  boardlink pair lab-7
  boardlink pair wss://10.77.0.2:7207 --code "$(ssh root@10.77.0.2 boardlinkd pair --config /etc/boardlink/boardlinkd.yaml)"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			addr, err := g.resolve(ctx, args[0])
			if err != nil {
				return err
			}
			known, err := g.known()
			if err != nil {
				return err
			}
			path, err := g.hostKeyPath()
			if err != nil {
				return err
			}
			key, created, err := auth.LoadOrCreateKey(path)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("host key: %w", err)}
			}
			if created {
				fmt.Fprintf(cmd.ErrOrStderr(), "made this host's key: %s\n", path)
			}
			if name == "" {
				name = defaultHostName()
			}
			opts := dispatcher.PairOptions{HostKey: key, Name: name, Known: known, Logger: g.logger(),
				Code: func(ctx context.Context, board string, begin proto.PairBeginResult) (string, error) {
					if code != "" {
						return code, nil
					}
					return askCode(ctx, cmd.InOrStdin(), cmd.ErrOrStderr(), board, begin)
				}}
			if g.fingerprint != "" {
				if opts.Fingerprint, err = auth.ParseFingerprint(g.fingerprint); err != nil {
					return &usageError{fmt.Errorf("--fingerprint: %w", err)}
				}
			}
			res, err := dispatcher.Pair(ctx, addr, opts)
			if err != nil {
				if errors.Is(err, auth.ErrWrongCode) {
					return &exitError{code: 1, err: err}
				}
				return linkFailure(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "paired with board %s (key %s) as %q\n", res.BoardID, res.Fingerprint, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&code, "code", "", "the pairing code, rather than asking for it")
	cmd.Flags().StringVar(&name, "name", "", "how the board lists this host (default USER@HOSTNAME)")
	return cmd
}

func isURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme != ""
}

func defaultHostName() string {
	host, _ := os.Hostname()
	if u, err := user.Current(); err == nil {
		return u.Username + "@" + host
	}
	return host
}

// askCode asks for the code on a terminal, or reads a line from in.
func askCode(ctx context.Context, in io.Reader, stderr io.Writer, board string, begin proto.PairBeginResult) (string, error) {
	fmt.Fprintf(stderr, "Type the pairing code shown on %s (board %s; valid %s, %d attempts): ",
		begin.Shown, board, (time.Duration(begin.ExpiresMs) * time.Millisecond).Round(time.Second), begin.Attempts)
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(in).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s == "" {
			return "", &usageError{errors.New("no pairing code given")}
		}
		return s, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// newTrustCmd is `boardlink trust BOARD`: pin the key a board shows now,
// replacing the pin it had, or list the pins.
func newTrustCmd(g *globals) *cobra.Command {
	var list, asJSON bool
	cmd := &cobra.Command{
		Use:   "trust BOARD [--fingerprint SHA256:...] | trust --list [--json]",
		Short: "Pin the key a board shows now (after a reinstall), or list the pinned keys",
		Long: `trust connects to BOARD, checks that it proves the key it shows, and pins that
key for its id in the known-boards file, replacing the key pinned before: the
way to accept a board whose key changed because it was reinstalled. With
--fingerprint the key must be that one (read it on the board with
'boardlinkd fingerprint'); without, you vouch for what answers now. No token
is needed. --list prints the pinned keys.`,
		Example: `  boardlink trust lab-7 --fingerprint SHA256:3q2+7w...
  boardlink trust --list`,
		Args: func(cmd *cobra.Command, args []string) error {
			if list {
				return cobra.NoArgs(cmd, args)
			}
			return exactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			known, err := g.known()
			if err != nil {
				return err
			}
			if list {
				return listKnown(cmd.OutOrStdout(), known, asJSON)
			}
			ctx := cmd.Context()
			addr, err := g.resolve(ctx, args[0])
			if err != nil {
				return err
			}
			opts := dispatcher.DialOptions{Logger: g.logger(), Trust: dispatcher.TrustFunc(func(string, auth.Fingerprint) error { return nil })}
			if g.fingerprint != "" {
				if opts.Fingerprint, err = auth.ParseFingerprint(g.fingerprint); err != nil {
					return &usageError{fmt.Errorf("--fingerprint: %w", err)}
				}
			}
			res, err := dispatcher.Identify(ctx, addr, opts)
			if err != nil {
				return linkFailure(err)
			}
			old, had := known.Lookup(res.BoardID)
			if err := known.Pin(ctx, res.BoardID, res.Fingerprint, false); err != nil {
				return &exitError{code: 1, err: err}
			}
			switch {
			case had && old.Fingerprint.Equal(res.Fingerprint):
				fmt.Fprintf(cmd.OutOrStdout(), "board %s: key %s was pinned already\n", res.BoardID, res.Fingerprint)
			case had:
				fmt.Fprintf(cmd.OutOrStdout(), "board %s: pinned key %s (replacing %s)\n", res.BoardID, res.Fingerprint, old.Fingerprint)
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "board %s: pinned key %s\n", res.BoardID, res.Fingerprint)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&list, "list", false, "list the pinned board keys")
	cmd.Flags().BoolVar(&asJSON, "json", false, "with --list: one JSON array")
	return cmd
}

func listKnown(w io.Writer, known *dispatcher.KnownBoards, asJSON bool) error {
	boards, err := known.List()
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	if asJSON {
		if boards == nil {
			boards = []dispatcher.KnownBoard{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(boards)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BOARD\tFINGERPRINT\tHOW\tADDED")
	for _, b := range boards {
		how := "first use"
		if b.Paired {
			how = "paired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.ID, b.Fingerprint, how, b.Added.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

// newForgetCmd is `boardlink forget BOARD`.
func newForgetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "forget BOARD",
		Short: "Remove a board's pinned key: the next connection trusts what it shows",
		Long: `forget removes the key pinned for board id BOARD from the known-boards file,
so that the next connection pins the key the board shows then (or, with
--strict-keys, refuses it until 'boardlink trust'). It does not connect.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if isURL(args[0]) {
				return &usageError{fmt.Errorf("forget takes a board id, not an address (boardlink trust --list shows them)")}
			}
			known, err := g.known()
			if err != nil {
				return err
			}
			old, _ := known.Lookup(args[0])
			found, err := known.Forget(cmd.Context(), args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			if !found {
				return &exitError{code: 1, err: fmt.Errorf("no key is pinned for board %s in %s", args[0], known.Path())}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "forgot board %s (key %s)\n", args[0], old.Fingerprint)
			return nil
		},
	}
}
