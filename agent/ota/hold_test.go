package ota

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// heldTrial prepares and activates an update with hold, boots into its
// trial and returns once the trial is held for the host's verdict.
func heldTrial(t *testing.T, r *rig, hold time.Duration) string {
	t.Helper()
	im, _ := r.image("1.0.0", randomBytes(3*4096))
	id := r.prepare(im)
	if err := r.u.Commit(context.Background(), id); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("a commit before the trial: %v, want busy", err)
	}
	reboot, err := r.u.Activate(context.Background(), id, hold)
	if err != nil {
		t.Fatal(err)
	}
	reboot()
	r.reboot()
	r.waitFor(proto.PhaseHeld)
	return id
}

// TestHeldTrialCommitted: a trial activated with a hold waits, after its
// health check passed, for the host's verdict; ota.commit keeps it.
func TestHeldTrialCommitted(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	id := heldTrial(t, r, time.Hour)
	st, err := r.u.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u := st.Update; u.HoldUntil == nil || time.Until(*u.HoldUntil) <= 0 || time.Until(*u.HoldUntil) > time.Hour {
		t.Fatalf("held: hold_until %v, want within the hour to come", u.HoldUntil)
	}
	if err := r.u.Commit(ctx, "other"); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Fatalf("commit of another id: %v, want not_found", err)
	}
	r.restart() // the agent restarts within the trial boot: still held
	r.waitFor(proto.PhaseHeld)
	if err := r.u.Commit(ctx, id); err != nil {
		t.Fatal(err)
	}
	u := r.waitFor(proto.PhaseDone)
	if u.Result != proto.ResultCommitted || r.slot != "B" || u.HoldUntil != nil {
		t.Fatalf("after the commit: %+v, booted %s", u, r.slot)
	}
	want := []proto.Phase{proto.PhasePrepare, proto.PhasePrepared, proto.PhaseActivate, proto.PhaseTrial,
		proto.PhaseHeld, proto.PhaseHeld, proto.PhaseCommit, proto.PhaseDone}
	if got := r.seen(); !slices.Equal(got, want) {
		t.Fatalf("phases %v, want %v", got, want)
	}
}

// TestHeldTrialRolledBack: ota.rollback ends a held trial with the host's
// reason, back on the old slot.
func TestHeldTrialRolledBack(t *testing.T) {
	r := newRig(t)
	id := heldTrial(t, r, time.Hour)
	if err := r.u.Rollback(context.Background(), id, "gate failed on board7"); err != nil {
		t.Fatal(err)
	}
	r.reboot()
	u := r.waitFor(proto.PhaseDone)
	if u.Result != proto.ResultRolledBack || u.FailedPhase != proto.PhaseHeld || r.slot != "A" ||
		!strings.Contains(u.Reason, "rolled back by the host: gate failed on board7") {
		t.Fatalf("after the rollback: %+v, booted %s", u, r.slot)
	}
}

// TestHoldEnds: without a verdict the board rolls back by itself when the
// hold ends, so a host that went away leaves no board on a trial; so does
// a power cut while held.
func TestHoldEnds(t *testing.T) {
	t.Run("no verdict", func(t *testing.T) {
		r := newRig(t)
		im, _ := r.image("1.0.0", randomBytes(3*4096))
		id := r.prepare(im)
		reboot, err := r.u.Activate(context.Background(), id, time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		reboot()
		r.reboot() // into the trial, held for a millisecond
		r.reboot() // the rollback asks for it
		u := r.waitFor(proto.PhaseDone)
		if u.Result != proto.ResultRolledBack || u.FailedPhase != proto.PhaseHeld || r.slot != "A" ||
			!strings.Contains(u.Reason, "no verdict from the host within the hold") {
			t.Fatalf("after the hold: %+v, booted %s", u, r.slot)
		}
	})
	t.Run("power cut", func(t *testing.T) {
		r := newRig(t)
		heldTrial(t, r, time.Hour)
		r.stop()
		r.boot()
		u := r.waitFor(proto.PhaseDone)
		if u.Result != proto.ResultRolledBack || u.FailedPhase != proto.PhaseHeld || r.slot != "A" {
			t.Fatalf("after a cut while held: %+v, booted %s", u, r.slot)
		}
	})
}
