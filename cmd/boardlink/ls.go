package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
)

// lsOptions are the flags of ls.
type lsOptions struct {
	timeout     time.Duration
	watch       bool
	asJSON      bool
	serialPorts []string
	noSerial    bool
}

func newLsCmd(g *globals) *cobra.Command {
	var o lsOptions
	cmd := &cobra.Command{
		Use:   "ls [--timeout D] [--watch] [--json] [--iface IF]...",
		Short: "List the boards that announce themselves (mDNS and USB serial)",
		Long: `ls lists the boards whose agent announces itself: over mDNS (service
_boardlink._tcp) on the chosen interfaces, and on USB serial ports, where
the agent's beacon is heard by listening only (nothing is ever written to a
port, which may hold a login shell). A port another program holds (its
uucp lock file in /run/lock, or open in another process) is not opened:
ls says on stderr which ports it skipped and why. Opening a port raises
DTR and RTS, which resets Arduino-style boards: --no-serial avoids it.

Columns: ID, MODEL, VERSION (the image version of the slot the board
booted, "-" when it has none), SLOT, AGENT (the agent's version; 'boardlink
info' shows it too), ADDRESS (what to give as BOARD; a board id works too),
AGE (since the board was last heard). Below the table, on stderr, where it
looked (the interfaces mDNS ran on), and what it did not believe: records
that claim another board's id, ids several boards announce (marked
"conflict" in the table), serial ports skipped. Strings a board announced
are printed with control characters escaped (\x1b, \n); --json keeps them
as they are.

--json prints one JSON array of boards ("sver" is the slot's image version,
"ver" the agent's). --watch keeps running and prints a line per change
(added, updated: a new boot id or slot, removed, conflict, refused); with
--json, one JSON object per line: {"op": "...", "board": {...}}.

Without --iface, mDNS uses every up, multicast-capable interface but
loopback; when none is usable, ls says so on stderr (boards on this host
answer on lo: --iface lo).`,
		Example: `  boardlink ls
  boardlink ls --iface usb0 --json | jq -r '.[].id'
  boardlink ls --watch --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := g.resolver()
			r.Timeout, r.SerialPorts, r.NoSerial = o.timeout, o.serialPorts, o.noSerial
			if o.watch {
				return watchBoards(cmd.Context(), cmd.OutOrStdout(), r, o.asJSON)
			}
			found, err := r.Find(cmd.Context())
			if err != nil {
				return err
			}
			// For completion: `boardlink exec <TAB>` offers what ls saw.
			ids := make([]string, 0, len(found.Boards))
			for _, b := range found.Boards {
				ids = append(ids, b.ID)
			}
			rememberIDs(ids...)
			if w := found.Warning(); w != "" {
				g.warn(w)
			}
			for _, d := range found.Doubts() {
				g.warn(escape(d))
			}
			if o.asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(found.Boards)
			}
			printBoards(cmd.OutOrStdout(), found.Boards)
			boards := "boards"
			if len(found.Boards) == 1 {
				boards = "board"
			}
			fmt.Fprintf(g.stderr, "%d %s answered within %s (%s)\n", len(found.Boards), boards, found.Timeout, found.Where())
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.timeout, "timeout", dispatcher.DefaultResolveTimeout, "how long to listen for boards")
	f.BoolVarP(&o.watch, "watch", "w", false, "keep listing changes until interrupted")
	f.BoolVar(&o.asJSON, "json", false, "print JSON (an array; JSON lines with --watch)")
	f.StringArrayVar(&o.serialPorts, "serial-port", nil, "also listen on this serial port (repeatable; USB ports are found by themselves)")
	f.BoolVar(&o.noSerial, "no-serial", false, "do not listen on serial ports")
	return cmd
}

// printBoards prints the table; every string a board announced is
// escaped (escape), and a board whose id several boards announce says so.
func printBoards(w io.Writer, recs []discovery.Record) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMODEL\tVERSION\tSLOT\tAGENT\tADDRESS\tAGE")
	for _, r := range recs {
		addr := escape(r.Address)
		if len(r.Conflict) > 1 {
			addr += fmt.Sprintf(" (conflict: %d boards)", len(r.Conflict))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", escape(r.ID), escape(r.Model), escape(orDash(r.SlotVersion)),
			escape(orDash(r.Slot)), escape(r.Version), addr, time.Since(r.Seen).Round(time.Second))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// watchBoards prints each change until ctx ends.
func watchBoards(ctx context.Context, w io.Writer, r *dispatcher.Resolver, asJSON bool) error {
	enc := json.NewEncoder(w)
	return r.Watch(ctx, func(ev discovery.Event) error {
		if asJSON {
			return enc.Encode(ev)
		}
		b := ev.Record
		var err error
		switch ev.Op {
		case discovery.Refused:
			_, err = fmt.Fprintf(w, "%-8s %s\n", ev.Op, escape(ev.Reason))
		case discovery.Conflict:
			_, err = fmt.Fprintf(w, "%-8s %s  announced by %d boards: %s\n", ev.Op, escape(b.ID), len(b.Conflict),
				escape(strings.Join(b.Conflict, ", ")))
		default:
			_, err = fmt.Fprintf(w, "%-8s %s  model=%s sver=%s slot=%s agent=%s boot=%s  %s\n", ev.Op, escape(b.ID), escape(b.Model),
				escape(orDash(b.SlotVersion)), escape(orDash(b.Slot)), escape(b.Version), escape(b.BootID), escape(b.Address))
		}
		return err
	})
}
