// Package rolloutjob records rollouts in the store and runs, resumes and
// reports them from it (`boardlink rollout`, the lab service's rollout
// jobs). It is not in package dispatcher so that a client of the
// dispatcher need not link the store: a binary that links it runs the
// init of its SQL drivers at every start, about a quarter of a fresh
// CLI process's start (docs/benchmarks.md).
package rolloutjob

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
)

// Owners of a recorded rollout: who runs it, and so who resumes it after
// a restart.
const (
	OwnerCLI     = ""        // `boardlink rollout`: resumed by hand, with --resume
	OwnerService = "service" // the lab service: ResumeRollouts resumes it when the service starts
)

// RolloutSpec is how a recorded rollout runs, besides its plan and the
// store's columns (concurrency, max failures): kept with the plan, so
// that a rollout resumed after a restart keeps its gate, its waves and
// its limits.
type RolloutSpec struct {
	Gate         *dispatcher.Gate `json:"gate,omitempty"`
	WaveSize     int              `json:"wave_size,omitempty"`
	BoardTimeout time.Duration    `json:"board_timeout_ns,omitempty"`
	Force        bool             `json:"force,omitempty"`
	Owner        string           `json:"owner,omitempty"`
}

// recordedPlan is the JSON of a rollout's plan column: the Plan with its
// RolloutSpec's fields beside its own. A plan recorded before specs were
// reads as one with an empty spec.
type recordedPlan struct {
	dispatcher.Plan
	RolloutSpec
}

// NewRollout is a planned rollout to record (RecordRollout) and run
// (RunRecorded).
type NewRollout struct {
	ID          string // its id; empty: a new one (store.NewRolloutID)
	ImagePath   string // the signed image file, opened again by each run
	Selector    string // which boards, as given, for the records
	Plan        dispatcher.Plan
	Concurrency int
	MaxFailures int
	Spec        RolloutSpec
}

// RecordRollout records r as a new rollout (StateRunning) with every
// board of its plan, and returns its id. An id in use is store.ErrExists.
func RecordRollout(ctx context.Context, st *store.Store, r NewRollout) (string, error) {
	abs, err := filepath.Abs(r.ImagePath)
	if err != nil {
		return "", err
	}
	raw, err := json.Marshal(recordedPlan{Plan: r.Plan, RolloutSpec: r.Spec})
	if err != nil {
		return "", err
	}
	rec := store.Rollout{ID: cmp.Or(r.ID, store.NewRolloutID()), Image: abs, ImageSHA256: r.Plan.ImageSHA256, Version: r.Plan.Version,
		Selector: r.Selector, Concurrency: r.Concurrency, MaxFailures: r.MaxFailures, Plan: raw, State: store.StateRunning}
	if err := st.CreateRollout(ctx, rec); err != nil {
		return "", err
	}
	rows := make([]store.BoardResult, 0, len(r.Plan.Boards))
	for _, b := range r.Plan.Boards { // every board is on record from the start
		rows = append(rows, toRecord(rec.ID, dispatcher.BoardReport{ID: b.ID, Address: b.Address, Stage: dispatcher.StagePlan,
			Result: b.Result, Reason: b.Reason, FromVersion: b.FromVersion, ToVersion: r.Plan.Version}))
	}
	if err := st.PutBoards(ctx, rec.ID, rows); err != nil {
		return "", err
	}
	return rec.ID, nil
}

// RecordedRollout reads the recorded rollout id (or a unique prefix of
// one): its record, its plan and spec, and its boards as the last run left
// them.
func RecordedRollout(ctx context.Context, st *store.Store, id string) (store.Rollout, dispatcher.Plan, RolloutSpec, []dispatcher.BoardReport, error) {
	rec, rows, err := st.Rollout(ctx, id)
	if err != nil {
		return rec, dispatcher.Plan{}, RolloutSpec{}, nil, err
	}
	var p recordedPlan
	if err := json.Unmarshal(rec.Plan, &p); err != nil {
		return rec, dispatcher.Plan{}, RolloutSpec{}, nil, fmt.Errorf("rollout %s: its plan: %w", rec.ID, err)
	}
	var boards []dispatcher.BoardReport
	for _, r := range rows {
		boards = append(boards, fromRecord(r))
	}
	return rec, p.Plan, p.RolloutSpec, boards, nil
}

// RunRecorded runs the recorded rollout id to its end: from its start,
// or on from where an earlier run stopped (killed, interrupted), leaving
// committed boards alone and resuming boards mid-update. env gives what
// the runner supplies (DialOptions or Dial, Events, Record, Attempts,
// Backoff, CacheBytes); the rest comes from the record: the image (opened
// from its path, and refused if it changed), concurrency, failures, gate,
// waves, board timeout, force. Every board's report is recorded as it
// changes; Events carry the rollout's id.
//
// At the end the rollout's state is done, or stopped when a gate, too
// many failures or a halt (env.Halt) stopped it early. A stop on record
// (store.StopRollout: asked while no run was under way, or of another
// process) halts it from the start: boards whose update was activated
// are followed to their end, the others skipped. When ctx ends first the state stays
// running, for a later run to resume, and the error is ctx's. Other
// errors are the records' or the image's.
func RunRecorded(ctx context.Context, st *store.Store, id string, env dispatcher.RolloutConfig) (dispatcher.Report, error) {
	rec, plan, spec, prior, err := RecordedRollout(ctx, st, id)
	if err != nil {
		return dispatcher.Report{}, err
	}
	im, err := image.OpenFile(rec.Image)
	if err != nil {
		return dispatcher.Report{}, fmt.Errorf("rollout %s: %w", rec.ID, err)
	}
	defer im.Close()
	if im.Manifest.PayloadSHA256 != rec.ImageSHA256 {
		return dispatcher.Report{}, fmt.Errorf("rollout %s: %s no longer holds the image the rollout began with", rec.ID, rec.Image)
	}
	if err := st.SetRolloutState(ctx, rec.ID, store.StateRunning); err != nil {
		return dispatcher.Report{}, err
	}
	cfg := env
	if rec.Stop != "" {
		if cfg.Halt == nil {
			cfg.Halt = dispatcher.NewHalt()
		}
		cfg.Halt.Stop(rec.Stop)
	}
	cfg.Image, cfg.Concurrency, cfg.MaxFailures = im, rec.Concurrency, rec.MaxFailures
	cfg.Gate, cfg.WaveSize, cfg.Force = spec.Gate, spec.WaveSize, spec.Force
	if spec.BoardTimeout > 0 {
		cfg.BoardTimeout = spec.BoardTimeout
	}
	if events := env.Events; events != nil {
		cfg.Events = func(e dispatcher.Event) {
			e.Rollout = rec.ID
			events(e)
		}
	}
	var (
		mu      sync.Mutex
		records []error
	)
	cfg.Record = func(b dispatcher.BoardReport) {
		if err := st.PutBoard(context.WithoutCancel(ctx), toRecord(rec.ID, b)); err != nil {
			mu.Lock()
			records = append(records, err)
			mu.Unlock()
		}
		if env.Record != nil {
			env.Record(b)
		}
	}
	rep := dispatcher.RunRollout(ctx, cfg, plan, prior)
	if ctx.Err() != nil {
		// Interrupted: boards under way keep their records (not the
		// report's "interrupted"), for the next run to go on from.
		return rep, fmt.Errorf("rollout %s: %w", rec.ID, context.Cause(ctx))
	}
	for _, b := range rep.Boards {
		cfg.Record(b)
	}
	state := store.StateDone
	if rep.Stopped != "" {
		state = store.StateStopped
	}
	mu.Lock()
	err = errors.Join(records...)
	mu.Unlock()
	return rep, errors.Join(err, st.SetRolloutState(context.WithoutCancel(ctx), rec.ID, state))
}

// RolloutOutcome is how one resumed rollout ended.
type RolloutOutcome struct {
	ID     string
	Report dispatcher.Report
	Err    error
}

// ResumeRollouts runs on, all at once, every recorded rollout of owner
// still in StateRunning (its last run was killed, or stopped with its
// process), as RunRecorded does, each with the Halt halt gives it (a nil
// func: none; false: the caller runs that one already, left out), and
// returns once they all ended. The lab service calls it once
// as it starts, with OwnerService.
func ResumeRollouts(ctx context.Context, st *store.Store, owner string, env dispatcher.RolloutConfig,
	halt func(id string) (*dispatcher.Halt, bool)) ([]RolloutOutcome, error) {
	ids, err := st.RunningRollouts(ctx)
	if err != nil {
		return nil, err
	}
	var mine []string
	for _, id := range ids {
		_, _, spec, _, err := RecordedRollout(ctx, st, id)
		if err != nil {
			return nil, err
		}
		if spec.Owner == owner {
			mine = append(mine, id)
		}
	}
	var (
		out []RolloutOutcome
		mu  sync.Mutex
		wg  sync.WaitGroup
	)
	for _, id := range mine {
		env := env
		if halt != nil {
			var ok bool
			if env.Halt, ok = halt(id); !ok {
				continue // it runs already
			}
		}
		wg.Go(func() {
			rep, err := RunRecorded(ctx, st, id, env)
			mu.Lock()
			out = append(out, RolloutOutcome{ID: id, Report: rep, Err: err})
			mu.Unlock()
		})
	}
	wg.Wait()
	return out, nil
}

// toRecord is a board's report as the records keep it.
func toRecord(rollout string, b dispatcher.BoardReport) store.BoardResult {
	phase := b.Stage
	if b.Result != "" {
		phase = store.PhaseDone
	}
	return store.BoardResult{RolloutID: rollout, BoardID: b.ID, Address: b.Address, Phase: phase, Result: b.Result,
		Reason: b.Reason, FromVersion: b.FromVersion, ToVersion: b.ToVersion, BytesSent: b.BytesSent,
		Attempts: b.Attempts, UpdateID: b.UpdateID, Started: b.Started, Ended: b.Ended}
}

// fromRecord is a recorded board as RunRollout takes it back.
func fromRecord(r store.BoardResult) dispatcher.BoardReport {
	stage := r.Phase
	if stage == store.PhaseDone {
		stage = dispatcher.StageExecute
	}
	return dispatcher.BoardReport{ID: r.BoardID, Address: r.Address, Result: r.Result, Stage: stage, Reason: r.Reason,
		FromVersion: r.FromVersion, ToVersion: r.ToVersion, UpdateID: r.UpdateID, BytesSent: r.BytesSent, Attempts: r.Attempts,
		Started: r.Started, Ended: r.Ended}
}
