package power

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrGaveUp: Recover power-cycled the board as many times as it was
// allowed and it never came back with a new boot. The service quarantines
// such a board.
var ErrGaveUp = errors.New("the board did not come back after its power cycles")

// Recovery steps, as Step.Kind names them.
const (
	StepCycle  = "power-cycle" // the driver was told to cycle (Err: it failed)
	StepWait   = "wait"        // waiting for the board; Err: it did not come back in time
	StepBack   = "back"        // the board answered with BootID, a new boot
	StepGaveUp = "gave-up"     // no attempt is left
)

// Step is one thing Recover did, for the board's record.
type Step struct {
	Time    time.Time `json:"time"`
	Attempt int       `json:"attempt"`
	Kind    string    `json:"kind"`
	BootID  string    `json:"boot_id,omitempty"`
	Err     string    `json:"error,omitempty"`
}

// RecoverOptions bound a recovery.
type RecoverOptions struct {
	// Attempts is how many power cycles to try (default 3).
	Attempts int
	// WaitTimeout bounds the wait for the board after each cycle (default
	// 3 minutes: a real board's boot).
	WaitTimeout time.Duration
	// Step, if set, is called with each step as it happens.
	Step func(Step)
}

// Outcome is how a recovery ended.
type Outcome struct {
	Recovered bool   `json:"recovered"`
	BootID    string `json:"boot_id,omitempty"` // the new boot's, when recovered
	Attempts  int    `json:"attempts"`          // power cycles tried
	Steps     []Step `json:"steps"`
}

// Recover brings back a board whose agent stopped answering: it
// power-cycles it with d and calls waitBack, bounded by WaitTimeout, which
// returns the boot id the board answers with once it does. A boot id
// other than oldBoot ends the recovery; the same one (the cycle did not
// reach the board) or no answer is a failed attempt, and after Attempts
// of them Recover returns ErrGaveUp. A driver that cannot act (ErrNoPower,
// ErrNotRunning, a command that fails) counts as a failed attempt too,
// except ErrNoPower, which ends it at once: nothing can be tried. Every
// step is in the Outcome and passed to opts.Step as it happens.
func Recover(ctx context.Context, d Driver, waitBack func(context.Context) (bootID string, err error), oldBoot string, opts RecoverOptions) (Outcome, error) {
	if opts.Attempts <= 0 {
		opts.Attempts = 3
	}
	if opts.WaitTimeout <= 0 {
		opts.WaitTimeout = 3 * time.Minute
	}
	var out Outcome
	step := func(s Step) {
		s.Time = time.Now()
		out.Steps = append(out.Steps, s)
		if opts.Step != nil {
			opts.Step(s)
		}
	}
	var last error
	for attempt := 1; attempt <= opts.Attempts; attempt++ {
		out.Attempts = attempt
		err := d.Do(ctx, Cycle)
		if err != nil {
			step(Step{Attempt: attempt, Kind: StepCycle, Err: err.Error()})
			if errors.Is(err, ErrNoPower) || ctx.Err() != nil {
				return out, err
			}
			last = err
			continue
		}
		step(Step{Attempt: attempt, Kind: StepCycle})
		wctx, cancel := context.WithTimeout(ctx, opts.WaitTimeout)
		boot, err := waitBack(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			step(Step{Attempt: attempt, Kind: StepWait, Err: ctx.Err().Error()})
			return out, ctx.Err()
		case err != nil:
			last = fmt.Errorf("not back within %v: %w", opts.WaitTimeout, err)
		case boot == oldBoot:
			last = fmt.Errorf("it answered with its old boot %s: the power cycle did not reach it", boot)
		default:
			step(Step{Attempt: attempt, Kind: StepWait})
			step(Step{Attempt: attempt, Kind: StepBack, BootID: boot})
			out.Recovered, out.BootID = true, boot
			return out, nil
		}
		step(Step{Attempt: attempt, Kind: StepWait, Err: last.Error()})
	}
	step(Step{Attempt: out.Attempts, Kind: StepGaveUp, Err: last.Error()})
	return out, fmt.Errorf("%w (%d attempts; the last: %w)", ErrGaveUp, out.Attempts, last)
}
