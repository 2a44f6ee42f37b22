package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

func newOTACmd(g *globals) *cobra.Command {
	var (
		force   bool
		url     string
		status  bool
		abort   bool
		asJSON  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "ota BOARD IMAGE [--force] [--url URL] [--timeout D] [--json] | ota BOARD --status [--json] | ota BOARD --abort [--json]",
		Short: "Update a board to a signed image (A/B, trial boot, commit or roll back)",
		Long: `ota updates one board to IMAGE (built with 'boardlink image build') and
returns when the board has committed it.

The board checks the image's signature against the keys it trusts, that it
fits its model and its inactive slot, and that it is newer than what runs
(--force allows a downgrade or a reinstall). It then writes its inactive
slot: chunks its active slot already holds are copied there on the board,
and only the others cross the link; every chunk and the whole payload are
verified. Then a one-shot trial boot of the new slot, a reboot, the
board's health check, and a commit. If the health check fails, or the
trial boot does not come up, the board rolls back to the old slot: that is
a failure, reported with its phase and reason, never a success. The
command follows the update through every reboot, reconnecting as the board
comes back.

With --url, the board fetches the chunks it lacks from the same image file
served over http(s) (Range requests; a server that ignores Range is read
from the start), so nothing but the manifest crosses the link: for a board
on a slow serial line and a fast network. If the board cannot fetch them
(the server fails, serves a shorter or another file), the update halts on
the board with the reason, and this command stops with it at once.

The update runs on the board, not in this command: if the link drops, run
the same command again and it resumes (a prepare continues where it
stopped, a halted update too).

--status prints the board's slots (version, booted, active, trial) and its
current or last update, as the board tells it, and how to resume or abort
an update that has not been activated. --abort ends such an update (the
slot it was writing keeps its bytes but is not bootable), so that another
image can be installed.

With --server (or $BOARDLINK_SERVER) the image is sent to the lab
service, which updates the board (it reads updating meanwhile) under the
lease of $BOARDLINK_LEASE if set; a board another lease holds is refused
(exit 1). --status and --abort talk to the board directly.

Exit status: 0 committed (or aborted, with --abort); 1 rolled back, failed
or halted on the board (signature, checksum, model, version, size, a URL
that fails), named in the message, or nothing to abort; 124 not done
within --timeout; 255 the link failed; 2 a usage error.`,
		Example: `  boardlink ota board1 build/rootfs-2.1.0.img
  boardlink ota ws://10.77.0.2:7207 rootfs-2.0.9.img --force --json
  boardlink ota serial:///dev/ttyUSB0 rootfs-2.1.0.img --url http://10.77.0.1:8000/rootfs-2.1.0.img
  boardlink ota board1 --status
  boardlink ota board1 --abort`,
		Args: func(cmd *cobra.Command, args []string) error {
			if status && abort {
				return &usageError{errors.New("--status and --abort: choose one")}
			}
			want := 2
			if status || abort {
				want = 1
			}
			return exactArgs(want)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if timeout <= 0 {
				return &usageError{errors.New("--timeout must be positive")}
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var im *image.Image
			if !status && !abort {
				var err error
				var closeImage func() error
				if im, closeImage, err = openImage(args[1]); err != nil {
					return &exitError{code: 1, err: err}
				}
				defer closeImage()
			}
			if g.serverURL() != "" {
				if status || abort {
					return &usageError{errors.New("--status and --abort do not go through the lab service (--server, $BOARDLINK_SERVER)")}
				}
				return g.otaViaServer(ctx, cmd, args[0], args[1], service.OTARequest{Force: force, URL: url,
					TimeoutMs: timeout.Milliseconds()}, asJSON)
			}
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			out := cmd.OutOrStdout()
			switch {
			case status:
				st, err := c.OTAStatus(ctx)
				if err != nil {
					return otaFailure(err, args[0])
				}
				if asJSON {
					return writeJSON(out, st)
				}
				printOTAStatus(out, st, args[0])
				return nil
			case abort:
				st, err := otaAbort(ctx, c)
				if err != nil {
					return otaFailure(err, args[0])
				}
				if asJSON {
					return writeJSON(out, st)
				}
				u := st.Update
				fmt.Fprintf(out, "%s: update %s (%s -> %s into slot %s) aborted; slot %s is not bootable until an update writes it\n",
					c.Hello().BoardID, u.ID, orNone(u.FromVersion), u.Version, u.Slot, u.Slot)
				return nil
			}
			show := newOTADisplay(cmd.ErrOrStderr(), filepath.Base(args[1]))
			rep, err := c.Update(ctx, im, dispatcher.OTAOptions{Force: force, URL: url, Progress: show.step})
			show.done(err == nil)
			if proto.IsReason(err, proto.ReasonBusy) {
				// Another update may be in the way: name it, and how to end it.
				if st, serr := c.OTAStatus(ctx); serr == nil && st.Update != nil && st.Update.Phase.Abortable() {
					err = fmt.Errorf("%w\nto abort update %s (%s): boardlink ota %s --abort", err, st.Update.ID, st.Update.Version, args[0])
				}
			}
			if perr := printOTA(out, asJSON, c.Hello().BoardID, rep, err); perr != nil {
				return perr
			}
			return otaFailure(err, args[0])
		},
	}
	f := cmd.Flags()
	f.BoolVar(&force, "force", false, "allow a downgrade or a reinstall of the running version")
	f.StringVar(&url, "url", "", "the same IMAGE served over http(s): the board fetches the chunks it lacks from there, not over the link")
	f.BoolVar(&status, "status", false, "print the board's slots and its current or last update")
	f.BoolVar(&abort, "abort", false, "end the board's update that has not been activated (prepare, prepared or halted)")
	f.BoolVar(&asJSON, "json", false, "print the result (or the status) as JSON")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	return cmd
}

// printOTA prints how an update of board went: the JSON report, or a
// line once it committed.
func printOTA(out io.Writer, asJSON bool, board string, rep dispatcher.OTAReport, err error) error {
	if asJSON {
		return writeJSON(out, otaJSON{OTAReport: rep, Error: errString(err)})
	}
	if err == nil {
		u := rep.Update
		fmt.Fprintf(out, "%s committed %s in slot %s (was %s): %d of %d chunks sent, %d bytes on the link, %.1fs\n",
			board, u.Version, u.Slot, orNone(u.FromVersion), len(rep.Plan.Need), rep.Plan.Chunks,
			rep.BytesSent, float64(rep.TookMs)/1000)
	}
	return nil
}

// otaViaServer updates board to the image file img through the lab
// service, under the lease of $BOARDLINK_LEASE if set, showing its steps
// as a direct update does.
func (g *globals) otaViaServer(ctx context.Context, cmd *cobra.Command, board, img string, req service.OTARequest, asJSON bool) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	show := newOTADisplay(cmd.ErrOrStderr(), filepath.Base(img))
	rep, err := c.OTA(ctx, board, os.Getenv("BOARDLINK_LEASE"), img, req, show.step)
	show.done(err == nil)
	if perr := printOTA(cmd.OutOrStdout(), asJSON, board, rep, err); perr != nil {
		return perr
	}
	var (
		oe *dispatcher.OTAError
		ae *service.APIError
	)
	switch {
	case err == nil, errors.As(err, &oe), ctx.Err() != nil:
		return otaFailure(err, board)
	case errors.As(err, &ae) && ae.Status == http.StatusBadGateway:
		// The board refused: its reason, as a direct update maps it.
		return otaFailure(proto.Errorf(proto.Reason(ae.Reason), "%s", ae.Message), board)
	}
	return serviceFailure(err)
}

// errNothingToAbort: the board has no update that ota.abort can end.
var errNothingToAbort = errors.New("nothing to abort")

// otaAbort aborts the board's update under way, named by its status.
func otaAbort(ctx context.Context, c *dispatcher.Client) (proto.OTAStatus, error) {
	st, err := c.OTAStatus(ctx)
	if err != nil {
		return st, err
	}
	switch u := st.Update; {
	case u == nil:
		return st, fmt.Errorf("%w: the board has never had an update", errNothingToAbort)
	case u.Phase == proto.PhaseDone:
		return st, fmt.Errorf("%w: the last update, %s (%s), ended %s", errNothingToAbort, u.ID, u.Version, u.Result)
	case !u.Phase.Abortable():
		return st, fmt.Errorf("%w: update %s is in phase %s, past its activation: it ends by itself (commit or roll back)",
			errNothingToAbort, u.ID, u.Phase)
	}
	return c.OTAAbort(ctx, st.Update.ID)
}

type otaJSON struct {
	dispatcher.OTAReport
	Error string `json:"error,omitempty"`
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// openImage opens an image file and checks its format (the board checks
// the signature).
func openImage(path string) (*image.Image, func() error, error) {
	im, err := image.OpenFile(path)
	if err != nil {
		return nil, nil, err
	}
	return im, im.Close, nil
}

// otaFailure maps an update's error to an exit status; a halted update is
// named with the commands that resume or abort it.
func otaFailure(err error, board string) error {
	var oe *dispatcher.OTAError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &oe):
		if oe.Halted {
			err = fmt.Errorf("%w\nto resume it: run the same command again; to abort it: boardlink ota %s --abort", err, board)
		}
		return &exitError{code: 1, err: err}
	case errors.Is(err, errNothingToAbort):
		return &exitError{code: 1, err: err}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, dispatcher.ErrNotBack):
		return &exitError{code: exitTimeout, err: err}
	}
	switch proto.ReasonOf(err) {
	case proto.ReasonBusy, proto.ReasonSignatureInvalid, proto.ReasonChecksumMismatch, proto.ReasonIncompatible, proto.ReasonNotFound:
		return &exitError{code: 1, err: err}
	case proto.ReasonInvalidParams:
		return &usageError{err}
	}
	return linkFailure(err)
}

func printOTAStatus(w io.Writer, st proto.OTAStatus, board string) {
	fmt.Fprintln(w, "SLOT  VERSION          BOOTED  ACTIVE  TRIAL")
	for _, s := range st.Slots {
		v := orDash(s.Version)
		if s.Writing {
			v = "(being written)"
		}
		fmt.Fprintf(w, "%-5s %-16s %-7s %-7s %s\n", s.Name, v, yes(s.Booted), yes(s.Active), yes(s.Trial))
	}
	u := st.Update
	if u == nil {
		fmt.Fprintln(w, "\nno update yet")
		return
	}
	fmt.Fprintf(w, "\nupdate %s: %s -> %s into slot %s, phase %s", u.ID, orNone(u.FromVersion), u.Version, u.Slot, u.Phase)
	if u.Result != "" {
		fmt.Fprintf(w, ", %s", strings.ReplaceAll(string(u.Result), "_", " "))
	}
	if u.FailedPhase != "" {
		fmt.Fprintf(w, " (failed in %s)", u.FailedPhase)
	}
	fmt.Fprintf(w, "\n  chunks %d/%d (%d copied on the board), %d bytes over the link, %.1fs\n",
		u.ChunksDone, u.Chunks, u.ChunksCopied, u.BytesLink, float64(u.ElapsedMs)/1000)
	if u.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", u.Reason)
	}
	if u.Phase.Abortable() {
		// Not activated: it stays until resumed or aborted, and another
		// image is refused until then.
		fmt.Fprintf(w, "  to resume it: boardlink ota %s IMAGE (the image of %s)\n", board, u.Version)
		fmt.Fprintf(w, "  to abort it:  boardlink ota %s --abort\n", board)
	}
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "-"
}

// otaDisplay shows an update's progress: a bar while the board hashes
// and copies from its active slot and while chunks go out, a line per
// phase, and after the prepare a spinner that says what the update waits
// for (the trial boot, its health check, a reboot) and for how long.
type otaDisplay struct {
	w       io.Writer
	name    string
	bar     *progressBar
	barName string
	phase   string
	term    bool

	spin     *spinner // the wait under way
	spinWhat string
	reboot   waitShow // the attempts to reach the board while it reboots
}

func newOTADisplay(w io.Writer, name string) *otaDisplay {
	return &otaDisplay{w: w, name: name, term: isTerminal(w)}
}

func (d *otaDisplay) step(p dispatcher.OTAProgress) {
	switch p.Phase {
	case "send":
		d.setBar("send "+d.name, p.Sent, p.ToSend)
		return
	case service.OTAUpload:
		d.setBar("upload "+d.name+" to the lab service", p.Sent, p.ToSend)
		return
	case proto.ProgressHash:
		d.setBar("board hashes its active slot", p.Bytes, p.Total)
		return
	case proto.ProgressCopy:
		d.setBar("board copies from its active slot", p.Bytes, p.Total)
		return
	}
	if !d.term {
		return
	}
	if p.Phase == dispatcher.OTAReboot {
		d.endBar()
		d.phase = p.Phase
		d.wait(otaRebootWhat(p.Status), func() string { return d.reboot.status(nil) })
		if p.Wait != nil {
			d.reboot.set(*p.Wait)
		}
		return
	}
	if p.Phase == d.phase {
		return
	}
	d.endBar()
	d.phase = p.Phase
	if what := otaWaitWhat(p.Status); what != "" {
		d.wait(what, nil)
		return
	}
	d.endWait()
	line := "phase " + p.Phase
	if u := p.Status.Update; u != nil && u.Phase == proto.PhasePrepare {
		line += fmt.Sprintf(": %d/%d chunks", u.ChunksDone, u.Chunks)
	}
	fmt.Fprintln(d.w, line)
}

// otaWaitWhat says what an update activated and not done waits for; ""
// in any other phase.
func otaWaitWhat(st *proto.OTAStatus) string {
	if st == nil || st.Update == nil {
		return ""
	}
	u := st.Update
	switch u.Phase {
	case proto.PhaseActivate:
		return fmt.Sprintf("setting up the trial boot of slot %s", u.Slot)
	case proto.PhaseTrial:
		return fmt.Sprintf("trial boot of slot %s: health check", u.Slot)
	case proto.PhaseCommit:
		return fmt.Sprintf("health check passed: committing slot %s", u.Slot)
	case proto.PhaseRollback:
		return fmt.Sprintf("health check failed (%s): rolling back from slot %s", clip(u.Reason, 60), u.Slot)
	}
	return ""
}

// otaRebootWhat says why the board is out of reach, from the last status
// seen before.
func otaRebootWhat(st *proto.OTAStatus) string {
	if st != nil && st.Update != nil {
		switch u := st.Update; u.Phase {
		case proto.PhaseActivate:
			return fmt.Sprintf("rebooting into slot %s for its trial", u.Slot)
		case proto.PhaseTrial, proto.PhaseRollback:
			return fmt.Sprintf("rebooting back out of slot %s", u.Slot)
		}
	}
	return "waiting for the board to answer again"
}

// wait shows what the update waits for, with the time it has waited and
// status, ending the wait shown before; the same wait goes on.
func (d *otaDisplay) wait(what string, status func() string) {
	if what == d.spinWhat {
		return
	}
	d.endWait()
	d.spin, d.spinWhat = startSpinner(d.w, what, status), what
}

// endWait ends the wait shown, leaving a line that says how long it took.
func (d *otaDisplay) endWait() {
	if d.spin == nil {
		return
	}
	d.spin.end()
	fmt.Fprintf(d.w, "%s (%s)\n", d.spinWhat, seconds(time.Since(d.spin.start)))
	d.spin, d.spinWhat = nil, ""
	d.reboot.set(dispatcher.WaitProgress{})
}

// setBar moves the bar named name, ending any other first.
func (d *otaDisplay) setBar(name string, done, total int64) {
	if d.barName != name {
		d.endBar()
		d.bar, d.barName = newProgressBar(d.w, name, total), name
	}
	d.bar.set(done, total)
}

func (d *otaDisplay) endBar() {
	d.bar.done(true)
	d.bar, d.barName = nil, ""
}

func (d *otaDisplay) done(ok bool) {
	d.endWait()
	d.bar.done(ok)
}
