package ota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/proto"
)

// The case: a 16 MiB slot in 64 KiB chunks, flashed without the
// agent, and an image that differs from it by 40 bytes in chunk 17.
const (
	factoryChunk = 64 << 10
	factorySize  = 16 << 20
	changed      = 17
)

// handWrite writes slot as the factory or a person would: behind the
// agent's back.
func (r *rig) handWrite(slot string, data []byte) string {
	r.t.Helper()
	path := filepath.Join(r.dir, "slots", slot+".img")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		r.t.Fatal(err)
	}
	return path
}

// imageOf builds a signed image of payload in chunks of chunkSize.
func (r *rig) imageOf(version string, payload []byte, chunkSize int64) *image.Image {
	r.t.Helper()
	var buf bytes.Buffer
	if _, err := image.Build(&buf, bytes.NewReader(payload), int64(len(payload)),
		image.BuildOptions{Key: r.key, Models: []string{"sim"}, Version: version, ChunkSize: chunkSize}); err != nil {
		r.t.Fatal(err)
	}
	im, err := image.Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		r.t.Fatal(err)
	}
	return im
}

// edit returns a copy of p with n bytes changed in chunk i.
func edit(p []byte, chunkSize int64, i, n int) []byte {
	q := bytes.Clone(p)
	at := int64(i)*chunkSize + 100
	for k := range int64(n) {
		q[at+k] ^= 0x5a
	}
	return q
}

// progressLog records what Plan and Begin report.
type progressLog struct {
	mu    sync.Mutex
	steps []string
	last  map[string][2]int64 // by phase: bytes, total
}

func (l *progressLog) report(phase string, bytes, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.steps) == 0 || l.steps[len(l.steps)-1] != phase {
		l.steps = append(l.steps, phase)
	}
	if l.last == nil {
		l.last = map[string][2]int64{}
	}
	l.last[phase] = [2]int64{bytes, total}
}

func (l *progressLog) final(phase string) [2]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last[phase]
}

func checkPlan(t *testing.T, what string, plan proto.OTAPlan, copies int, need []int, hashed int64) {
	t.Helper()
	if plan.Copy != copies || !slices.Equal(plan.Need, need) || plan.Have != 0 || plan.Hashed != hashed {
		t.Fatalf("%s: copy %d, need %v, have %d, hashed %d; want copy %d, need %v, hashed %d",
			what, plan.Copy, plan.Need, plan.Have, plan.Hashed, copies, need, hashed)
	}
}

// TestFactorySlotDelta: the first update of a slot the agent did not
// write moves only the chunk that differs. The slot is hashed once: a
// second plan, and a plan after a restart, read nothing.
func TestFactorySlotDelta(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	base := randomBytes(factorySize)
	r.handWrite("A", base)
	payload := edit(base, factoryChunk, changed, 40)
	im := r.imageOf("2.1.0", payload, factoryChunk)
	all := len(im.Manifest.Chunks)

	var pl progressLog
	plan, err := r.u.Plan(ctx, paramsOf(im), pl.report)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the first plan", plan, all-1, []int{changed}, factorySize)
	if got := pl.final(proto.ProgressHash); got != [2]int64{factorySize, factorySize} {
		t.Fatalf("hash progress ended at %v, want the whole slot", got)
	}
	plan, err = r.u.Plan(ctx, paramsOf(im), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the second plan", plan, all-1, []int{changed}, 0)
	r.restart()
	plan, err = r.u.Plan(ctx, paramsOf(im), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "a plan after a restart", plan, all-1, []int{changed}, 0)

	var bl progressLog
	plan, err = r.u.Begin(ctx, paramsOf(im), FetchLimits{}, bl.report)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the start", plan, all-1, []int{changed}, 0)
	if got, want := bl.final(proto.ProgressCopy), int64(all-1)*factoryChunk; got != [2]int64{want, want} {
		t.Fatalf("copy progress ended at %v, want %d bytes", got, want)
	}
	if err := r.u.Receive(ctx, plan.ID, chunkStream(t, im, plan.Need)); err != nil {
		t.Fatal(err)
	}
	upd := r.waitFor(proto.PhasePrepared)
	if upd.BytesLink != factoryChunk || upd.ChunksCopied != all-1 {
		t.Fatalf("prepared with %d bytes over the link and %d chunks copied; want %d and %d",
			upd.BytesLink, upd.ChunksCopied, factoryChunk, all-1)
	}
	if got, err := os.ReadFile(filepath.Join(r.dir, "slots", "B.img")); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("slot B does not hold the image (%v)", err)
	}
}

// TestChangedSlotIsHashedAgain: a slot changed by hand after it was
// hashed has another stamp: it is read again, and the plan tells the
// truth.
func TestChangedSlotIsHashedAgain(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	base := randomBytes(factorySize)
	r.handWrite("A", base)
	im := r.imageOf("2.1.0", edit(base, factoryChunk, changed, 40), factoryChunk)
	all := len(im.Manifest.Chunks)
	if _, err := r.u.Plan(ctx, paramsOf(im), nil); err != nil {
		t.Fatal(err)
	}
	r.handWrite("A", edit(base, factoryChunk, 3, 1))
	plan, err := r.u.Plan(ctx, paramsOf(im), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the plan after the change", plan, all-2, []int{3, changed}, factorySize)
}

// TestStaleHashesAreVerified: a slot that changed while its stamp stayed
// (a block device rewritten in place) is planned from stale hashes, but
// ota.start verifies every chunk it copies: the one that changed moves
// from copy to need, crosses the link, and the slot is right.
func TestStaleHashesAreVerified(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	base := randomBytes(factorySize)
	path := r.handWrite("A", base)
	payload := edit(base, factoryChunk, changed, 40)
	im := r.imageOf("2.1.0", payload, factoryChunk)
	all := len(im.Manifest.Chunks)
	if _, err := r.u.Plan(ctx, paramsOf(im), nil); err != nil {
		t.Fatal(err)
	}
	r.handWrite("A", edit(base, factoryChunk, 5, 1))
	r.u.mu.Lock()
	h := r.u.hashes["A"]
	stamp, err := stampSlot(path, h.Stamp.Writes)
	if err != nil {
		t.Fatal(err)
	}
	h.Stamp = stamp // the change goes unseen, as on a block device
	r.u.hashes["A"] = h
	r.u.mu.Unlock()

	plan, err := r.u.Plan(ctx, paramsOf(im), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the plan from stale hashes", plan, all-1, []int{changed}, 0)
	plan, err = r.u.Begin(ctx, paramsOf(im), FetchLimits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the start", plan, all-2, []int{5, changed}, 0)
	if plan.NeedBytes != 2*factoryChunk {
		t.Fatalf("need_bytes %d, want two chunks", plan.NeedBytes)
	}
	if err := r.u.Receive(ctx, plan.ID, chunkStream(t, im, plan.Need)); err != nil {
		t.Fatal(err)
	}
	upd := r.waitFor(proto.PhasePrepared)
	if upd.ChunksCopied != all-2 || upd.BytesLink != 2*factoryChunk {
		t.Fatalf("prepared: %+v", upd)
	}
	if got, err := os.ReadFile(filepath.Join(r.dir, "slots", "B.img")); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("slot B does not hold the image (%v)", err)
	}
}

// TestAgentWritesInvalidateHashes: hashes kept of a slot are not used once
// the agent has written the slot, even where the slot's own stamp would
// not show it (a block device): the count of the agent's writes is in the
// stamp, and it survives the record the finished write leaves.
func TestAgentWritesInvalidateHashes(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	const size, big, small = 1 << 20, 16 << 10, 4 << 10
	base := randomBytes(size)
	path := r.handWrite("A", base)
	r.handWrite("B", base) // both slots flashed in the factory
	v1 := r.imageOf("1.0.0", edit(base, big, 3, 40), big)
	if plan, err := r.u.Plan(ctx, paramsOf(v1), nil); err != nil || plan.Hashed != size {
		t.Fatalf("plan %+v %v", plan, err)
	}
	// v1 into B, committed; then v2 (smaller chunks) into A, committed.
	r.commit(v1)
	v2 := r.imageOf("2.0.0", edit(base, small, 7, 40), small)
	r.commit(v2)
	if r.slot != "A" || r.u.slots["A"].Writes != 1 || r.u.slots["B"].Writes != 1 {
		t.Fatalf("booted %s, slots %+v", r.slot, r.u.slots)
	}
	kept, err := r.u.st.loadHashes()
	if err != nil {
		t.Fatal(err)
	}
	stale, ok := kept["A"]
	if !ok || stale.Stamp.Writes != 0 {
		t.Fatalf("the hashes kept of A from before the agent wrote it: %+v (%v)", stale.hashRead, ok)
	}
	// A's record is in small chunks: a plan in big ones reads the slot,
	// unless the hashes kept of it answer. Give the stale ones A's stamp
	// of now but for the count of writes, as a block device would have.
	v3 := r.imageOf("3.0.0", edit(base, big, 9, 40), big)
	now, err := stampSlot(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	stale.Stamp = now
	r.u.mu.Lock()
	r.u.hashes["A"] = stale
	r.u.mu.Unlock()
	if plan, err := r.u.Plan(ctx, paramsOf(v3), nil); err != nil || plan.Hashed != size {
		t.Fatalf("a plan from A after the agent wrote it: %+v %v; want A read again", plan, err)
	}
	if plan, err := r.u.Plan(ctx, paramsOf(v3), nil); err != nil || plan.Hashed != 0 || !slices.Equal(plan.Need, []int{9}) {
		t.Fatalf("the plan after: %+v %v; want it from the hashes just kept", plan, err)
	}
}

// commit runs a whole update to im: prepare, the trial boot, commit.
func (r *rig) commit(im *image.Image) {
	r.t.Helper()
	id := r.prepare(im)
	reboot, err := r.u.Activate(context.Background(), id, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	reboot()
	r.reboot()
	if u := r.waitFor(proto.PhaseDone); u.Result != proto.ResultCommitted {
		r.t.Fatalf("update %s: %+v", id, u)
	}
}

// TestUnusableHashesAreReadAgain: kept hashes that cannot be read (a
// format from another version, a torn file) cost a read of the slot, and
// never stop the agent.
func TestUnusableHashesAreReadAgain(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	base := randomBytes(1 << 20)
	r.handWrite("A", base)
	im := r.imageOf("1.0.0", edit(base, 16<<10, 2, 40), 16<<10)
	for _, tc := range []struct {
		name  string
		write func(path string) error
	}{
		{"another format", func(path string) error { return atomicfile.WriteJSON(path, hashesFormat+1, map[string]any{}) }},
		{"torn", func(path string) error { return os.WriteFile(path, []byte(`{"format":1,"data":{"A":{"stamp"`), 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.write(r.u.st.path(hashesFile)); err != nil {
				t.Fatal(err)
			}
			r.restart()
			if plan, err := r.u.Plan(ctx, paramsOf(im), nil); err != nil || plan.Hashed != 1<<20 || !slices.Equal(plan.Need, []int{2}) {
				t.Fatalf("plan %+v %v", plan, err)
			}
			if _, err := r.u.st.loadHashes(); err != nil {
				t.Fatalf("the hashes kept after the read: %v", err)
			}
		})
	}
}

// stopAt is where the hashing tests interrupt a read of 1 MiB in 16 KiB
// chunks: after its 4th chunk.
const (
	stopSize  = 1 << 20
	stopChunk = 16 << 10
	stopAt    = 4
)

// atHashed calls then, from the read of a slot, once it has hashed its
// n-th chunk, and gives that read on the channel it returns.
func (r *rig) atHashed(n int, then func()) <-chan *hashJob {
	jobs := make(chan *hashJob, 1)
	r.u.hashHook = func(k int) {
		if k == n {
			r.u.mu.Lock()
			jobs <- r.u.hashing
			r.u.mu.Unlock()
			then()
		}
	}
	return jobs
}

// TestHashingStopsWithItsRequest: a plan given up while the board hashes
// its active slot (the client's Ctrl-C, a dropped link) ends the read
// within 1 MiB of reading, and the next plan reads only what was left.
func TestHashingStopsWithItsRequest(t *testing.T) {
	r := newRig(t)
	base := randomBytes(stopSize)
	r.handWrite("A", base)
	im := r.imageOf("1.0.0", edit(base, stopChunk, 9, 40), stopChunk)
	all := len(im.Manifest.Chunks)

	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	jobs := r.atHashed(stopAt, func() {
		cancel()
		<-returned // the read goes on only once the plan gave it up
	})
	_, err := r.u.Plan(ctx, paramsOf(im), nil)
	close(returned)
	if proto.ReasonOf(err) != proto.ReasonCanceled {
		t.Fatalf("the plan given up: %v, want canceled", err)
	}
	job := <-jobs
	<-job.done
	if len(job.got.Chunks) != stopAt || job.bytes.Load() != stopAt*stopChunk || !errors.Is(job.err, errNoWaiter) {
		t.Fatalf("the read went on to %d chunks, %d bytes (%v); want it stopped after %d chunks",
			len(job.got.Chunks), job.bytes.Load(), job.err, stopAt)
	}
	r.u.hashHook = nil
	if _, err := os.Stat(r.u.st.path(hashesFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("hashes of a read cut short were kept on disk (%v)", err)
	}
	plan, err := r.u.Plan(context.Background(), paramsOf(im), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "the next plan", plan, all-1, []int{9}, stopSize-stopAt*stopChunk)
}

// TestAbortStopsHashing: an update aborted while its start reads the
// active slot again (the hashes kept of it were lost) ends the read, and
// the start answers that it was cancelled.
func TestAbortStopsHashing(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	base := randomBytes(stopSize)
	r.handWrite("A", base)
	im := r.imageOf("1.0.0", edit(base, stopChunk, 9, 40), stopChunk)
	plan, err := r.u.Begin(ctx, paramsOf(im), FetchLimits{}, nil)
	if err != nil || plan.Hashed != stopSize {
		t.Fatalf("start: %+v %v", plan, err)
	}
	r.u.mu.Lock()
	clear(r.u.hashes)
	r.u.mu.Unlock()

	jobs := r.atHashed(stopAt, func() {
		if err := r.u.Abort(ctx, plan.ID); err != nil {
			t.Error(err)
		}
	})
	_, err = r.u.Begin(ctx, paramsOf(im), FetchLimits{}, nil)
	if proto.ReasonOf(err) != proto.ReasonCanceled {
		t.Fatalf("the start resumed and aborted: %v, want canceled", err)
	}
	job := <-jobs
	<-job.done
	if len(job.got.Chunks) != stopAt || !errors.Is(job.err, context.Canceled) {
		t.Fatalf("the read went on to %d chunks (%v); want it stopped after %d", len(job.got.Chunks), job.err, stopAt)
	}
	if u := r.waitFor(proto.PhaseDone); u.Result != proto.ResultAborted {
		t.Fatalf("update %+v, want aborted", u)
	}
}

// BenchmarkHashSlot measures the read and hash of a 64 MiB slot (in the
// page cache: the CPU's share) at two chunk sizes.
func BenchmarkHashSlot(b *testing.B) {
	const size = 64 << 20
	path := filepath.Join(b.TempDir(), "A.img")
	if err := os.WriteFile(path, randomBytes(size), 0o644); err != nil {
		b.Fatal(err)
	}
	u := New(Config{})
	for _, chunk := range []int64{64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("chunk=%dKiB", chunk>>10), func(b *testing.B) {
			want := hashRead{ChunkSize: chunk, Length: size}
			b.SetBytes(size)
			for b.Loop() {
				var done atomic.Int64
				if _, err := u.hashSlot(context.Background(), "A", path, slotHashes{hashRead: want}, &done); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
