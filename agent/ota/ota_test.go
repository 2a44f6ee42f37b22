package ota_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// machine is an Updater on a sim board's boot control in a temp dir, in
// process: the parts of the machine that need no reboot.
type machine struct {
	u       *ota.Updater
	dir     string
	key     ed25519.PrivateKey
	reboots atomic.Int32
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	boot, err := sim.NewBootControl(dir, "A")
	if err != nil {
		t.Fatal(err)
	}
	pub, key, _ := ed25519.GenerateKey(nil)
	m := &machine{dir: dir, key: key}
	m.u = ota.New(ota.Config{Dir: filepath.Join(dir, "ota"), Boot: boot, Model: "sim", BootID: "boot-1",
		Keys: []ed25519.PublicKey{pub}, Reboot: func() { m.reboots.Add(1) }})
	if err := m.u.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.u.Stop(context.Background()) })
	return m
}

// image builds a signed image of payload in memory.
func (m *machine) image(t *testing.T, version string, payload []byte, key ed25519.PrivateKey) *image.Image {
	t.Helper()
	if key == nil {
		key = m.key
	}
	im, err := image.BuildBytes(payload, image.BuildOptions{Key: key, Models: []string{"sim"}, Version: version, ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func params(im *image.Image) proto.OTAImageParams {
	return proto.OTAImageParams{Manifest: im.RawManifest, Signature: im.Signature}
}

// chunks is the stream a client sends: index, then bytes, per chunk.
func chunks(t *testing.T, im *image.Image, idx []int, corrupt int) *bytes.Reader {
	t.Helper()
	var b bytes.Buffer
	for _, i := range idx {
		_, n := im.Manifest.ChunkRange(i)
		data := make([]byte, n)
		if _, err := im.Chunk(i).ReadAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if i == corrupt {
			data[0] ^= 1
		}
		binary.Write(&b, binary.BigEndian, uint32(i))
		b.Write(data)
	}
	return bytes.NewReader(b.Bytes())
}

func waitPhase(t *testing.T, u *ota.Updater, phase proto.Phase) proto.OTAStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var since int64
	for {
		st, err := u.Wait(ctx, since)
		if err != nil || ctx.Err() != nil {
			t.Fatalf("waiting for %s: %+v %v", phase, st.Update, err)
		}
		if st.Update != nil && st.Update.Phase == phase {
			return st
		}
		since = st.Seq
	}
}

func payload(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

func TestPrepareResumeAbort(t *testing.T) {
	m := newMachine(t)
	ctx := context.Background()
	im := m.image(t, "1.0.0", payload(10*4096+100), nil)

	plan, err := m.u.Plan(ctx, params(im), nil)
	if err != nil || plan.ID != "" || plan.Slot != "B" || len(plan.Need) != 11 {
		t.Fatalf("plan %+v %v", plan, err)
	}
	if st, _ := m.u.Status(ctx); st.Update != nil {
		t.Fatalf("Plan changed the state: %+v", st.Update)
	}
	plan, err = m.u.Begin(ctx, params(im), ota.FetchLimits{}, nil)
	if err != nil || plan.ID == "" {
		t.Fatalf("begin %+v %v", plan, err)
	}
	// A corrupt chunk stops the stream; the chunks before it are kept.
	err = m.u.Receive(ctx, plan.ID, chunks(t, im, []int{0, 1, 2, 3}, 2))
	if !proto.IsReason(err, proto.ReasonChecksumMismatch) {
		t.Fatalf("receive of a corrupt chunk: %v", err)
	}
	if err := m.u.Receive(ctx, plan.ID, bytes.NewReader([]byte{0, 0, 0, 99})); !proto.IsReason(err, proto.ReasonInvalidParams) {
		t.Fatalf("receive of a chunk index out of range: %v", err)
	}
	// Another image while this one prepares: busy. The same image: the same update, resumed.
	if _, err := m.u.Begin(ctx, params(m.image(t, "1.0.1", payload(4096), nil)), ota.FetchLimits{}, nil); !proto.IsReason(err, proto.ReasonBusy) {
		t.Fatalf("a second update: %v, want busy", err)
	}
	again, err := m.u.Begin(ctx, params(im), ota.FetchLimits{}, nil)
	if err != nil || again.ID != plan.ID || again.Have != 2 || len(again.Need) != 9 {
		t.Fatalf("resumed plan %+v %v, want %s with 2 chunks held", again, err, plan.ID)
	}
	if err := m.u.Receive(ctx, plan.ID, chunks(t, im, again.Need, -1)); err != nil {
		t.Fatal(err)
	}
	st := waitPhase(t, m.u, proto.PhasePrepared)
	if st.Update.ChunksDone != 11 || st.Update.BytesLink != int64(10*4096+100) {
		t.Fatalf("prepared %+v", st.Update)
	}
	slot, err := os.ReadFile(filepath.Join(m.dir, "slots", "B.img"))
	if err != nil || !bytes.Equal(slot, mustRead(t, im)) {
		t.Fatalf("slot B does not hold the payload (%v)", err)
	}
	if err := m.u.Abort(ctx, plan.ID); err != nil {
		t.Fatal(err)
	}
	st, _ = m.u.Status(ctx)
	if st.Update.Result != proto.ResultAborted || m.reboots.Load() != 0 {
		t.Fatalf("after abort: %+v, %d reboots", st.Update, m.reboots.Load())
	}
	if _, err := m.u.Activate(ctx, plan.ID, 0); err == nil {
		t.Fatal("an aborted update was activated")
	}
}

func mustRead(t *testing.T, im *image.Image) []byte {
	data := make([]byte, im.Manifest.PayloadSize)
	if _, err := im.Payload().ReadAt(data, 0); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestRefusals(t *testing.T) {
	m := newMachine(t)
	ctx := context.Background()
	_, other, _ := ed25519.GenerateKey(nil)
	good := m.image(t, "1.0.0", payload(5000), nil)
	for _, tc := range []struct {
		name   string
		p      proto.OTAImageParams
		reason proto.Reason
	}{
		{"untrusted key", params(m.image(t, "1.0.0", payload(5000), other)), proto.ReasonSignatureInvalid},
		{"altered manifest", proto.OTAImageParams{Manifest: bytes.Replace(good.RawManifest, []byte("1.0.0"), []byte("1.0.1"), 1),
			Signature: good.Signature}, proto.ReasonSignatureInvalid},
		{"not a manifest", proto.OTAImageParams{Manifest: []byte("{}"), Signature: good.Signature}, proto.ReasonInvalidParams},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.u.Begin(ctx, tc.p, ota.FetchLimits{}, nil)
			if !proto.IsReason(err, tc.reason) {
				t.Fatalf("%v, want %s", err, tc.reason)
			}
			if _, err := os.Stat(filepath.Join(m.dir, "bootenv.json")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("a refused image touched the boot environment")
			}
		})
	}
}
