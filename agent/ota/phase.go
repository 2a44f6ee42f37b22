package ota

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/boardlink/boardlink/proto"
)

// transitions is the one table of the moves an update may make; every
// change of phase goes through it (transitionLocked). An update is born in
// PhasePrepare (Begin) and PhaseDone is final: a new update replaces it.
// A phase that moves to itself is a resume after a restart (the step is
// done again), never a loop of its own: every cycle in the table waits
// for a request (ota.start, ota.activate) or a boot.
var transitions = map[proto.Phase][]proto.Phase{
	// verified, stopped on a fetch error, ended (aborted, a payload that
	// does not match its manifest)
	proto.PhasePrepare: {proto.PhasePrepared, proto.PhaseHalted, proto.PhaseDone},
	// activated, or ended (aborted, a manifest gone at start)
	proto.PhasePrepared: {proto.PhaseActivate, proto.PhaseDone},
	// resumed by ota.start, or ended
	proto.PhaseHalted: {proto.PhasePrepare, proto.PhaseDone},
	// booted into the trial; back to prepared when the boot loader never
	// took the trial; again when the agent restarted before its reboot;
	// ended when the trial boot did not come up
	proto.PhaseActivate: {proto.PhaseTrial, proto.PhasePrepared, proto.PhaseActivate, proto.PhaseDone},
	// the health check passed (held for the host's verdict when asked)
	// or failed; again when the agent restarted
	// within the trial boot; ended when the trial boot ended first
	proto.PhaseTrial: {proto.PhaseCommit, proto.PhaseHeld, proto.PhaseRollback, proto.PhaseTrial, proto.PhaseDone},
	// the host's verdict (or the hold's end); again when the agent
	// restarted within the trial boot; ended when the trial boot ended
	proto.PhaseHeld: {proto.PhaseCommit, proto.PhaseRollback, proto.PhaseHeld, proto.PhaseDone},
	// committed (done), a boot loader that refused (rollback), again after
	// a restart
	proto.PhaseCommit: {proto.PhaseDone, proto.PhaseRollback, proto.PhaseCommit},
	// back on the old slot (done), again after a restart
	proto.PhaseRollback: {proto.PhaseDone, proto.PhaseRollback},
	proto.PhaseDone:     nil,
}

// ErrIllegalMove is wrapped by the error of a move the table refuses: a
// bug in the machine, or a state file from another version.
var ErrIllegalMove = errors.New("illegal phase transition")

// legal reports whether the table allows from -> to. A phase the table
// does not know (a state file from another version) may only end.
func legal(from, to proto.Phase) bool {
	next, known := transitions[from]
	return slices.Contains(next, to) || !known && to == proto.PhaseDone
}

// transitionLocked moves the update to phase and persists it before the
// caller acts on it. A move the table refuses changes nothing.
func (u *Updater) transitionLocked(to proto.Phase) error {
	from := u.upd.Phase
	if !legal(from, to) {
		err := fmt.Errorf("ota: update %s: %s to %s: %w", u.upd.ID, from, to, ErrIllegalMove)
		u.log.Error("ota: refused", "err", err)
		return proto.WithCause(proto.Errorf(proto.ReasonInternal, "%v", err), err)
	}
	u.upd.Phase = to
	u.upd.Transitions++
	if u.cfg.OnPhase != nil {
		u.cfg.OnPhase(u.upd.ID, to)
	}
	return u.saveLocked()
}

// finishLocked ends the update with result. A trial still pending in the
// boot loader is cancelled first, so a failed update never boots.
func (u *Updater) finishLocked(ctx context.Context, result proto.Result, reason string) error {
	if result != proto.ResultCommitted {
		if bs, err := u.cfg.Boot.State(ctx); err == nil && bs.Trial != "" && !bs.Trying() {
			if err := u.cfg.Boot.Rollback(ctx); err != nil {
				u.log.Error("ota: cancelling the trial", "err", err)
			}
		}
	}
	switch {
	case result == proto.ResultAborted:
		u.upd.FailedPhase = "" // a halted update that is aborted did not fail
	case result != proto.ResultCommitted && u.upd.FailedPhase == "":
		u.upd.FailedPhase = u.upd.Phase
	}
	u.upd.Result, u.upd.Reason = result, reason
	u.closeTargetLocked()
	u.log.Info("ota: update ended", "id", u.upd.ID, "result", result, "reason", reason)
	return u.transitionLocked(proto.PhaseDone)
}

// haltLocked stops a prepare that cannot go on by itself, with the reason
// in the status; ota.start resumes it, ota.abort ends it.
func (u *Updater) haltLocked(reason string) error {
	u.upd.FailedPhase, u.upd.Reason = u.upd.Phase, reason
	u.closeTargetLocked()
	u.log.Warn("ota: prepare halted", "id", u.upd.ID, "reason", reason)
	return u.transitionLocked(proto.PhaseHalted)
}
