package ota

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// TestImageLargerThanSlot: a signed image that claims 600 GiB is refused
// at plan and at start (incompatible, with both sizes), before anything
// is written.
func TestImageLargerThanSlot(t *testing.T) {
	r := newRig(t)
	const claim = 600 << 30
	path, err := r.u.cfg.Boot.SlotPath("B")
	if err != nil {
		t.Fatal(err)
	}
	c, err := slotCapacity(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.bytes >= claim {
		t.Skipf("the test directory's file system has %d bytes free: a sim slot there could hold the claim", c.bytes)
	}
	m := image.Manifest{Format: image.Format, Models: []string{"sim"}, Version: "9.0.0", PayloadSize: claim,
		PayloadSHA256: strings.Repeat("ab", 32), ChunkSize: image.MaxChunkSize, Created: time.Now().UTC(), KeyID: image.KeyID(r.pub)}
	for range claim / image.MaxChunkSize {
		m.Chunks = append(m.Chunks, strings.Repeat("cd", 32))
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	p := proto.OTAImageParams{Manifest: raw, Signature: ed25519.Sign(r.key, raw)}
	ctx := context.Background()
	_, perr := r.u.Plan(ctx, p, nil)
	_, serr := r.u.Begin(ctx, p, FetchLimits{}, nil)
	// Both sizes, the slot's as it is at the time of the check.
	sizes := regexp.MustCompile(fmt.Sprintf(`payload_size is %d bytes, more than slot B holds \(\d+ bytes`, int64(claim)))
	for _, err := range []error{perr, serr} {
		if !proto.IsReason(err, proto.ReasonIncompatible) || !sizes.MatchString(err.Error()) {
			t.Fatalf("a 600 GiB image: %v, want incompatible naming payload_size and both sizes", err)
		}
	}
	t.Logf("refused: %v", serr)
	if st, _ := r.u.Status(ctx); st.Update != nil {
		t.Fatalf("a refused image began an update: %+v", st.Update)
	}
}

// ctxKey marks the contexts of a test's requests.
type ctxKey struct{}

// callerBoot is a sim board's boot control that records the boot-loader
// calls made without the caller's context.
type callerBoot struct {
	*sim.BootControl
	lost []string
}

func (b *callerBoot) check(call string, ctx context.Context) {
	if ctx.Value(ctxKey{}) == nil {
		b.lost = append(b.lost, call)
	}
}

func (b *callerBoot) State(ctx context.Context) (board.BootState, error) {
	b.check("State", ctx)
	return b.BootControl.State(ctx)
}

func (b *callerBoot) SetTrial(ctx context.Context, slot string) error {
	b.check("SetTrial", ctx)
	return b.BootControl.SetTrial(ctx, slot)
}

func (b *callerBoot) Rollback(ctx context.Context) error {
	b.check("Rollback", ctx)
	return b.BootControl.Rollback(ctx)
}

func (b *callerBoot) Commit(ctx context.Context) error {
	b.check("Commit", ctx)
	return b.BootControl.Commit(ctx)
}

// TestBootCallsTakeTheCallersContext: the boot-loader calls a request
// makes (plan, start, activate, abort, and a start that resumes or ends an
// update) carry the request's context, not context.Background().
func TestBootCallsTakeTheCallersContext(t *testing.T) {
	r := newRig(t)
	r.stop()
	ctx := context.WithValue(context.Background(), ctxKey{}, true)
	bc, err := sim.NewBootControl(r.dir, "A")
	if err != nil {
		t.Fatal(err)
	}
	boot := &callerBoot{BootControl: bc}
	start := func() *Updater {
		u := New(Config{Dir: filepath.Join(r.dir, "ota"), Boot: boot, Model: "sim", BootID: "boot-1",
			Keys: []ed25519.PublicKey{r.pub}, Reboot: func() {}})
		if err := u.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Stop(ctx) })
		return u
	}
	u := start()
	im, _ := r.image("1.0.0", randomBytes(2*4096))
	if _, err := u.Plan(ctx, paramsOf(im), nil); err != nil {
		t.Fatal(err)
	}
	plan, err := u.Begin(ctx, paramsOf(im), FetchLimits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Abort(ctx, plan.ID); err != nil {
		t.Fatal(err)
	}
	if plan, err = u.Begin(ctx, paramsOf(im), FetchLimits{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := u.Receive(ctx, plan.ID, chunkStream(t, im, plan.Need)); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Activate(ctx, plan.ID, 0); err != nil {
		t.Fatal(err)
	}
	// The agent restarts before its reboot, the trial set: it resumes.
	// Then again with the update's manifest gone: it ends the update and
	// cancels the trial.
	if err := u.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	u = start()
	if st, err := u.Status(ctx); err != nil || st.Update.Phase != proto.PhaseActivate {
		t.Fatalf("after the restart: %+v %v", st.Update, err)
	}
	if err := u.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(u.st.path(manifestFile)); err != nil {
		t.Fatal(err)
	}
	u = start()
	if st, err := u.Status(ctx); err != nil || st.Update.Result != proto.ResultFailed || st.Slots[1].Trial {
		t.Fatalf("after the restart without a manifest: %+v %+v %v", st.Update, st.Slots, err)
	}
	if len(boot.lost) > 0 {
		t.Fatalf("boot-loader calls without the caller's context: %v", boot.lost)
	}
}
