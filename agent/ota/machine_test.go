package ota

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// rig is one sim board's update machine, in process: a boot is sim.Open
// (the sim boot loader's A/B decision) and a new Updater on it, a reboot
// a clean Stop and the next boot. No agent, no process.
type rig struct {
	t      *testing.T
	dir    string
	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	checks []string // the health checks of the next boots
	u      *Updater
	bootID string
	slot   string // booted

	rebooted chan struct{} // Config.Reboot was called

	mu     sync.Mutex
	phases []proto.Phase // every OnPhase, across boots
}

func newRig(t *testing.T) *rig {
	t.Helper()
	pub, key, _ := ed25519.GenerateKey(nil)
	r := &rig{t: t, dir: t.TempDir(), key: key, pub: pub, rebooted: make(chan struct{}, 8)}
	r.boot()
	t.Cleanup(func() { r.u.Stop(context.Background()) })
	return r
}

// boot is a power-on: the boot loader decides, the machine starts.
func (r *rig) boot() {
	r.t.Helper()
	sb, err := sim.Open(r.dir, sim.Options{Model: "sim"})
	if err != nil {
		r.t.Fatal(err)
	}
	r.start(sb.BootControl(), sb.BootID())
}

// restart is the agent restarting within the same boot (a crash of the
// agent alone, or a cut before its reboot): same boot, same slot.
func (r *rig) restart() {
	r.t.Helper()
	r.stop()
	bc, err := sim.NewBootControl(r.dir, r.slot)
	if err != nil {
		r.t.Fatal(err)
	}
	r.start(bc, r.bootID)
}

func (r *rig) start(bc *sim.BootControl, bootID string) {
	r.t.Helper()
	r.bootID, r.slot = bootID, bc.Booted()
	r.u = New(Config{Dir: filepath.Join(r.dir, "ota"), Boot: bc, Model: "sim", BootID: bootID,
		Keys: []ed25519.PublicKey{r.pub}, HealthChecks: r.checks,
		Reboot: func() { r.rebooted <- struct{}{} },
		OnPhase: func(_ string, p proto.Phase) {
			r.mu.Lock()
			r.phases = append(r.phases, p)
			r.mu.Unlock()
		}})
	if err := r.u.Start(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) stop() {
	r.t.Helper()
	if err := r.u.Stop(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

// reboot waits for the machine to ask for a reboot, and does it.
func (r *rig) reboot() {
	r.t.Helper()
	<-r.rebooted
	r.stop()
	r.boot()
}

func (r *rig) seen() []proto.Phase {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.phases)
}

// image builds a signed image of payload, and the image file's bytes.
func (r *rig) image(version string, payload []byte) (*image.Image, []byte) {
	r.t.Helper()
	var buf bytes.Buffer
	if _, err := image.Build(&buf, bytes.NewReader(payload), int64(len(payload)),
		image.BuildOptions{Key: r.key, Models: []string{"sim"}, Version: version, ChunkSize: image.MinChunkSize}); err != nil {
		r.t.Fatal(err)
	}
	im, err := image.Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		r.t.Fatal(err)
	}
	return im, buf.Bytes()
}

func randomBytes(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

func paramsOf(im *image.Image) proto.OTAImageParams {
	return proto.OTAImageParams{Manifest: im.RawManifest, Signature: im.Signature}
}

// prepare begins an update to im, sends the chunks it needs as ota.write
// would, and waits for prepared.
func (r *rig) prepare(im *image.Image) string {
	r.t.Helper()
	ctx := context.Background()
	plan, err := r.u.Begin(ctx, paramsOf(im), FetchLimits{}, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	if len(plan.Need) > 0 {
		if err := r.u.Receive(ctx, plan.ID, chunkStream(r.t, im, plan.Need)); err != nil {
			r.t.Fatal(err)
		}
	}
	r.waitFor(proto.PhasePrepared)
	return plan.ID
}

// holdInTrial activates update id with a health check that never ends,
// reboots into the trial and returns once the board is on it.
func (r *rig) holdInTrial(id string) {
	r.t.Helper()
	r.checks = []string{"sleep 600; true"}
	reboot, err := r.u.Activate(context.Background(), id, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	reboot()
	r.reboot()
	r.waitFor(proto.PhaseTrial)
}

// chunkStream is what a client writes on ota.write's stream.
func chunkStream(t *testing.T, im *image.Image, idx []int) *bytes.Reader {
	t.Helper()
	var b bytes.Buffer
	for _, i := range idx {
		_, n := im.Manifest.ChunkRange(i)
		data := make([]byte, n)
		if _, err := im.Chunk(i).ReadAt(data, 0); err != nil {
			t.Fatal(err)
		}
		binary.Write(&b, binary.BigEndian, uint32(i))
		b.Write(data)
	}
	return bytes.NewReader(b.Bytes())
}

// waitFor waits until the update is in phase and returns it.
func (r *rig) waitFor(phase proto.Phase) proto.OTAUpdate {
	r.t.Helper()
	var since int64
	for {
		st, err := r.u.Wait(context.Background(), since)
		if err != nil {
			r.t.Fatal(err)
		}
		if st.Update != nil && st.Update.Phase == phase {
			return *st.Update
		}
		since = st.Seq
	}
}

// TestTransitionTable walks the table through the machine: every move the
// table allows succeeds and is persisted, every other one is refused with
// ErrIllegalMove and changes nothing.
func TestTransitionTable(t *testing.T) {
	for _, p := range proto.Phases {
		if _, ok := transitions[p]; !ok {
			t.Fatalf("phase %s has no row in the table", p)
		}
	}
	if len(transitions) != len(proto.Phases) {
		t.Fatalf("the table has %d rows for %d phases", len(transitions), len(proto.Phases))
	}
	// The moves that must never be allowed, whatever the table becomes:
	// an unverified or halted slot activated, a trial reached without
	// activation, a commit without a trial, an ended update revived.
	never := [][2]proto.Phase{
		{proto.PhasePrepare, proto.PhaseActivate}, {proto.PhaseHalted, proto.PhaseActivate},
		{proto.PhaseHalted, proto.PhasePrepared}, {proto.PhasePrepared, proto.PhaseTrial},
		{proto.PhasePrepare, proto.PhaseCommit}, {proto.PhaseActivate, proto.PhaseCommit},
		{proto.PhaseRollback, proto.PhaseCommit}, {proto.PhaseCommit, proto.PhaseTrial},
		{proto.PhaseTrial, proto.PhasePrepare}, {proto.PhaseDone, proto.PhasePrepare},
		{proto.PhaseDone, proto.PhaseDone},
	}
	for _, m := range never {
		if legal(m[0], m[1]) {
			t.Errorf("the table allows %s -> %s", m[0], m[1])
		}
	}
	// Every phase can end, and an update is born in prepare: every phase
	// is reached from there.
	reach := map[proto.Phase]bool{proto.PhasePrepare: true}
	for grew := true; grew; {
		grew = false
		for from, tos := range transitions {
			for _, to := range tos {
				if reach[from] && !reach[to] {
					reach[to], grew = true, true
				}
			}
		}
	}
	for _, p := range proto.Phases {
		if !reach[p] {
			t.Errorf("phase %s is never reached from prepare", p)
		}
		if p != proto.PhaseDone && !legal(p, proto.PhaseDone) {
			t.Errorf("an update in phase %s cannot end", p)
		}
	}

	const unknown = proto.Phase("from_a_newer_agent")
	allowed, refused := 0, 0
	for _, from := range append(slices.Clone(proto.Phases), unknown) {
		for _, to := range proto.Phases {
			var entered []proto.Phase
			u := New(Config{Dir: t.TempDir(), OnPhase: func(_ string, p proto.Phase) { entered = append(entered, p) }})
			u.upd = &update{ID: "u-table", Phase: from}
			u.mu.Lock()
			err := u.transitionLocked(to)
			u.mu.Unlock()
			saved, lerr := u.st.loadUpdate()
			if lerr != nil {
				t.Fatal(lerr)
			}
			if legal(from, to) {
				allowed++
				if err != nil || u.upd.Phase != to || saved == nil || saved.Phase != to || !slices.Equal(entered, []proto.Phase{to}) {
					t.Errorf("%s -> %s, allowed: %v; phase %s, saved %+v, hooks %v", from, to, err, u.upd.Phase, saved, entered)
				}
				continue
			}
			refused++
			if !errors.Is(err, ErrIllegalMove) || !proto.IsReason(err, proto.ReasonInternal) || u.upd.Phase != from ||
				saved != nil || len(entered) != 0 {
				t.Errorf("%s -> %s, illegal: %v; phase %s, saved %+v, hooks %v", from, to, err, u.upd.Phase, saved, entered)
			}
		}
	}
	t.Logf("%d moves allowed, %d refused", allowed, refused)
}

// TestMachineCommit: prepare, activate, the trial boot, a passing health
// check, commit: the new slot is active, and the phases came in order.
func TestMachineCommit(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	im, _ := r.image("1.0.0", randomBytes(10*4096+100))
	id := r.prepare(im)
	reboot, err := r.u.Activate(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	reboot()
	r.reboot()
	u := r.waitFor(proto.PhaseDone)
	st, _ := r.u.Status(ctx)
	if u.Result != proto.ResultCommitted || r.slot != "B" || !st.Slots[1].Active || st.Slots[1].Version != "1.0.0" {
		t.Fatalf("after the update: %+v, booted %s, slots %+v", u, r.slot, st.Slots)
	}
	want := []proto.Phase{proto.PhasePrepare, proto.PhasePrepared, proto.PhaseActivate, proto.PhaseTrial, proto.PhaseCommit, proto.PhaseDone}
	if got := r.seen(); !slices.Equal(got, want) {
		t.Fatalf("phases %v, want %v", got, want)
	}
}

// TestMachineRollback: a health check that fails rolls back and reboots;
// the next boot, on the old slot, records rolled_back with the reason.
func TestMachineRollback(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	im, _ := r.image("1.0.0", randomBytes(3*4096))
	id := r.prepare(im)
	r.checks = []string{"echo sick >&2; exit 3"}
	reboot, err := r.u.Activate(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	reboot()
	r.reboot() // into the trial, which fails and asks for the reboot back
	r.reboot()
	u := r.waitFor(proto.PhaseDone)
	if u.Result != proto.ResultRolledBack || u.FailedPhase != proto.PhaseTrial || !strings.Contains(u.Reason, "sick") || r.slot != "A" {
		t.Fatalf("after the failed check: %+v, booted %s", u, r.slot)
	}
	want := []proto.Phase{proto.PhasePrepare, proto.PhasePrepared, proto.PhaseActivate, proto.PhaseTrial, proto.PhaseRollback, proto.PhaseDone}
	if got := r.seen(); !slices.Equal(got, want) {
		t.Fatalf("phases %v, want %v", got, want)
	}
}

// TestMachineRestarts: the agent restarting within a boot resumes each
// phase (activate -> activate: the reboot not done yet; trial -> trial:
// the health check again), and a power cut during a trial or a commit
// comes back on the old slot, rolled back. A health check's children die
// with it: Stop does not wait for them.
func TestMachineRestarts(t *testing.T) {
	ctx := context.Background()
	t.Run("activate and trial resumed", func(t *testing.T) {
		r := newRig(t)
		im, _ := r.image("1.0.0", randomBytes(3*4096))
		id := r.prepare(im)
		if _, err := r.u.Activate(ctx, id, 0); err != nil { // its reboot never comes
			t.Fatal(err)
		}
		r.restart() // activate -> activate, and the reboot asked again
		r.checks = []string{"sleep 600; true"}
		r.reboot()
		r.waitFor(proto.PhaseTrial)
		r.checks = nil
		r.restart() // trial -> trial, the check again, which passes now
		if u := r.waitFor(proto.PhaseDone); u.Result != proto.ResultCommitted {
			t.Fatalf("after the restarts: %+v", u)
		}
		want := []proto.Phase{proto.PhasePrepare, proto.PhasePrepared, proto.PhaseActivate, proto.PhaseActivate,
			proto.PhaseTrial, proto.PhaseTrial, proto.PhaseCommit, proto.PhaseDone}
		if got := r.seen(); !slices.Equal(got, want) {
			t.Fatalf("phases %v, want %v", got, want)
		}
	})
	t.Run("cut before the boot loader took the trial", func(t *testing.T) {
		r := newRig(t)
		im, _ := r.image("1.0.0", randomBytes(3*4096))
		id := r.prepare(im)
		r.u.mu.Lock() // a cut right after activate was saved, before SetTrial
		r.u.transitionLocked(proto.PhaseActivate)
		r.u.mu.Unlock()
		r.restart()
		if u := r.waitFor(proto.PhasePrepared); u.ID != id {
			t.Fatalf("after the cut: %+v", u)
		}
		if _, err := r.u.Activate(ctx, id, 0); err != nil {
			t.Fatalf("activating again: %v", err)
		}
	})
	for _, cut := range []proto.Phase{proto.PhaseTrial, proto.PhaseCommit} {
		t.Run("power cut in "+string(cut), func(t *testing.T) {
			r := newRig(t)
			im, _ := r.image("1.0.0", randomBytes(3*4096))
			id := r.prepare(im)
			r.holdInTrial(id)
			if cut == proto.PhaseCommit { // the commit saved, the boot loader not told yet
				r.u.mu.Lock()
				r.u.transitionLocked(proto.PhaseCommit)
				r.u.mu.Unlock()
			}
			r.checks = nil
			r.stop()
			r.boot() // the trial was not committed: the boot loader falls back
			u := r.waitFor(proto.PhaseDone)
			if u.Result != proto.ResultRolledBack || u.FailedPhase != cut || r.slot != "A" {
				t.Fatalf("after a cut in %s: %+v, booted %s", cut, u, r.slot)
			}
		})
	}
	t.Run("commit and rollback resumed", func(t *testing.T) {
		r := newRig(t)
		im, _ := r.image("1.0.0", randomBytes(3*4096))
		id := r.prepare(im)
		r.holdInTrial(id)
		r.u.mu.Lock()
		r.u.transitionLocked(proto.PhaseCommit)
		r.u.mu.Unlock()
		r.restart() // commit -> commit: the boot loader told now
		if u := r.waitFor(proto.PhaseDone); u.Result != proto.ResultCommitted {
			t.Fatalf("commit resumed: %+v", u)
		}

		im2, _ := r.image("2.0.0", randomBytes(3*4096))
		id = r.prepare(im2)
		r.holdInTrial(id)
		r.u.mu.Lock() // a rollback saved, and a cut before its reboot
		r.u.rollbackLocked(ctx, "test: rolled back by hand")
		r.u.mu.Unlock()
		<-r.rebooted
		r.checks = nil
		r.restart() // rollback -> rollback, and the reboot asked again
		r.reboot()
		u := r.waitFor(proto.PhaseDone)
		if u.Result != proto.ResultRolledBack || u.Reason != "test: rolled back by hand" || r.slot != "B" {
			t.Fatalf("rollback resumed: %+v, booted %s", u, r.slot)
		}
	})
}

// TestAbort: an update ends by ota.abort before its activation, from
// prepare and from prepared; after it, too late.
func TestAbort(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	im, _ := r.image("1.0.0", randomBytes(3*4096))
	plan, err := r.u.Begin(ctx, paramsOf(im), FetchLimits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.u.Abort(ctx, plan.ID); err != nil {
		t.Fatalf("abort in prepare: %v", err)
	}
	if u := r.waitFor(proto.PhaseDone); u.Result != proto.ResultAborted || u.FailedPhase != "" {
		t.Fatalf("aborted in prepare: %+v", u)
	}
	id := r.prepare(im)
	if id == plan.ID {
		t.Fatal("an aborted update was resumed")
	}
	if err := r.u.Abort(ctx, id); err != nil {
		t.Fatalf("abort in prepared: %v", err)
	}
	if _, err := r.u.Activate(ctx, id, 0); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("activating an aborted update: %v", err)
	}
	id = r.prepare(im)
	r.holdInTrial(id)
	if err := r.u.Abort(ctx, id); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("abort in trial: %v, want busy", err)
	}
	if err := r.u.Abort(ctx, "u-nosuch"); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Fatalf("abort of no such update: %v", err)
	}
}
