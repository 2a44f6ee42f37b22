package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/discovery"
)

// lsOptions are the flags of ls (and of id resolution, which shares them).
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
port, which may hold a login shell).

Columns: ID, MODEL, VERSION (agent), SLOT, ADDRESS (what to give as BOARD;
a board id works too), AGE (since the board was last heard).

--json prints one JSON array of boards. --watch keeps running and prints a
line per change (added, updated: a new boot id or slot, removed); with
--json, one JSON object per line: {"op": "...", "board": {...}}.

Without --iface, mDNS uses every up, multicast-capable interface.`,
		Example: `  boardlink ls
  boardlink ls --iface usb0 --json | jq -r '.[].id'
  boardlink ls --watch --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.watch {
				return watchBoards(cmd.Context(), cmd.OutOrStdout(), g, o)
			}
			recs, err := findBoards(cmd.Context(), g, o, "")
			if err != nil {
				return err
			}
			if o.asJSON {
				if recs == nil {
					recs = []discovery.Record{}
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(recs)
			}
			printBoards(cmd.OutOrStdout(), recs)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.timeout, "timeout", 2*time.Second, "how long to listen for boards")
	f.BoolVarP(&o.watch, "watch", "w", false, "keep listing changes until interrupted")
	f.BoolVar(&o.asJSON, "json", false, "print JSON (an array; JSON lines with --watch)")
	f.StringArrayVar(&o.serialPorts, "serial-port", nil, "also listen on this serial port (repeatable; USB ports are found by themselves)")
	f.BoolVar(&o.noSerial, "no-serial", false, "do not listen on serial ports")
	return cmd
}

// findBoards browses mDNS and probes serial ports at once. With want set,
// it returns as soon as a board whose id is want has been seen.
func findBoards(ctx context.Context, g *globals, o lsOptions, want string) ([]discovery.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var (
		mu   sync.Mutex
		recs []discovery.Record
		errs []error
		wg   sync.WaitGroup
	)
	add := func(rs []discovery.Record, err error) {
		mu.Lock()
		defer mu.Unlock()
		recs = append(recs, rs...)
		if err != nil {
			errs = append(errs, err)
		}
		for _, r := range rs {
			if want != "" && r.ID == want {
				cancel()
			}
		}
	}
	wg.Go(func() {
		b := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: g.ifaces, Logger: g.logger()})
		if err := b.Start(ctx); err != nil {
			add(nil, err)
			return
		}
		defer b.Stop()
		for {
			select {
			case ev := <-b.Events():
				if ev.Op == discovery.Added && want != "" && ev.Record.ID == want {
					add([]discovery.Record{ev.Record}, nil)
					return
				}
			case <-ctx.Done():
				add(b.Boards(), nil)
				return
			}
		}
	})
	if !o.noSerial {
		wg.Go(func() {
			add(discovery.ScanSerial(ctx, discovery.SerialConfig{Ports: o.serialPorts, Logger: g.logger()}))
		})
	}
	wg.Wait()
	if len(recs) == 0 && len(errs) > 0 {
		return nil, errs[0]
	}
	return dedupe(recs), nil
}

// dedupe keeps one record per id, preferring the network (mDNS) one, and
// sorts them by id.
func dedupe(recs []discovery.Record) []discovery.Record {
	byID := map[string]discovery.Record{}
	for _, r := range recs {
		if old, ok := byID[r.ID]; !ok || old.Source == "serial" && r.Source == "mdns" {
			byID[r.ID] = r
		}
	}
	out := make([]discovery.Record, 0, len(byID))
	for _, r := range byID {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b discovery.Record) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func printBoards(w io.Writer, recs []discovery.Record) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMODEL\tVERSION\tSLOT\tADDRESS\tAGE")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Model, r.Version, orDash(r.Slot), r.Address,
			time.Since(r.Seen).Round(time.Second))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// watchBoards prints mDNS events until ctx ends; serial ports are
// rescanned every few seconds and their boards reported as they come and go.
func watchBoards(ctx context.Context, w io.Writer, g *globals, o lsOptions) error {
	b := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: g.ifaces, Logger: g.logger()})
	if err := b.Start(ctx); err != nil {
		return err
	}
	defer b.Stop()
	events := make(chan discovery.Event, 64)
	if !o.noSerial {
		go watchSerial(ctx, o, events)
	}
	enc := json.NewEncoder(w)
	for {
		var ev discovery.Event
		select {
		case ev = <-b.Events():
		case ev = <-events:
		case <-ctx.Done():
			return nil
		}
		if o.asJSON {
			if err := enc.Encode(ev); err != nil {
				return err
			}
			continue
		}
		r := ev.Record
		fmt.Fprintf(w, "%-8s %s  model=%s ver=%s slot=%s boot=%s  %s\n", ev.Op, r.ID, r.Model, r.Version, orDash(r.Slot), r.BootID, r.Address)
	}
}

// serialRescan is how often --watch listens to the serial ports again.
const serialRescan = 5 * time.Second

func watchSerial(ctx context.Context, o lsOptions, out chan<- discovery.Event) {
	seen := map[string]discovery.Record{}
	for {
		recs, _ := discovery.ScanSerial(ctx, discovery.SerialConfig{Ports: o.serialPorts})
		now := map[string]discovery.Record{}
		send := func(op discovery.Op, r discovery.Record) {
			select {
			case out <- discovery.Event{Op: op, Record: r}:
			case <-ctx.Done():
			}
		}
		for _, r := range recs {
			now[r.Address] = r
			old, ok := seen[r.Address]
			switch {
			case !ok:
				send(discovery.Added, r)
			case !old.SameAnnouncement(r):
				send(discovery.Updated, r)
			}
		}
		for addr, r := range seen {
			if _, ok := now[addr]; !ok {
				send(discovery.Removed, r)
			}
		}
		seen = now
		select {
		case <-ctx.Done():
			return
		case <-time.After(serialRescan):
		}
	}
}
