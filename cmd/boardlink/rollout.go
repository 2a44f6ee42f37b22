package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/rolloutjob"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/proto"
)

// rolloutOptions are rollout's flags.
type rolloutOptions struct {
	selectors    []string
	concurrency  int
	maxFailures  int
	discover     time.Duration
	boardTimeout time.Duration
	savePlan     string
	planFile     string
	resume       string
	logDir       string
	inventory    string
	db           string
	force        bool
	asJSON       bool
	gate         string
	gateTimeout  time.Duration
	waveSize     int
	partWait     time.Duration
}

func newRolloutCmd(g *globals) *cobra.Command {
	var o rolloutOptions
	cmd := &cobra.Command{
		Use:   "rollout IMAGE [--select k=v]... [-C N] [--max-failures N] [--gate 'exec: CMD'] [--wave N] [--timeout D] [--save-plan F | --plan F] [--resume ID] [--log-dir D] [--json]",
		Short: "Update many boards to a signed image, in stages, a few at a time",
		Long: `rollout updates every selected board to IMAGE in three stages, each run
over all the boards with at most -C at once before the next begins:

  plan     is the board reachable, does the image fit its model, what does
           it run, how many bytes would it need (only chunks its active
           slot lacks cross the link)
  prepare  write the inactive slot and verify it
  execute  activate, reboot into the trial, wait for the new boot id, let
           the board run its health check, commit (or roll back)

Boards come from discovery (mDNS on --iface, and USB serial, listening for
--timeout, as 'boardlink ls') and from an --inventory file (a JSON array of
{"id", "address", "model", "labels"}), filtered by --select: model=M
selects on the model, any other KEY=VALUE on a label; several must all
match.

--gate 'exec: COMMAND' adds a gate: the boards are taken in waves (--wave
boards each, -C by default). Each board of a wave boots its trial, passes
its own health check and then holds it, uncommitted; COMMAND runs on it
there (with /bin/sh -c, BOARDLINK_BOARD and BOARDLINK_VERSION set, bounded
by --gate-timeout). Only when the gate passed (exit 0) on every board of
the wave are their trials committed; otherwise every trial of the wave
rolls back (the board where it failed, or that went silent, is gate_failed
or unreachable with the reason, the others rolled_back) and the boards of
later waves are skipped. A held trial whose verdict never comes rolls back
by itself. An agent older than protocol 5 cannot hold a trial: it commits
first and its gate only decides whether the rollout goes on.

Transient errors (a link that drops, a board that does not answer, a
timeout after --board-timeout) are retried with backoff, three times in
all; permanent ones (a bad signature or checksum, an image that does not
fit) are not. A rollback is a failure. Once more than --max-failures
boards have failed, no new board starts and the rest are reported as
skipped. Each chunk of the image is read and hashed once and served to
every board from memory.

--save-plan F stops after the plan stage and writes the plan to F; --plan F
runs such a plan later, without planning again. Every rollout and board
result is kept in a SQLite database (--db, default
$XDG_STATE_HOME/boardlink/boardlink.db; see 'boardlink history'): a
rollout cut short (the dispatcher killed, Ctrl-C) goes on with --resume
ID, leaving committed boards alone and resuming boards mid-update, with
the gate, waves and limits it began with.

On a terminal a bar per active board and an overall bar show progress;
each board's log goes to --log-dir (one file per board) and the logs of
boards that failed are shown at the end of each stage. With --json, events
are printed as JSON lines and the report last.

With --server (or $BOARDLINK_SERVER) the lab service runs the rollout as
a job of its own: it selects among its boards (leaving out those offline,
in maintenance or in quarantine; a board a lease holds is refused),
records the rollout and resumes it after a restart; this command follows
it and prints the report. Ctrl-C stops following, not the rollout: --resume ID
follows it again; 'boardlink rollout stop ID' stops it. The boards other
services sharing its database drive are a part each, started on their
service, or waiting for it to come back for --part-wait at most (then
given up: 'boardlink rollout retry ID SERVICE' tries again). --plan, --save-plan, --inventory, --db and --log-dir do
not go through the service.

Exit status: 0 when every selected board committed (or already ran the
version); 1 when any failed, rolled back or was skipped; 2 a usage error.`,
		Example: `  boardlink rollout rootfs-2.1.0.img --select model=imx8 -C 16 --max-failures 3
  boardlink rollout rootfs-2.1.0.img --inventory lab.json --save-plan plan.json
  boardlink rollout rootfs-2.1.0.img --plan plan.json --log-dir logs/
  boardlink rollout rootfs-2.1.0.img --select model=imx8 -C 16 --gate 'exec: /usr/bin/selftest --quick'
  boardlink rollout --resume r-20261122-0301-ab12`,
		Args: func(cmd *cobra.Command, args []string) error {
			if o.resume != "" {
				return exactArgs(0)(cmd, args)
			}
			return exactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.savePlan != "" && o.planFile != "" {
				return &usageError{errors.New("--save-plan and --plan do not go together")}
			}
			if o.concurrency < 1 {
				return &usageError{errors.New("-C must be at least 1")}
			}
			if o.waveSize < 0 {
				return &usageError{errors.New("--wave must be at least 1")}
			}
			if g.serverURL() != "" {
				return rolloutViaServer(cmd.Context(), g, o, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			return runRollout(cmd.Context(), g, o, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.selectors, "select", nil, "select boards: model=M, or a label KEY=VALUE (repeatable; all must match)")
	f.IntVarP(&o.concurrency, "concurrency", "C", 8, "boards worked on at once in each stage")
	f.IntVar(&o.maxFailures, "max-failures", 0, "stop starting boards once more than this many failed (-1: never stop)")
	f.DurationVar(&o.discover, "timeout", 3*time.Second, "how long to listen for boards (as ls)")
	f.DurationVar(&o.boardTimeout, "board-timeout", 15*time.Minute, "bound on one attempt at one stage of one board")
	f.StringVar(&o.savePlan, "save-plan", "", "stop after planning and write the plan to this file")
	f.StringVar(&o.planFile, "plan", "", "run this saved plan, without planning again")
	f.StringVar(&o.resume, "resume", "", "go on with this interrupted rollout (see 'boardlink history')")
	f.StringVar(&o.logDir, "log-dir", "", "write each board's log to a file in this directory")
	f.StringVar(&o.inventory, "inventory", "", "JSON file listing boards (id, address, model, labels) besides those discovered")
	f.StringVar(&o.db, "db", "", "the records database (default $BOARDLINK_DB or $XDG_STATE_HOME/boardlink/boardlink.db)")
	f.BoolVar(&o.force, "force", false, "allow a downgrade or reinstall")
	f.BoolVar(&o.asJSON, "json", false, "print events as JSON lines and the report as JSON")
	f.StringVar(&o.gate, "gate", "", "'exec: COMMAND': run on each board of a wave on its held trial; the wave commits, and the next starts, only if it passes on all")
	f.DurationVar(&o.gateTimeout, "gate-timeout", dispatcher.DefaultGateTimeout, "bound on the gate command on one board")
	f.IntVar(&o.waveSize, "wave", 0, "boards per wave (default: -C with --gate, else all in one wave)")
	f.DurationVar(&o.partWait, "part-wait", service.DefaultPartWait, "with --server: how long the boards of another service wait for it to come back")
	cmd.AddCommand(newRolloutStopCmd(g), newRolloutRetryCmd(g))
	return cmd
}

func newRolloutStopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID",
		Short: "Stop a rollout the lab service runs",
		Long: `stop stops a rollout of the lab service (--server or BOARDLINK_SERVER), and
its parts on the other services sharing its database, each board at its
safe point: no board not yet started is started; a board writing its
inactive slot stops and its update is aborted; a board already switching
to the new slot (activated, rebooting, in its trial) goes on to its end,
committed or rolled back: a stop rolls nothing back. The boards left are
skipped, naming who stopped the rollout, and it ends stopped. A service
away when it is stopped stops its part as it comes back. It answers at
once; 'boardlink rollout --resume ID' follows the rollout to its end.

Exit status: 0 when the rollout is stopped (or was already); 1 when it was
over already.`,
		Example: `  boardlink --server http://lab:7300 rollout stop r-20261202-1830-ab12`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return rolloutStop(cmd.Context(), g, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
}

func newRolloutRetryCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "retry ID SERVICE",
		Short: "Try again a rollout's part that was given up on another service",
		Long: `retry tries again the part of a rollout of the lab service (--server or
BOARDLINK_SERVER) for the boards SERVICE drives, given up because SERVICE
refused it too often or stayed away longer than the rollout's
--part-wait: it waits for SERVICE afresh and starts there once SERVICE is
back. Only a part given up is tried again.`,
		Example: `  boardlink --server http://lab:7300 rollout retry r-20261202-1830-ab12 lab-b`,
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return rolloutRetry(cmd.Context(), g, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
}

// rolloutStop stops rollout args[0] and says where it stands.
func rolloutStop(ctx context.Context, g *globals, args []string, stdout, _ io.Writer) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	st, err := c.StopRollout(ctx, args[0])
	if err != nil {
		return serviceFailure(err)
	}
	printRolloutState(stdout, st)
	return nil
}

// rolloutRetry tries again rollout args[0]'s part on service args[1].
func rolloutRetry(ctx context.Context, g *globals, args []string, stdout, _ io.Writer) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	st, err := c.RetryPart(ctx, args[0], args[1])
	if err != nil {
		return serviceFailure(err)
	}
	printRolloutState(stdout, st)
	return nil
}

// printRolloutState says what state rollout st is in, who stopped it, and
// where its parts stand.
func printRolloutState(w io.Writer, st service.RolloutStatus) {
	line := fmt.Sprintf("rollout %s: %s", st.ID, st.State)
	switch {
	case st.Stop != "" && st.State == store.StateRunning:
		line += "; " + st.Stop + ": the boards under way stop at their safe points"
	case st.Stop != "":
		line += "; " + st.Stop
	}
	fmt.Fprintln(w, line)
	for _, p := range st.Parts {
		fmt.Fprintln(w, "  "+partLine(p))
	}
}

func runRollout(ctx context.Context, g *globals, o rolloutOptions, args []string, stdout, stderr io.Writer) error {
	var gate *dispatcher.Gate
	if o.gate != "" {
		var err error
		if gate, err = dispatcher.ParseGate(o.gate); err != nil {
			return &usageError{fmt.Errorf("--gate: %w", err)}
		}
		gate.Timeout = o.gateTimeout
	}
	dbPath := o.db
	if dbPath == "" {
		dbPath = store.DefaultPath()
	}
	db, err := store.Open(ctx, dbPath)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	defer db.Close()
	dialOpts, err := g.dialOptions(nil)
	if err != nil {
		return err
	}

	var (
		id   string
		plan dispatcher.Plan
	)
	if o.resume != "" {
		var rec store.Rollout
		if rec, plan, _, _, err = rolloutjob.RecordedRollout(ctx, db, o.resume); err != nil {
			return &usageError{err}
		}
		id, o.concurrency = rec.ID, rec.Concurrency
	}
	show := newRolloutDisplay(stdout, stderr, o)
	defer show.close()
	defer context.AfterFunc(ctx, show.interrupt)()
	if o.resume == "" {
		im, err := image.OpenFile(args[0])
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		defer im.Close()
		cfg := dispatcher.RolloutConfig{Image: im, Concurrency: o.concurrency, BoardTimeout: o.boardTimeout, Force: o.force,
			Events: show.event, DialOptions: dialOpts}
		switch {
		case o.planFile != "":
			if err := readPlan(o.planFile, im, &plan); err != nil {
				return err
			}
		default:
			targets, err := rolloutTargets(ctx, g, o, db)
			if err != nil {
				return err
			}
			if len(targets) == 0 {
				return &exitError{code: 1, err: fmt.Errorf("no board matches %s", orNone(strings.Join(o.selectors, " ")))}
			}
			plan = dispatcher.PlanRollout(ctx, cfg, targets)
			if ctx.Err() != nil {
				return interrupted(ctx, "while planning, before any board was changed")
			}
			show.planDone(plan)
			if o.savePlan != "" {
				if err := atomicfile.WriteJSON(o.savePlan, dispatcher.PlanFormat, plan); err != nil {
					return &exitError{code: 1, err: err}
				}
				fmt.Fprintf(stderr, "plan of %d boards written to %s\n", len(plan.Boards), o.savePlan)
				return nil
			}
		}
		id, err = rolloutjob.RecordRollout(ctx, db, rolloutjob.NewRollout{ImagePath: args[0], Selector: strings.Join(o.selectors, " "),
			Plan: plan, Concurrency: o.concurrency, MaxFailures: o.maxFailures,
			Spec: rolloutjob.RolloutSpec{Gate: gate, WaveSize: o.waveSize, BoardTimeout: o.boardTimeout, Force: o.force}})
		if err != nil {
			return &exitError{code: 1, err: err}
		}
	}
	show.begin(id, len(plan.Boards))
	rep, err := rolloutjob.RunRecorded(ctx, db, id, dispatcher.RolloutConfig{Events: show.event, BoardTimeout: o.boardTimeout,
		DialOptions: dialOpts})
	if ctx.Err() != nil {
		if err := db.SetRolloutState(context.WithoutCancel(ctx), id, store.StateStopped); err != nil {
			show.logf("", "records: %v", err)
		}
		show.report(id, rep)
		return interrupted(ctx, "rollout %s stopped; boards under way stay where they are: go on with 'boardlink rollout --resume %s'", id, id)
	}
	if err != nil && len(rep.Boards) == 0 {
		return &exitError{code: 1, err: err} // it never ran: the image or the records
	}
	if err != nil {
		show.logf("", "records: %v", err)
	}
	show.report(id, rep)
	if !rep.OK() {
		if rep.Stopped != "" {
			return &exitError{code: 1, err: fmt.Errorf("rollout %s stopped: %s", id, strings.TrimPrefix(rep.Stopped, "not started: "))}
		}
		return &exitError{code: 1, err: fmt.Errorf("rollout %s: not every board committed", id)}
	}
	return nil
}

// rolloutViaServer starts the rollout in the lab service, which runs it
// (and resumes it after a restart), and follows it to its end: each
// board's changes on stderr (JSON lines with --json), the report last.
// With --resume ID it follows that rollout of the service. Ctrl-C stops
// following, not the rollout.
func rolloutViaServer(ctx context.Context, g *globals, o rolloutOptions, args []string, stdout, stderr io.Writer) error {
	for flag, set := range map[string]bool{"--plan": o.planFile != "", "--save-plan": o.savePlan != "",
		"--inventory": o.inventory != "", "--db": o.db != "", "--log-dir": o.logDir != ""} {
		if set {
			return &usageError{fmt.Errorf("%s does not go through the lab service (--server, $BOARDLINK_SERVER): it plans, records and logs the rollout itself", flag)}
		}
	}
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	var st service.RolloutStatus
	if o.resume != "" {
		if st, err = c.Rollout(ctx, o.resume); err != nil {
			return serviceFailure(err)
		}
	} else {
		sel, err := dispatcher.ParseSelector(o.selectors)
		if err != nil {
			return &usageError{fmt.Errorf("--select: %w", err)}
		}
		if o.gate != "" {
			if _, err := dispatcher.ParseGate(o.gate); err != nil {
				return &usageError{fmt.Errorf("--gate: %w", err)}
			}
		}
		if _, err := os.Stat(args[0]); err != nil {
			return &exitError{code: 1, err: err}
		}
		var bar *progressBar
		if !o.asJSON {
			bar = newProgressBar(stderr, "upload "+filepath.Base(args[0])+" to the lab service", 0)
		}
		st, err = c.WithUploadProgress(bar.set).StartRollout(ctx, args[0], service.RolloutRequest{Select: sel, Concurrency: o.concurrency,
			MaxFailures: o.maxFailures, WaveSize: o.waveSize, Gate: o.gate, GateTimeoutMs: o.gateTimeout.Milliseconds(),
			BoardTimeoutMs: o.boardTimeout.Milliseconds(), Force: o.force, PartWaitMs: o.partWait.Milliseconds()})
		bar.done(err == nil)
		if err != nil {
			return serviceFailure(err)
		}
	}
	if !o.asJSON {
		fmt.Fprintf(stderr, "rollout %s of %s: %d boards, at most %d at once, run by the lab service\n", st.ID, st.Version, st.Boards, st.Concurrency)
	}
	f := &rolloutFollower{c: c, asJSON: o.asJSON, enc: json.NewEncoder(stdout), stderr: stderr,
		seen: map[string]store.BoardResult{}, shown: map[string]string{}}
	runs, err := f.follow(ctx, st)
	if err != nil {
		return err
	}
	var failed []string
	for _, p := range runs[0].Parts {
		if p.State == store.PartGivenUp || p.State == store.PartCancelled {
			failed = append(failed, fmt.Sprintf("not started on service %s (boards %s): %s", p.Owner, strings.Join(p.Boards, " "), p.Error))
		}
	}
	st = runs[0]
	rep := dispatcher.Report{Version: st.Version, Counts: map[string]int{}, TookMs: st.Updated.Sub(st.Created).Milliseconds()}
	stopped := false
	for _, r := range runs {
		for k, n := range r.Summary {
			rep.Counts[k] += n
		}
		rep.TookMs = max(rep.TookMs, r.Updated.Sub(st.Created).Milliseconds())
		stopped = stopped || r.State == store.StateStopped
		rep.Boards = append(rep.Boards, boardReports(r, &rep)...)
	}
	show := newRolloutDisplay(stdout, stderr, o)
	show.report(st.ID, rep)
	switch {
	case len(failed) > 0:
		return &exitError{code: 1, err: fmt.Errorf("rollout %s: %s", st.ID, strings.Join(failed, "; "))}
	case rep.OK():
		return nil
	case stopped:
		return &exitError{code: 1, err: fmt.Errorf("rollout %s stopped: %s", st.ID, strings.TrimPrefix(rep.Stopped, "not started: "))}
	}
	return &exitError{code: 1, err: fmt.Errorf("rollout %s: not every board committed", st.ID)}
}

// rolloutFollower shows a rollout of the lab service as it moves: its
// boards, and its parts on the other services (waiting for their owner,
// started, given up) with their boards once started.
type rolloutFollower struct {
	c      *service.Client
	asJSON bool
	enc    *json.Encoder
	stderr io.Writer
	seen   map[string]store.BoardResult // each board as last shown
	shown  map[string]string            // each part's line as last shown, by owner
	stop   bool                         // the rollout's stop by hand was shown
}

// follow follows rollout st until it is over, its parts too, and returns
// it with the rollouts its parts started.
func (f *rolloutFollower) follow(ctx context.Context, st service.RolloutStatus) ([]service.RolloutStatus, error) {
	for {
		if st.Stop != "" && !f.stop && !f.asJSON {
			f.stop = true
			fmt.Fprintf(f.stderr, "rollout %s %s: no board starts now, those under way stop at their safe points\n", st.ID, st.Stop)
		}
		f.boards(st)
		runs := []service.RolloutStatus{st}
		for _, p := range st.Parts {
			if line := partLine(p); f.shown[p.Owner] != line {
				f.shown[p.Owner] = line
				if !f.asJSON {
					fmt.Fprintln(f.stderr, line)
				}
			}
			if p.State != store.PartStarted {
				continue
			}
			r, err := f.c.Rollout(ctx, p.Rollout)
			if ctx.Err() != nil {
				return nil, f.interrupted(ctx, st)
			}
			if err != nil {
				return nil, serviceFailure(err)
			}
			f.boards(r)
			runs = append(runs, r)
		}
		if st.State != store.StateRunning {
			return runs, nil
		}
		next, err := f.c.WaitRollout(ctx, st.ID, st.Updated, 30*time.Second)
		if ctx.Err() != nil {
			return nil, f.interrupted(ctx, st)
		}
		if err != nil {
			return nil, serviceFailure(err)
		}
		st = next
	}
}

// boards shows rollout st's boards that moved since last shown.
func (f *rolloutFollower) boards(st service.RolloutStatus) {
	for _, b := range st.BoardResults {
		if prev, ok := f.seen[b.BoardID]; ok && prev.Phase == b.Phase && prev.Result == b.Result {
			continue
		}
		f.seen[b.BoardID] = b
		if f.asJSON {
			_ = f.enc.Encode(b)
			continue
		}
		fmt.Fprintf(f.stderr, "%-20s %-8s %s %s\n", b.BoardID, b.Phase, orDash(b.Result), b.Reason)
	}
}

// interrupted is the error of a follow that Ctrl-C stopped: the rollout
// goes on in the service, and it says what was left of it.
func (f *rolloutFollower) interrupted(ctx context.Context, st service.RolloutStatus) error {
	var left []string
	for _, p := range st.Parts {
		if p.State.Open() {
			left = append(left, fmt.Sprintf("%d boards waiting for service %s", len(p.Boards), p.Owner))
		}
	}
	if n := st.Summary[store.SummaryPending] + st.Summary[store.SummaryRunning]; n > 0 {
		left = append(left, fmt.Sprintf("%d boards of its own under way", n))
	}
	what := ""
	if len(left) > 0 {
		what = " (" + strings.Join(left, "; ") + ")"
	}
	return interrupted(ctx, "rollout %s goes on in the lab service%s: follow it with 'boardlink rollout --resume %s'", st.ID, what, st.ID)
}

// partLine says where part p stands.
func partLine(p store.RolloutPart) string {
	switch p.State {
	case store.PartWaiting:
		if p.Attempts == 0 {
			return fmt.Sprintf("waiting for service %s to come back: %d boards", p.Owner, len(p.Boards))
		}
		return fmt.Sprintf("waiting for service %s: %d boards (tried %d times: %s)", p.Owner, len(p.Boards), p.Attempts, p.Error)
	case store.PartStarting:
		return fmt.Sprintf("starting on service %s: %d boards", p.Owner, len(p.Boards))
	case store.PartStarted:
		return fmt.Sprintf("rollout %s on service %s: %d boards", p.Rollout, p.Owner, len(p.Boards))
	}
	return fmt.Sprintf("%s on service %s: %d boards: %s", strings.ReplaceAll(string(p.State), "_", " "), p.Owner, len(p.Boards), p.Error)
}

// boardReports are rollout r's boards as a report's, and the first
// skip's reason as rep's Stopped.
func boardReports(r service.RolloutStatus, rep *dispatcher.Report) []dispatcher.BoardReport {
	var out []dispatcher.BoardReport
	for _, b := range r.BoardResults {
		out = append(out, dispatcher.BoardReport{ID: b.BoardID, Address: b.Address, Result: b.Result, Stage: b.Phase,
			Reason: b.Reason, FromVersion: b.FromVersion, ToVersion: b.ToVersion, UpdateID: b.UpdateID, BytesSent: b.BytesSent,
			Attempts: b.Attempts, Started: b.Started, Ended: b.Ended})
		if b.Result == dispatcher.ResultSkipped && rep.Stopped == "" {
			rep.Stopped = b.Reason
		}
	}
	return out
}

func readPlan(path string, im *image.Image, plan *dispatcher.Plan) error {
	if err := atomicfile.ReadJSON(path, dispatcher.PlanFormat, plan); err != nil {
		return &usageError{fmt.Errorf("--plan: %w", err)}
	}
	if plan.ImageSHA256 != im.Manifest.PayloadSHA256 {
		return &usageError{fmt.Errorf("--plan %s was made for image %s (version %s), not this one", path, plan.ImageSHA256[:12], plan.Version)}
	}
	return nil
}

// rolloutTargets finds the boards: discovery plus the inventory, filtered
// by the selectors. Every board discovered is recorded as a sighting.
func rolloutTargets(ctx context.Context, g *globals, o rolloutOptions, db *store.Store) ([]dispatcher.Target, error) {
	sel, err := dispatcher.ParseSelector(o.selectors)
	if err != nil {
		return nil, &usageError{fmt.Errorf("--select: %w", err)}
	}
	var inv []dispatcher.Target
	if o.inventory != "" {
		if inv, err = dispatcher.ReadInventory(o.inventory); err != nil {
			return nil, &usageError{fmt.Errorf("--inventory: %w", err)}
		}
	}
	var r *dispatcher.Resolver
	if o.discover > 0 {
		r = g.resolver()
		r.Timeout = o.discover
	}
	targets, found, err := dispatcher.Targets(ctx, r, inv, sel)
	if err != nil {
		return nil, linkFailure(err)
	}
	if w := found.Warning(); r != nil && w != "" {
		g.warn(w)
	}
	for _, b := range found.Boards { // the version a board runs is its slot's image's
		_ = db.Sight(ctx, store.Sighting{BoardID: b.ID, Address: b.Address, Model: b.Model, Labels: b.Labels,
			BootID: b.BootID, Version: b.SlotVersion})
	}
	return targets, nil
}

// rolloutDisplay shows a rollout: bars on a terminal, lines elsewhere,
// JSON lines with --json; it keeps every board's log.
type rolloutDisplay struct {
	out, errw io.Writer
	o         rolloutOptions
	term      bool

	mu          sync.Mutex
	p           *mpb.Progress
	overall     *mpb.Bar
	bars        map[string]*mpb.Bar
	phases      map[string]*boardPhase
	logs        map[string][]string
	stage       string
	counts      *stageCounts // the current stage's, read by its bar
	failed      []string     // boards that failed in the current stage
	interrupted bool
	enc         *json.Encoder
}

// stageCounts are a stage's boards, as its overall bar shows them while
// events change them.
type stageCounts struct{ total, started, ended atomic.Int64 }

func (c *stageCounts) text(decor.Statistics) string {
	ended, started := c.ended.Load(), c.started.Load()
	return fmt.Sprintf("%d/%d boards done, %d under way", ended, c.total.Load(), started-ended)
}

// boardPhase is what a board's bar says it does, and since when.
type boardPhase struct {
	mu    sync.Mutex
	what  string
	since time.Time
}

func (b *boardPhase) set(phase string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := phaseWords[phase]; w != "" {
		phase = w
	}
	if phase != b.what {
		b.what, b.since = phase, time.Now()
	}
}

func (b *boardPhase) text(decor.Statistics) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.what + " " + seconds(time.Since(b.since))
}

// phaseWords say what a board does in each phase of its update.
var phaseWords = map[string]string{
	"send":                      "sending chunks",
	string(proto.PhasePrepare):  "writing and verifying its slot",
	string(proto.PhasePrepared): "prepared",
	string(proto.PhaseActivate): "activating, rebooting into the trial",
	string(proto.PhaseTrial):    "trial boot, health check",
	string(proto.PhaseCommit):   "committing",
	string(proto.PhaseRollback): "rolling back, rebooting",
	string(proto.PhaseDone):     "done",
}

func newRolloutDisplay(out, errw io.Writer, o rolloutOptions) *rolloutDisplay {
	d := &rolloutDisplay{out: out, errw: errw, o: o, term: isTerminal(errw) && !o.asJSON,
		bars: map[string]*mpb.Bar{}, phases: map[string]*boardPhase{}, logs: map[string][]string{}}
	if o.asJSON {
		d.enc = json.NewEncoder(out)
	}
	return d
}

// interrupt acknowledges Ctrl-C at once, above the bars.
func (d *rolloutDisplay) interrupt() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.interrupted = true
	if d.o.asJSON {
		return
	}
	msg := "interrupted: no new board starts; the boards under way stop where they are, to resume (Ctrl-C again quits at once)\n"
	if d.p != nil {
		_, _ = d.p.Write([]byte(msg))
		return
	}
	fmt.Fprint(d.errw, msg)
}

func (d *rolloutDisplay) begin(id string, boards int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.o.asJSON {
		fmt.Fprintf(d.errw, "rollout %s: %d boards, at most %d at once\n", id, boards, d.o.concurrency)
	}
}

func (d *rolloutDisplay) planDone(plan dispatcher.Plan) {
	if d.o.asJSON {
		return
	}
	var need int64
	settled := map[string]int{}
	for _, b := range plan.Boards {
		need += b.NeedBytes
		if b.Result != "" {
			settled[b.Result]++
		}
	}
	fmt.Fprintf(d.errw, "plan: %d boards, %s to send in all", len(plan.Boards), humanBytes(need))
	for _, k := range slices.Sorted(maps.Keys(settled)) {
		fmt.Fprintf(d.errw, ", %d %s", settled[k], k)
	}
	fmt.Fprintln(d.errw)
}

// logf adds a line to a board's log ("" for the rollout's own).
func (d *rolloutDisplay) logf(board, format string, args ...any) {
	line := time.Now().Format("15:04:05.000 ") + fmt.Sprintf(format, args...)
	d.mu.Lock()
	d.logs[board] = append(d.logs[board], line)
	d.mu.Unlock()
	if d.o.logDir != "" {
		if err := os.MkdirAll(d.o.logDir, 0o755); err == nil {
			// The root keeps every name inside the directory, whatever a
			// board id (from the network, or an inventory) says.
			if root, err := os.OpenRoot(d.o.logDir); err == nil {
				if f, err := root.OpenFile(logName(board), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
					fmt.Fprintln(f, line)
					f.Close()
				}
				root.Close()
			}
		}
	}
}

// logName is the file of a board's log in --log-dir: BOARD.log for an id
// that is a plain name (discovery.CheckID), else a name made from its
// hash, so that no id can point elsewhere or hide among the others.
func logName(board string) string {
	switch {
	case board == "":
		return "rollout.log"
	case discovery.CheckID(board) == nil:
		return board + ".log"
	}
	sum := sha256.Sum256([]byte(board))
	return "board-" + hex.EncodeToString(sum[:8]) + ".log"
}

func (d *rolloutDisplay) event(e dispatcher.Event) {
	if e.Kind != "progress" || e.Phase != "send" {
		switch {
		case e.Kind == "done" && e.Result != "":
			d.logf(e.Board, "%s: %s %s", e.Stage, e.Result, e.Reason)
		case e.Kind == "retry":
			d.logf(e.Board, "%s: attempt %d after: %s", e.Stage, e.Attempt, e.Reason)
		case e.Kind != "stage":
			d.logf(e.Board, "%s: %s %s", e.Stage, e.Kind, e.Phase)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.enc != nil {
		if e.Kind != "progress" || e.Phase != "send" || e.Sent == e.ToSend {
			_ = d.enc.Encode(e)
		}
		return
	}
	switch e.Kind {
	case "stage":
		d.endStageLocked()
		d.stage, d.counts = e.Stage, &stageCounts{}
		d.counts.total.Store(int64(e.Boards))
		if e.Stage == dispatcher.StageDone {
			return
		}
		name := e.Stage
		if e.Wave > 0 {
			name = fmt.Sprintf("%s, wave %d", e.Stage, e.Wave)
		}
		if d.term {
			d.p = mpb.New(mpb.WithOutput(d.errw), mpb.WithWidth(60), mpb.WithAutoRefresh()) // as newProgressBar
			d.overall = d.p.New(d.counts.total.Load(), mpb.BarStyle(), mpb.BarPriority(1<<30),
				mpb.PrependDecorators(decor.Name(name, decor.WCSyncSpaceR), decor.Any(d.counts.text)),
				mpb.AppendDecorators(decor.Elapsed(decor.ET_STYLE_GO)))
		} else {
			fmt.Fprintf(d.errw, "== %s\n", name)
		}
	case "start":
		d.counts.started.Add(1)
		if !d.term || d.overall == nil || e.Stage == dispatcher.StagePlan {
			return // planning moves no bytes: the overall bar says enough
		}
		ph := &boardPhase{}
		ph.set("starting")
		d.phases[e.Board] = ph
		decorators := []decor.Decorator{decor.Name(e.Board, decor.WCSyncSpaceR), decor.Name(e.Stage, decor.WCSyncSpaceR)}
		if e.Stage == dispatcher.StagePrepare { // bytes to send: a bar
			d.bars[e.Board] = d.p.New(0, mpb.BarStyle(), mpb.BarRemoveOnComplete(),
				mpb.PrependDecorators(decorators...),
				mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace), decor.Any(ph.text, decor.WCSyncSpace)))
		} else { // phases and reboots: a spinner that says which
			d.bars[e.Board] = d.p.New(0, mpb.SpinnerStyle(), mpb.BarRemoveOnComplete(),
				mpb.PrependDecorators(decorators...), mpb.AppendDecorators(decor.Any(ph.text, decor.WCSyncSpace)))
		}
	case "progress":
		if ph := d.phases[e.Board]; ph != nil && e.Phase != "" {
			ph.set(e.Phase)
		}
		if b := d.bars[e.Board]; b != nil && e.Phase == "send" && e.ToSend > 0 {
			b.SetTotal(e.ToSend, false)
			b.SetCurrent(e.Sent)
		}
	case "done":
		if b := d.bars[e.Board]; b != nil {
			b.SetTotal(-1, true)
			delete(d.bars, e.Board)
			delete(d.phases, e.Board)
		}
		if e.Result == dispatcher.ResultSkipped {
			d.counts.started.Add(1) // it never started: "under way" stays true
		}
		d.counts.ended.Add(1)
		if d.overall != nil {
			d.overall.SetCurrent(d.counts.ended.Load())
		}
		ok := e.Result == "" || e.Result == string(proto.ResultCommitted) || e.Result == dispatcher.ResultCurrent
		if !ok && e.Result != dispatcher.ResultSkipped && !d.interrupted {
			d.failed = append(d.failed, e.Board)
		}
		if !d.term {
			res := e.Result
			if res == "" {
				res = "ok"
			}
			fmt.Fprintf(d.errw, "%-20s %-8s %s %s\n", e.Board, e.Stage, res, e.Reason)
		}
	}
}

// endStageLocked closes the stage's bars and shows the logs of the boards
// that failed in it (not after Ctrl-C: they were stopped, not failing).
func (d *rolloutDisplay) endStageLocked() {
	if d.p != nil {
		if d.overall != nil {
			d.overall.SetTotal(-1, true)
		}
		for _, b := range d.bars {
			b.Abort(true)
		}
		d.bars, d.phases = map[string]*mpb.Bar{}, map[string]*boardPhase{}
		if d.interrupted {
			d.p.Shutdown() // after Ctrl-C no bar is left to finish: stop drawing now
		} else {
			d.p.Wait()
		}
		d.p, d.overall = nil, nil
	}
	for _, b := range d.failed {
		fmt.Fprintf(d.errw, "-- %s failed in %s; its log:\n", b, d.stage)
		for _, l := range d.logs[b] {
			fmt.Fprintf(d.errw, "   %s\n", l)
		}
	}
	d.failed = nil
}

func (d *rolloutDisplay) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.endStageLocked()
}

// report prints the summary table, or the JSON report.
func (d *rolloutDisplay) report(id string, rep dispatcher.Report) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.endStageLocked()
	if d.enc != nil {
		_ = d.enc.Encode(struct {
			Rollout string `json:"rollout"`
			dispatcher.Report
		}{id, rep})
		return
	}
	w := d.out
	fmt.Fprintf(w, "\nrollout %s to %s: %.1fs, image read %s\n", id, rep.Version, float64(rep.TookMs)/1000, humanBytes(rep.ImageBytesRead))
	fmt.Fprintf(w, "%-20s %-12s %-8s %-10s %-10s %10s  %s\n", "BOARD", "RESULT", "STAGE", "FROM", "TO", "SENT", "REASON")
	for _, b := range rep.Boards {
		reason := b.Reason
		if len(reason) > 80 {
			reason = reason[:77] + "..."
		}
		fmt.Fprintf(w, "%-20s %-12s %-8s %-10s %-10s %10s  %s\n", b.ID, b.Result, b.Stage, orDash(b.FromVersion),
			orDash(b.ToVersion), humanBytes(b.BytesSent), reason)
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(rep.Counts)) {
		parts = append(parts, fmt.Sprintf("%d %s", rep.Counts[k], k))
	}
	fmt.Fprintf(w, "%s\n", strings.Join(parts, ", "))
}
