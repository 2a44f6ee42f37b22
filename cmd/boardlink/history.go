package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher/store"
)

func newHistoryCmd() *cobra.Command {
	var (
		asJSON bool
		limit  int
		dbPath string
	)
	cmd := &cobra.Command{
		Use:   "history [ID] [--json] [--limit N] [--db PATH]",
		Short: "List past and interrupted rollouts, or show one with its boards",
		Long: `history lists the rollouts recorded in the dispatcher's database, newest
first. Every rollout is recorded as it runs: each board's phase, result and
update id are written as they change, which is what lets an interrupted
rollout resume ('boardlink rollout --resume ID').

Columns: ID, CREATED (local time), VERSION (the image's), BOARDS (in the
plan), COMMITTED, FAILED (failed, rolled back, unreachable, or any other
failure), SKIPPED (skipped, or the image does not fit the board), STATE:
running (under way, or interrupted: resume it), done, or stopped (too many
failures, or stopped by hand). Boards without a result yet count only
under BOARDS.

With ID (a rollout id, or a unique prefix of one), history shows that
rollout: its image, selector and limits, a summary by result, and one row
per board: address, phase (plan, prepare, execute, done), result, versions
from and to, bytes sent, attempts, time taken and the reason of a failure.

--json prints an array of rollouts, or for one ID an object
{"rollout": {...}, "boards": [...]}; the plan the rollout used is in
rollout.plan.

The database is --db, else $BOARDLINK_DB, else
$XDG_STATE_HOME/boardlink/boardlink.db (~/.local/state/boardlink/boardlink.db).

Exit status: 0 listed (an empty history too); 1 no such rollout, or the
database cannot be read (written by a newer boardlink, say); 2 a usage
error, or an ID prefix that matches more than one rollout.`,
		Example: `  boardlink history
  boardlink history --limit 5 --json | jq -r '.[] | select(.state == "running") | .id'
  boardlink history r-20261122-0301
  boardlink history r-20261122-0301-ab12 --json | jq '.boards[] | select(.result != "committed")'
  boardlink history --db /srv/lab/boardlink.db`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return &usageError{fmt.Errorf("history takes at most one rollout ID, got %d (see '%s --help')",
					len(args), cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return &usageError{fmt.Errorf("--limit must be 0 (all) or more, got %d", limit)}
			}
			if dbPath == "" {
				dbPath = store.DefaultPath()
			}
			out := cmd.OutOrStdout()
			// Reading the history creates nothing: no database is no history.
			if _, err := os.Stat(dbPath); !store.IsPostgres(dbPath) && errors.Is(err, fs.ErrNotExist) {
				if len(args) == 1 {
					return &exitError{code: 1, err: fmt.Errorf("no rollout %q: no records at %s", args[0], dbPath)}
				}
				if asJSON {
					return writeJSON(out, []store.Rollout{})
				}
				historyEmpty(out, dbPath)
				return nil
			}
			st, err := store.Open(cmd.Context(), dbPath)
			if err != nil {
				return &exitError{code: 1, err: historyErr(err)}
			}
			defer st.Close()

			if len(args) == 1 {
				r, boards, err := st.Rollout(cmd.Context(), args[0])
				switch {
				case errors.Is(err, store.ErrAmbiguous):
					return &usageError{historyErr(err)}
				case err != nil:
					return &exitError{code: 1, err: historyErr(err)}
				}
				if asJSON {
					if boards == nil {
						boards = []store.BoardResult{}
					}
					return writeJSON(out, struct {
						Rollout store.Rollout       `json:"rollout"`
						Boards  []store.BoardResult `json:"boards"`
					}{r, boards})
				}
				historyShow(out, r, boards)
				return nil
			}

			ask := limit
			if ask > 0 {
				ask++ // one more, to know whether there are more
			}
			rs, err := st.Rollouts(cmd.Context(), ask)
			if err != nil {
				return &exitError{code: 1, err: historyErr(err)}
			}
			more := limit > 0 && len(rs) > limit
			if more {
				rs = rs[:limit]
			}
			if asJSON {
				if rs == nil {
					rs = []store.Rollout{}
				}
				return writeJSON(out, rs)
			}
			if len(rs) == 0 {
				historyEmpty(out, dbPath)
				return nil
			}
			historyList(out, rs)
			if more {
				fmt.Fprintf(out, "(the newest %d; --limit 0 lists them all)\n", limit)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON: an array of rollouts, or one rollout and its boards")
	f.IntVarP(&limit, "limit", "n", 20, "list at most N rollouts, newest first (0: all)")
	f.StringVar(&dbPath, "db", "", "the records database (default: $BOARDLINK_DB or ~/.local/state/boardlink/boardlink.db)")
	return cmd
}

// historyErr drops the store's "store: " prefix, which says nothing to a
// user.
func historyErr(err error) error {
	msg := err.Error()
	if s, ok := strings.CutPrefix(msg, "store: "); ok {
		return errors.New(s)
	}
	return err
}

func historyEmpty(w io.Writer, dbPath string) {
	fmt.Fprintf(w, "no rollouts yet (in %s); start one with 'boardlink rollout IMAGE'\n", dbPath)
}

// historyCounts splits a rollout's summary into the list's columns.
func historyCounts(sum map[string]int) (committed, failed, skipped int) {
	for k, n := range sum {
		switch k {
		case store.SummaryPending, store.SummaryRunning:
		case store.ResultCommitted:
			committed += n
		case store.ResultSkipped, store.ResultIncompatible:
			skipped += n
		default:
			failed += n
		}
	}
	return committed, failed, skipped
}

func historyTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func historyList(w io.Writer, rs []store.Rollout) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tVERSION\tBOARDS\tCOMMITTED\tFAILED\tSKIPPED\tSTATE")
	for _, r := range rs {
		c, f, s := historyCounts(r.Summary)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", r.ID, historyTime(r.Created), orDash(r.Version),
			r.Boards, c, f, s, r.State)
	}
	tw.Flush()
}

func historyShow(w io.Writer, r store.Rollout, boards []store.BoardResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("rollout", r.ID)
	row("state", r.State)
	row("image", orNone(r.Image))
	row("image sha256", orNone(r.ImageSHA256))
	row("version", orNone(r.Version))
	row("selector", orNone(r.Selector))
	limits := fmt.Sprintf("%d at a time", r.Concurrency)
	if r.Concurrency <= 0 {
		limits = "no concurrency limit"
	}
	if r.MaxFailures > 0 {
		limits += fmt.Sprintf(", stop after %d failure(s)", r.MaxFailures)
	}
	row("limits", limits)
	row("created", r.Created.Local().Format("2006-01-02 15:04:05"))
	row("updated", r.Updated.Local().Format("2006-01-02 15:04:05"))
	var sum []string
	for _, k := range store.SummaryKeys(r.Summary) {
		sum = append(sum, fmt.Sprintf("%d %s", r.Summary[k], strings.ReplaceAll(k, "_", " ")))
	}
	row("boards", fmt.Sprintf("%d", r.Boards)+historyJoin(": ", sum))
	tw.Flush()
	if len(boards) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BOARD\tADDRESS\tPHASE\tRESULT\tFROM\tTO\tSENT\tATTEMPTS\tTOOK\tREASON")
	for _, b := range boards {
		result := b.Result
		if result == "" {
			result = "(" + historySummaryKey(b) + ")"
		}
		took := "-"
		if !b.Started.IsZero() && !b.Ended.IsZero() {
			took = b.Ended.Sub(b.Started).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", b.BoardID, orDash(b.Address), b.Phase, result,
			orDash(b.FromVersion), orDash(b.ToVersion), historyBytes(b.BytesSent), b.Attempts, took, orDash(b.Reason))
	}
	tw.Flush()
}

func historySummaryKey(b store.BoardResult) string {
	if b.Phase == store.PhasePlan {
		return store.SummaryPending
	}
	return store.SummaryRunning
}

func historyJoin(prefix string, parts []string) string {
	if len(parts) == 0 {
		return ""
	}
	return prefix + strings.Join(parts, ", ")
}

// historyBytes is n in B, KiB, MiB or GiB.
func historyBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 2 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMG"[i])
}
