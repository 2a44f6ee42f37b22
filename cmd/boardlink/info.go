package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/proto"
)

func newInfoCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info BOARD [--json]",
		Short: "Show a board's identity, agent, boot and capabilities",
		Long: `info asks the board's agent for board.info: id, model, labels, agent and
protocol version, boot id and uptime, A/B slots and capabilities.

With --json it prints the board.info result as one JSON object, with the
field names of the wire protocol (see docs/protocol.md).`,
		Example: `  boardlink info ws://127.0.0.1:7207
  boardlink info serial:///dev/ttyACM0 --json | jq .boot_id`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			info, err := c.Info(ctx)
			if err != nil {
				return linkFailure(err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			printInfo(cmd.OutOrStdout(), info)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the board.info object as JSON")
	return cmd
}

func printInfo(w io.Writer, info proto.BoardInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("id", info.ID)
	row("model", info.Model)
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(info.Labels)) {
		labels = append(labels, k+"="+info.Labels[k])
	}
	row("labels", orNone(strings.Join(labels, " ")))
	row("hostname", orNone(info.Hostname))
	row("arch", info.Arch)
	row("agent", fmt.Sprintf("%s (protocol %d)", info.Agent, info.Protocol))
	row("boot id", info.BootID)
	row("uptime", (time.Duration(info.UptimeMs) * time.Millisecond).Round(time.Second).String())
	var slots []string
	for _, s := range info.Slots {
		state := ""
		if s.Booted {
			state += " booted"
		}
		if s.Active {
			state += " active"
		}
		slots = append(slots, fmt.Sprintf("%s %s%s", s.Name, orNone(s.Version), state))
	}
	row("slots", orNone(strings.Join(slots, ", ")))
	row("capabilities", strings.Join(info.Capabilities, ", "))
	row("key", orNone(info.Fingerprint))
	tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// exactArgs is cobra.ExactArgs reported as a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &usageError{fmt.Errorf("%s takes %d argument(s), got %d (see '%s --help')",
				cmd.Name(), n, len(args), cmd.CommandPath())}
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs reported as a usage error.
func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return &usageError{fmt.Errorf("%s takes at least %d arguments, got %d (see '%s --help')",
				cmd.Name(), n, len(args), cmd.CommandPath())}
		}
		return nil
	}
}
