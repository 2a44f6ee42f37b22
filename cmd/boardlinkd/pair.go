package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
)

// stateFlags name the state dir of the board a subcommand works on:
// --state-dir, or the state_dir of a --config file.
type stateFlags struct{ stateDir, config string }

func (f *stateFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "", "the board's state directory")
	cmd.Flags().StringVar(&f.config, "config", "", "the agent's YAML config file, for its state_dir")
}

func (f *stateFlags) cfg() (Config, error) {
	var c Config
	if f.config != "" {
		file, err := loadConfigFile(f.config)
		if err != nil {
			return c, err
		}
		c = file
	}
	if f.stateDir != "" {
		c.StateDir = f.stateDir
	}
	if c.StateDir == "" {
		return c, errors.New("give --state-dir (or --config with state_dir)")
	}
	return c, nil
}

// newPairCmd is `boardlinkd pair`: a pairing code made on the board by
// whoever administers it, for a host to type into `boardlink pair`; or
// the list of paired hosts, and removal of one.
func newPairCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		sf     stateFlags
		ttl    time.Duration
		list   bool
		remove string
	)
	cmd := &cobra.Command{
		Use:   "pair [--state-dir DIR | --config FILE] [--ttl D] [--list | --remove HOST]",
		Short: "Make a pairing code for boardlink pair, list the paired hosts, or remove one",
		Long: `boardlinkd pair makes a one-time pairing code and prints it on stdout; the
running agent takes it for the next 'boardlink pair' from a host (instead of
making one and showing it on its console). The code is good for --ttl and
three attempts. Run it as the agent's user: it writes STATE_DIR/auth.

--list prints the hosts paired with the board; --remove HOST unpairs a host
(by its name or its key's fingerprint) at once.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := sf.cfg()
			if err != nil {
				return err
			}
			switch {
			case list:
				return listPaired(stdout, cfg.pairedFile())
			case remove != "":
				return removePaired(stderr, cfg.pairedFile(), remove)
			}
			if ttl <= 0 || ttl > 24*time.Hour {
				return fmt.Errorf("--ttl %s: want a duration up to 24h", ttl)
			}
			code, err := agent.WritePairingCode(cfg.codeFile(), ttl, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, code)
			fmt.Fprintf(stderr, "pairing code valid for %s and 3 attempts: on the host, run boardlink pair BOARD and type it\n", ttl)
			return nil
		},
	}
	sf.bind(cmd)
	cmd.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "how long the code is valid")
	cmd.Flags().BoolVar(&list, "list", false, "list the paired hosts")
	cmd.Flags().StringVar(&remove, "remove", "", "unpair a host, by name or fingerprint")
	return cmd
}

func listPaired(w io.Writer, path string) error {
	hosts, err := agent.ReadPaired(path)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tFINGERPRINT\tPAIRED\tFROM")
	for _, h := range hosts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Name, h.FP, h.Added.Format(time.RFC3339), h.From)
	}
	return tw.Flush()
}

func removePaired(w io.Writer, path, which string) error {
	hosts, err := agent.ReadPaired(path)
	if err != nil {
		return err
	}
	fp, fpErr := auth.ParseFingerprint(which)
	kept := slices.DeleteFunc(slices.Clone(hosts), func(h agent.PairedHost) bool {
		return h.Name == which || (fpErr == nil && h.FP.Equal(fp))
	})
	if len(kept) == len(hosts) {
		return fmt.Errorf("no paired host is named %q or has that fingerprint (boardlinkd pair --list)", which)
	}
	if err := agent.WritePaired(path, kept); err != nil {
		return err
	}
	fmt.Fprintf(w, "unpaired %d host(s) matching %s\n", len(hosts)-len(kept), which)
	return nil
}

// newFingerprintCmd is `boardlinkd fingerprint`: the board key's
// fingerprint, to give hosts as --fingerprint out of band.
func newFingerprintCmd(stdout io.Writer) *cobra.Command {
	var sf stateFlags
	cmd := &cobra.Command{
		Use:   "fingerprint [--state-dir DIR | --config FILE]",
		Short: "Print the fingerprint of the board's key (made on first use)",
		Long: `boardlinkd fingerprint prints the fingerprint of the board's key, making the
key if the board has none yet, so that it can be handed to hosts out of band
(boardlink --fingerprint, boardlink trust --fingerprint) or checked against
what a host shows.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := sf.cfg()
			if err != nil {
				return err
			}
			key, _, err := auth.LoadOrCreateKey(cfg.keyFile())
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, auth.FingerprintOf(key.Public().(ed25519.PublicKey)))
			return nil
		},
	}
	sf.bind(cmd)
	return cmd
}
