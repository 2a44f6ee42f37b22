package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// DefaultHealthTimeout bounds the health checks of a trial boot when
// Config.HealthTimeout does not.
const DefaultHealthTimeout = 60 * time.Second

// Config configures an Updater.
type Config struct {
	// Dir keeps the machine's state (created on Start).
	Dir string
	// Boot is the board's A/B boot loader.
	Boot board.BootControl
	// Model is the board's model: an image must name it.
	Model string
	// BootID identifies the running boot.
	BootID string
	// Keys are the public keys trusted to sign images; none: every image
	// is refused.
	Keys []ed25519.PublicKey
	// HealthChecks are shell commands run after a trial boot, in order,
	// with BOARDLINK_SLOT and BOARDLINK_VERSION set; all must exit 0
	// within HealthTimeout (0: DefaultHealthTimeout) for the update to
	// commit.
	HealthChecks  []string
	HealthTimeout time.Duration
	// Reboot restarts the board; it must not return before the agent is
	// stopping. Nil: updates can be prepared but not activated.
	Reboot func()
	// OnPhase, if set, is called (with the machine's lock held: it must
	// not call back) each time an update enters a phase: for metrics and
	// for tests that count boards by phase on the board's side.
	OnPhase func(id string, phase proto.Phase)
	Logger  *slog.Logger
}

// FetchLimits bound how an update fetches its chunks from a URL (the
// agent's MaxDownload and DownloadDeadline). Zero fields: no bound.
type FetchLimits struct {
	// MaxBytes bounds the bytes read from the URL: an update that needs
	// more is refused at ota.start.
	MaxBytes int64
	// Deadline bounds one run of the fetch, from its first request to its
	// last byte, retries included; the update halts when it passes.
	Deadline time.Duration
}

// Updater runs one update at a time. Its methods are safe for concurrent
// use.
type Updater struct {
	cfg  Config
	st   store
	log  *slog.Logger
	ctx  context.Context // the machine's own work: ended by Stop
	stop context.CancelFunc
	work sync.WaitGroup

	mu       sync.Mutex
	upd      *update // nil: no update ever
	man      image.Manifest
	slots    map[string]slotMeta
	hashes   map[string]slotHashes // by slot: slots the agent read, not wrote
	hashing  *hashJob              // the read of a slot under way
	partial  *slotHashes           // the chunks an interrupted read hashed
	hashHook func(chunks int)      // tests only: called after each chunk hashed
	target   *os.File              // the slot being written, while preparing
	dirty    int                   // chunks marked done since the state was last saved
	seq      int64
	changed  chan struct{} // closed and replaced on every change
	received bool          // a stream is being received
	filling  bool          // copying from the active slot or fetching from the URL
	copying  *copyRun      // the last copy from the active slot

	crash crashHook // test builds only: see crash.go
}

// New returns an Updater; it touches nothing until Start.
func New(cfg Config) *Updater {
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = DefaultHealthTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Updater{cfg: cfg, st: store{cfg.Dir}, log: cfg.Logger, changed: make(chan struct{})}
}

// Start loads the persisted state and carries on from it: a prepare
// resumes its copying, a trial boot runs its health check, a finished
// commit or rollback is recorded.
func (u *Updater) Start(ctx context.Context) error {
	if err := os.MkdirAll(u.cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	slots, err := u.st.loadSlots()
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	upd, err := u.st.loadUpdate()
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	hashes, err := u.st.loadHashes()
	if err != nil {
		// Only a cache: the slot is read again when it is needed.
		u.log.Warn("ota: the kept slot hashes cannot be used", "err", err)
		hashes = map[string]slotHashes{}
	}
	u.ctx, u.stop = context.WithCancel(context.Background())
	u.loadCrashPoint()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.slots, u.upd, u.hashes = slots, upd, hashes
	u.touchLocked()
	if upd == nil || upd.Phase == proto.PhaseDone {
		return nil
	}
	raw, sig, err := u.st.loadImage()
	if err == nil {
		u.man, err = u.verify(raw, sig)
	}
	if err != nil {
		// The manifest that started this update is gone or no longer
		// trusted: nothing can be checked against it.
		return u.finishLocked(ctx, proto.ResultFailed, fmt.Sprintf("the update's manifest: %v", err))
	}
	return u.resumeLocked(ctx)
}

// Stop ends the machine's background work (copying, a health check) and
// waits for it. State is persisted as it goes; nothing is lost.
func (u *Updater) Stop(ctx context.Context) error {
	if u.stop == nil {
		return nil
	}
	u.stop()
	done := make(chan struct{})
	go func() { u.work.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closeTargetLocked()
	return nil
}

// touchLocked records a change: waiters wake and Seq grows. Seq is a time,
// so it keeps growing across restarts.
func (u *Updater) touchLocked() {
	u.seq = max(u.seq+1, time.Now().UnixNano())
	close(u.changed)
	u.changed = make(chan struct{})
}

func (u *Updater) saveLocked() error {
	u.upd.Updated = time.Now().UTC()
	u.dirty = 0
	u.touchLocked()
	if err := u.st.saveUpdate(u.upd); err != nil {
		return proto.WithCause(proto.Errorf(proto.ReasonInternal, "ota: saving state: %v", err), err)
	}
	u.crashPoint()
	return nil
}

func (u *Updater) closeTargetLocked() {
	if u.target != nil {
		u.target.Close()
		u.target = nil
	}
}

// verify checks a manifest and its signature against the trusted keys.
func (u *Updater) verify(raw, sig []byte) (image.Manifest, error) {
	m, err := image.VerifyManifest(raw, sig, u.cfg.Keys)
	switch {
	case errors.Is(err, image.ErrSignature):
		return m, proto.WithCause(proto.Errorf(proto.ReasonSignatureInvalid, "image: %v", err), err)
	case err != nil:
		return m, proto.WithCause(proto.InvalidField("manifest", "manifest", "%v", err), err)
	}
	return m, nil
}

// Status tells the truth about slots and the update.
func (u *Updater) Status(ctx context.Context) (proto.OTAStatus, error) {
	bs, err := u.bootState(ctx)
	if err != nil {
		return proto.OTAStatus{}, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.statusLocked(bs), nil
}

func (u *Updater) statusLocked(bs board.BootState) proto.OTAStatus {
	out := proto.OTAStatus{Seq: u.seq}
	for _, name := range u.cfg.Boot.Slots() {
		m := u.slots[name]
		s := proto.OTASlot{Name: name, Booted: bs.Booted == name, Active: bs.Active == name, Trial: bs.Trial == name,
			Writing: m.Writing}
		if !m.Writing {
			s.Version, s.SHA256 = m.Version, m.SHA256
		}
		out.Slots = append(out.Slots, s)
	}
	if v := u.upd; v != nil {
		out.Update = &proto.OTAUpdate{ID: v.ID, Version: v.Version, FromVersion: v.FromVersion, Slot: v.Slot,
			Phase: v.Phase, Result: v.Result, Reason: v.Reason, FailedPhase: v.FailedPhase,
			Chunks: v.Chunks, ChunksDone: v.count(), ChunksCopied: v.Copied, BytesLink: v.BytesLink, BytesURL: v.BytesURL,
			Size: v.Size, Started: v.Started, Updated: v.Updated,
			ElapsedMs: v.Updated.Sub(v.Started).Milliseconds(), Transitions: v.Transitions}
		if v.Phase == proto.PhaseHeld {
			until := v.HoldUntil
			out.Update.HoldUntil = &until
		}
		if v.Phase != proto.PhaseDone {
			out.Update.ElapsedMs = time.Since(v.Started).Milliseconds()
		}
	}
	return out
}

// Wait returns the status once it changed after since, or when ctx ends.
func (u *Updater) Wait(ctx context.Context, since int64) (proto.OTAStatus, error) {
	for {
		u.mu.Lock()
		seq, ch := u.seq, u.changed
		u.mu.Unlock()
		if seq > since {
			return u.Status(ctx)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return u.Status(context.WithoutCancel(ctx))
		}
	}
}

// Plan checks an image against the board and says what an update needs,
// changing nothing. An active slot the agent did not write is read and
// hashed first (reported to progress, which may be nil), once: the hashes
// are kept for the next plan.
func (u *Updater) Plan(ctx context.Context, p proto.OTAImageParams, progress Progress) (proto.OTAPlan, error) {
	bs, m, src, hashed, err := u.source(ctx, p, progress)
	if err != nil {
		return proto.OTAPlan{}, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	plan, err := u.planLocked(bs, m, p.Force, src)
	plan.Hashed = hashed
	return plan, err
}

// source checks the image and finds the chunks the active slot holds
// (sourceIndex), returning the bytes it read for that. The checks that
// refuse an image come first: a refused image costs no read of a slot.
func (u *Updater) source(ctx context.Context, p proto.OTAImageParams, progress Progress) (board.BootState, image.Manifest, map[string]*sourceChunk, int64, error) {
	bs, m, err := u.check(ctx, p)
	if err != nil {
		return bs, m, nil, 0, err
	}
	u.mu.Lock()
	_, _, err = u.admitLocked(bs, m, p.Force)
	u.mu.Unlock()
	if err != nil {
		return bs, m, nil, 0, err
	}
	src, hashed, err := u.sourceIndex(ctx, bs.Active, m, progress)
	return bs, m, src, hashed, err
}

// check reads the boot loader and verifies the image's manifest.
func (u *Updater) check(ctx context.Context, p proto.OTAImageParams) (board.BootState, image.Manifest, error) {
	bs, err := u.bootState(ctx)
	if err != nil {
		return bs, image.Manifest{}, err
	}
	m, err := u.verify(p.Manifest, p.Signature)
	return bs, m, err
}

func (u *Updater) bootState(ctx context.Context) (board.BootState, error) {
	bs, err := u.cfg.Boot.State(ctx)
	if err != nil {
		return bs, proto.Errorf(proto.ReasonInternal, "boot loader: %v", err)
	}
	return bs, nil
}

// admitLocked runs the checks that refuse an image, and returns the frame
// of its plan (no chunk counted) and the update it resumes, if any.
func (u *Updater) admitLocked(bs board.BootState, m image.Manifest, force bool) (proto.OTAPlan, *update, error) {
	if !m.Fits(u.cfg.Model) {
		return proto.OTAPlan{}, nil, proto.Errorf(proto.ReasonIncompatible, "image %s is for %s, not for this board's model %s",
			m.Version, strings.Join(m.Models, ", "), u.cfg.Model)
	}
	if bs.Trying() {
		return proto.OTAPlan{}, nil, proto.Errorf(proto.ReasonBusy, "slot %s is on its trial boot: commit or roll back first", bs.Booted)
	}
	if bs.Booted != bs.Active {
		// A trial rolled back and not rebooted yet: the other slot is the
		// active one, never a target.
		return proto.OTAPlan{}, nil, proto.Errorf(proto.ReasonBusy, "the board runs slot %s but boots %s next: reboot first", bs.Booted, bs.Active)
	}
	cur := u.slots[bs.Booted]
	if !force && cur.Version != "" && !cur.Writing && image.CompareVersions(m.Version, cur.Version) <= 0 {
		what := "a downgrade"
		if image.CompareVersions(m.Version, cur.Version) == 0 {
			what = "a reinstall"
		}
		return proto.OTAPlan{}, nil, proto.Errorf(proto.ReasonIncompatible,
			"image %s would be %s of the running %s: refused unless forced", m.Version, what, cur.Version)
	}
	target := board.Other(bs.Booted)
	if err := u.checkFits(target, m); err != nil {
		return proto.OTAPlan{}, nil, err
	}
	plan := proto.OTAPlan{Slot: target, Version: m.Version, FromVersion: cur.Version, Chunks: len(m.Chunks), Need: []int{}}
	var resume *update
	if v := u.upd; v != nil && v.Phase.Abortable() {
		if v.PayloadSHA != m.PayloadSHA256 || v.Slot != target {
			return proto.OTAPlan{}, nil, proto.Errorf(proto.ReasonBusy, "update %s (%s) is under way: abort it first", v.ID, v.Version)
		}
		resume = v
		plan.ID = v.ID
	} else if v != nil && v.Phase != proto.PhaseDone {
		return proto.OTAPlan{}, nil, proto.Errorf(proto.ReasonBusy, "update %s is in phase %s", v.ID, v.Phase)
	}
	return plan, resume, nil
}

// planLocked is the plan of an image whose chunks the active slot holds as
// src says: each chunk is held by the target slot already, copied from
// the active slot, or needed from outside.
func (u *Updater) planLocked(bs board.BootState, m image.Manifest, force bool, src map[string]*sourceChunk) (proto.OTAPlan, error) {
	plan, resume, err := u.admitLocked(bs, m, force)
	if err != nil {
		return proto.OTAPlan{}, err
	}
	old := u.slots[plan.Slot]
	for i, sum := range m.Chunks {
		_, n := m.ChunkRange(i)
		switch {
		case resume != nil && resume.has(i):
			plan.Have++
		case resume == nil && !old.Writing && old.ChunkSize == m.ChunkSize && i < len(old.Chunks) && old.Chunks[i] == sum &&
			n == chunkLen(old.Size, old.ChunkSize, i):
			plan.Have++
		case src[sum] != nil:
			plan.Copy++
		default:
			plan.Need = append(plan.Need, i)
			plan.NeedBytes += n
		}
	}
	return plan, nil
}

// checkFits refuses an image whose payload the target slot cannot hold.
func (u *Updater) checkFits(slot string, m image.Manifest) error {
	path, err := u.cfg.Boot.SlotPath(slot)
	if err != nil {
		return proto.Errorf(proto.ReasonInternal, "slot %s: %v", slot, err)
	}
	c, err := slotCapacity(path)
	if err != nil {
		return proto.Errorf(proto.ReasonInternal, "slot %s: %v", slot, err)
	}
	if m.PayloadSize > c.bytes {
		return proto.Errorf(proto.ReasonIncompatible, "image %s: its manifest's payload_size is %d bytes, more than slot %s holds (%d bytes: %s)",
			m.Version, m.PayloadSize, slot, c.bytes, c.what)
	}
	return nil
}

func chunkLen(size, chunk int64, i int) int64 { return min(chunk, size-int64(i)*chunk) }

// Begin starts an update, or resumes the one preparing (or halted on) the
// same image: it plans (as Plan), marks the target slot as being written,
// and copies the chunks the active slot holds, each verified against the
// manifest; it returns once they are copied, reported to progress (which
// may be nil). A chunk that no longer matches is moved to Need: the plan
// it returns is exact. The caller sends the chunks in Need with Receive,
// or names p.URL for the agent to fetch them itself within lim.
func (u *Updater) Begin(ctx context.Context, p proto.OTAImageParams, lim FetchLimits, progress Progress) (proto.OTAPlan, error) {
	bs, m, src, hashed, err := u.source(ctx, p, progress)
	if err != nil {
		return proto.OTAPlan{}, err
	}
	u.mu.Lock()
	plan, run, err := u.beginLocked(ctx, bs, m, p, lim, src)
	u.mu.Unlock()
	plan.Hashed = hashed
	if err != nil || run == nil {
		return plan, err
	}
	if err := run.await(ctx, proto.ProgressCopy, progress); err != nil {
		return plan, err
	}
	return u.afterCopy(plan, run)
}

// beginLocked is Begin's change of state; it returns the copy to wait
// for, if any.
func (u *Updater) beginLocked(ctx context.Context, bs board.BootState, m image.Manifest, p proto.OTAImageParams, lim FetchLimits,
	src map[string]*sourceChunk) (proto.OTAPlan, *copyRun, error) {
	plan, err := u.planLocked(bs, m, p.Force, src)
	if err != nil {
		return plan, nil, err
	}
	if p.URL != "" && lim.MaxBytes > 0 && plan.NeedBytes > lim.MaxBytes {
		return plan, nil, proto.InvalidField("url", "max", "the chunks to fetch are %d bytes, more than the board's download limit (%d bytes): send them over the link",
			plan.NeedBytes, lim.MaxBytes)
	}
	if plan.ID != "" { // resuming: the target is already marked, the bitmap kept
		u.log.Info("ota: resuming", "id", plan.ID, "have", plan.Have, "need", len(plan.Need))
		// This start says where the chunks come from now: the URL, or
		// the link.
		u.upd.URL, u.upd.PayloadOffset, u.upd.FetchDeadline = p.URL, p.PayloadOffset, lim.Deadline
		if u.upd.Phase == proto.PhaseHalted {
			u.upd.FailedPhase, u.upd.Reason = "", ""
			err = u.transitionLocked(proto.PhasePrepare)
		} else {
			err = u.saveLocked()
		}
		if err != nil {
			return plan, nil, err
		}
		run, err := u.prepareLocked(ctx, src)
		return plan, run, err
	}
	if bs.Trial != "" {
		// A trial set and never booted (an activation cut short): cancel it
		// before its slot is overwritten.
		if err := u.cfg.Boot.Rollback(ctx); err != nil {
			return plan, nil, proto.Errorf(proto.ReasonInternal, "boot loader: %v", err)
		}
	}
	if err := u.st.saveImage(p.Manifest, p.Signature); err != nil {
		return plan, nil, proto.Errorf(proto.ReasonInternal, "ota: %v", err)
	}
	id := newID()
	upd := &update{ID: id, Version: m.Version, FromVersion: plan.FromVersion, PayloadSHA: m.PayloadSHA256,
		Slot: plan.Slot, Phase: proto.PhasePrepare, Done: make([]byte, (len(m.Chunks)+7)/8),
		Chunks: len(m.Chunks), Size: m.PayloadSize, URL: p.URL, PayloadOffset: p.PayloadOffset,
		FetchDeadline: lim.Deadline, Started: time.Now().UTC()}
	old := u.slots[plan.Slot]
	need := map[int]bool{}
	for _, i := range plan.Need {
		need[i] = true
	}
	for i, sum := range m.Chunks {
		if !need[i] && !old.Writing && i < len(old.Chunks) && old.Chunks[i] == sum && old.ChunkSize == m.ChunkSize {
			upd.set(i) // already in place
		}
	}
	// The slot is marked before a byte of it changes: from here on it is
	// not bootable, and its old chunks are not a source; its count of
	// writes is part of the stamp of the hashes kept of it (slotStamp).
	old.Writing = true
	old.Writes++
	u.slots[plan.Slot] = old
	delete(u.hashes, plan.Slot)
	if err := u.st.saveSlots(u.slots); err != nil {
		return plan, nil, proto.Errorf(proto.ReasonInternal, "ota: %v", err)
	}
	u.upd, u.man = upd, m
	if u.cfg.OnPhase != nil {
		u.cfg.OnPhase(id, upd.Phase)
	}
	if err := u.saveLocked(); err != nil {
		return plan, nil, err
	}
	plan.ID = id
	u.log.Info("ota: prepare", "id", id, "version", m.Version, "slot", plan.Slot, "have", plan.Have,
		"copy", plan.Copy, "need", len(plan.Need), "need_bytes", plan.NeedBytes)
	run, err := u.prepareLocked(ctx, src)
	return plan, run, err
}

// afterCopy moves the chunks run could not copy from the active slot (they
// no longer match the manifest) from the plan's copy to its need.
func (u *Updater) afterCopy(plan proto.OTAPlan, run *copyRun) (proto.OTAPlan, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.ctx.Err() != nil:
		return plan, proto.Errorf(proto.ReasonCanceled, "update %s: the agent is stopping", plan.ID)
	case u.upd == nil || u.upd.ID != plan.ID || u.upd.Phase == proto.PhaseDone:
		return plan, proto.Errorf(proto.ReasonCanceled, "update %s ended while the board copied the chunks it holds", plan.ID)
	}
	need := make(map[int]bool, len(plan.Need))
	for _, i := range plan.Need {
		need[i] = true
	}
	for _, i := range run.failed {
		if need[i] || u.upd.has(i) {
			continue
		}
		need[i] = true
		_, n := u.man.ChunkRange(i)
		plan.Copy--
		plan.Need = append(plan.Need, i)
		plan.NeedBytes += n
	}
	slices.Sort(plan.Need)
	return plan, nil
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "u-" + hex.EncodeToString(b)
}

// copyRun is one run of copyChunks: once done is closed, failed holds
// the chunks it did not copy.
type copyRun struct {
	work
	failed []int
}

// prepareLocked opens the target slot and starts copying what the active
// slot holds (src) and then fetching what the URL serves; if nothing is
// left to do, it finishes the prepare. It returns the copy under way, if
// any: this one, or the one it found at work.
func (u *Updater) prepareLocked(ctx context.Context, src map[string]*sourceChunk) (*copyRun, error) {
	if u.upd.Phase != proto.PhasePrepare {
		return nil, nil
	}
	if u.target == nil {
		path, err := u.cfg.Boot.SlotPath(u.upd.Slot)
		if err == nil {
			u.target, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		}
		if err != nil {
			return nil, proto.Errorf(proto.ReasonInternal, "slot %s: %v", u.upd.Slot, err)
		}
	}
	bs, err := u.bootState(ctx)
	if err != nil {
		return nil, err
	}
	var jobs []int
	var size int64
	for i, sum := range u.man.Chunks {
		if s := src[sum]; s != nil && !u.upd.has(i) {
			jobs = append(jobs, i)
			size += s.n
		}
	}
	if len(jobs) == 0 && u.upd.URL == "" {
		return nil, u.maybeFinishPrepareLocked(ctx)
	}
	srcPath, err := u.cfg.Boot.SlotPath(bs.Active)
	if err != nil {
		return nil, proto.Errorf(proto.ReasonInternal, "slot %s: %v", bs.Active, err)
	}
	if u.filling {
		return u.copying, nil // the goroutine below is at work already
	}
	u.filling = true
	run := &copyRun{work: work{done: make(chan struct{}), total: size}}
	u.copying = run
	id, wctx, target, man := u.upd.ID, u.ctx, u.target, u.man
	from := fetchSource{url: u.upd.URL, payloadOff: u.upd.PayloadOffset, deadline: u.upd.FetchDeadline}
	u.work.Go(func() {
		u.copyChunks(wctx, id, target, man, srcPath, src, jobs, run)
		var ferr error
		if from.url != "" {
			ferr = u.fetchChunks(wctx, id, target, from)
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		u.filling = false // with the outcome below, so that a start that comes next finds either
		if wctx.Err() != nil || u.upd == nil || u.upd.ID != id || u.upd.Phase != proto.PhasePrepare {
			return // stopping (the next start resumes), or the update moved on
		}
		switch {
		case ferr != nil:
			_ = u.haltLocked(fmt.Sprintf("fetching the image from %s: %v", from.url, ferr))
		default:
			if err := u.syncLocked(); err != nil {
				_ = u.haltLocked(err.Error())
				return
			}
			if err := u.maybeFinishPrepareLocked(wctx); err != nil {
				_ = u.haltLocked(err.Error())
				return
			}
			if from.url != "" && u.upd.Phase == proto.PhasePrepare {
				// Chunks that read back wrong were cleared: nothing here
				// fetches them again by itself.
				_ = u.haltLocked(fmt.Sprintf("%d of %d chunks read back wrong from slot %s after the fetch",
					len(u.man.Chunks)-u.upd.count(), len(u.man.Chunks), u.upd.Slot))
			}
		}
	})
	return run, nil
}

// copyChunks copies chunks from the active slot, checking each against
// the manifest: src may be stale (the slot changed since it was hashed),
// and a chunk that does not match is left for the link, in run.failed.
func (u *Updater) copyChunks(ctx context.Context, id string, target *os.File, man image.Manifest, srcPath string,
	src map[string]*sourceChunk, jobs []int, run *copyRun) {
	defer close(run.done)
	if len(jobs) == 0 {
		return
	}
	f, err := os.Open(srcPath)
	if err != nil {
		u.log.Error("ota: active slot: its chunks must come from outside", "err", err)
		run.failed = jobs
		return
	}
	defer f.Close()
	buf := make([]byte, man.ChunkSize)
	mismatched := 0
	defer func() {
		if mismatched > 0 {
			u.log.Warn("ota: chunks of the active slot do not match their hashes; they must come from outside", "chunks", mismatched)
		}
	}()
	for k, i := range jobs {
		if ctx.Err() != nil {
			run.failed = append(run.failed, jobs[k:]...)
			return
		}
		s := src[man.Chunks[i]]
		data := buf[:s.n]
		if _, err := f.ReadAt(data, s.off); err != nil || image.VerifyChunk(man, i, data) != nil {
			mismatched++
			run.failed = append(run.failed, i)
			run.bytes.Add(s.n)
			continue
		}
		off, _ := man.ChunkRange(i)
		if _, err := target.WriteAt(data, off); err != nil {
			u.log.Error("ota: writing the slot", "err", err)
			run.failed = append(run.failed, jobs[k:]...)
			return
		}
		if err := u.markDone(id, i, 0, 0, true); err != nil {
			run.failed = append(run.failed, jobs[k:]...)
			return
		}
		run.bytes.Add(s.n)
	}
}

// flushEvery is how many chunks may be marked done before the slot is
// synced and the bitmap saved: a cut loses at most that much work.
const flushEvery = 8

// markDone records chunk i as written (after the caller wrote it), with
// the bytes it took on the link or from the URL. Every flushEvery chunks
// the slot is fsynced and then the bitmap saved: a chunk is never recorded
// before its bytes are durable.
func (u *Updater) markDone(id string, i int, linkBytes, urlBytes int64, copied bool) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.upd == nil || u.upd.ID != id || u.upd.Phase != proto.PhasePrepare {
		return proto.Errorf(proto.ReasonNotFound, "update %s is no longer preparing", id)
	}
	if !u.upd.has(i) {
		u.upd.set(i)
		if copied {
			u.upd.Copied++
		}
	}
	u.upd.BytesLink += linkBytes
	u.upd.BytesURL += urlBytes
	u.dirty++
	if u.dirty >= flushEvery {
		return u.syncLocked()
	}
	u.touchLocked()
	return nil
}

func (u *Updater) syncLocked() error {
	if u.target != nil {
		if err := u.target.Sync(); err != nil {
			return proto.Errorf(proto.ReasonInternal, "slot %s: %v", u.upd.Slot, err)
		}
	}
	return u.saveLocked()
}

// maybeFinishPrepareLocked verifies the slot once every chunk is there.
// Chunks that hash wrong are cleared for the link to send again.
func (u *Updater) maybeFinishPrepareLocked(ctx context.Context) error {
	if u.upd.Phase != proto.PhasePrepare || u.upd.count() < len(u.man.Chunks) {
		return nil
	}
	if err := u.syncLocked(); err != nil {
		return err
	}
	if fi, err := u.target.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() != u.man.PayloadSize {
		if err := u.target.Truncate(u.man.PayloadSize); err != nil {
			return proto.Errorf(proto.ReasonInternal, "slot %s: %v", u.upd.Slot, err)
		}
	}
	whole := sha256.New()
	buf := make([]byte, u.man.ChunkSize)
	bad := 0
	for i := range u.man.Chunks {
		off, n := u.man.ChunkRange(i)
		data := buf[:n]
		if _, err := u.target.ReadAt(data, off); err != nil && !errors.Is(err, io.EOF) {
			return proto.Errorf(proto.ReasonInternal, "slot %s: %v", u.upd.Slot, err)
		}
		if image.VerifyChunk(u.man, i, data) != nil {
			u.upd.clear(i)
			bad++
		}
		whole.Write(data)
	}
	if bad > 0 {
		u.log.Warn("ota: chunks in the slot do not match; they must be sent again", "chunks", bad)
		return u.saveLocked()
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != u.man.PayloadSHA256 {
		return u.finishLocked(ctx, proto.ResultFailed, fmt.Sprintf("payload sha256 %s, manifest says %s", got, u.man.PayloadSHA256))
	}
	u.slots[u.upd.Slot] = slotMeta{Version: u.man.Version, SHA256: u.man.PayloadSHA256, Size: u.man.PayloadSize,
		ChunkSize: u.man.ChunkSize, Chunks: u.man.Chunks, Writes: u.slots[u.upd.Slot].Writes}
	if err := u.st.saveSlots(u.slots); err != nil {
		return proto.Errorf(proto.ReasonInternal, "ota: %v", err)
	}
	u.closeTargetLocked()
	u.log.Info("ota: prepared", "id", u.upd.ID, "slot", u.upd.Slot)
	return u.transitionLocked(proto.PhasePrepared)
}

// Receive reads chunk records from r (see proto.OTAWriteParams) into the
// target slot until EOF. A chunk that does not match its hash ends it
// with checksum_mismatch; what was written before stays.
func (u *Updater) Receive(ctx context.Context, id string, r io.Reader) error {
	u.mu.Lock()
	if u.upd == nil || u.upd.ID != id || u.upd.Phase != proto.PhasePrepare {
		u.mu.Unlock()
		return proto.Errorf(proto.ReasonNotFound, "no update %s is preparing", id)
	}
	if u.received {
		u.mu.Unlock()
		return proto.Errorf(proto.ReasonBusy, "update %s is already receiving", id)
	}
	u.received = true
	man, target := u.man, u.target
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.received = false
		u.mu.Unlock()
	}()
	buf := make([]byte, man.ChunkSize)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return proto.Errorf(proto.ReasonCanceled, "update %s: chunk stream cut: %v", id, err)
		}
		i := int(uint32(hdr[0])<<24 | uint32(hdr[1])<<16 | uint32(hdr[2])<<8 | uint32(hdr[3]))
		if i >= len(man.Chunks) {
			return proto.InvalidField("stream", "chunk", "chunk index %d: the image has %d chunks", i, len(man.Chunks))
		}
		off, n := man.ChunkRange(i)
		data := buf[:n]
		if _, err := io.ReadFull(r, data); err != nil {
			return proto.Errorf(proto.ReasonCanceled, "update %s: chunk stream cut in chunk %d: %v", id, i, err)
		}
		if err := image.VerifyChunk(man, i, data); err != nil {
			return proto.WithCause(proto.Errorf(proto.ReasonChecksumMismatch, "chunk %d: %v", i, err), err)
		}
		if _, err := target.WriteAt(data, off); err != nil {
			return proto.Errorf(proto.ReasonInternal, "slot: %v", err)
		}
		if err := u.markDone(id, i, n, 0, false); err != nil {
			return err
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.upd == nil || u.upd.ID != id || u.upd.Phase != proto.PhasePrepare {
		return nil
	}
	if err := u.syncLocked(); err != nil {
		return err
	}
	return u.maybeFinishPrepareLocked(ctx)
}

// MaxHold bounds how long a trial may wait for the host's verdict.
const MaxHold = 24 * time.Hour

// Activate sets up the trial boot of a prepared update and returns the
// reboot to run once the caller has answered. A hold keeps the trial,
// once its health check passed, for Commit or Rollback (PhaseHeld) for at
// most that long.
func (u *Updater) Activate(ctx context.Context, id string, hold time.Duration) (func(), error) {
	if u.cfg.Reboot == nil {
		return nil, proto.Errorf(proto.ReasonIncompatible, "this board cannot reboot: updates cannot be activated")
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.upd == nil || u.upd.ID != id {
		return nil, proto.Errorf(proto.ReasonNotFound, "no update %s", id)
	}
	if u.upd.Phase != proto.PhasePrepared {
		return nil, proto.Errorf(proto.ReasonBusy, "update %s is in phase %s, not prepared", id, u.upd.Phase)
	}
	if err := u.transitionLocked(proto.PhaseActivate); err != nil {
		return nil, err
	}
	if err := u.cfg.Boot.SetTrial(ctx, u.upd.Slot); err != nil {
		_ = u.transitionLocked(proto.PhasePrepared)
		return nil, proto.Errorf(proto.ReasonInternal, "boot loader: %v", err)
	}
	u.upd.TrialSet, u.upd.TrialBoot = true, u.cfg.BootID
	u.upd.Hold = min(max(hold, 0), MaxHold)
	if err := u.saveLocked(); err != nil {
		return nil, err
	}
	u.log.Info("ota: trial boot set; rebooting", "id", id, "slot", u.upd.Slot)
	return u.cfg.Reboot, nil
}

// Abort ends an update before activation. The target slot keeps what was
// written; it is not bootable unless the prepare had finished.
func (u *Updater) Abort(ctx context.Context, id string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.upd == nil || u.upd.ID != id {
		return proto.Errorf(proto.ReasonNotFound, "no update %s", id)
	}
	if p := u.upd.Phase; !p.Abortable() {
		return proto.Errorf(proto.ReasonBusy, "update %s is in phase %s: too late to abort", id, p)
	}
	// A read of the active slot under way is for this update's image (any
	// other is refused while it is under way): it is of no use any more.
	u.cancelHashLocked(fmt.Errorf("update %s aborted: %w", id, context.Canceled))
	return u.finishLocked(ctx, proto.ResultAborted, "aborted by request")
}

// resumeLocked carries on after a restart (which may be a reboot).
func (u *Updater) resumeLocked(ctx context.Context) error {
	bs, err := u.cfg.Boot.State(ctx)
	if err != nil {
		return fmt.Errorf("ota: boot loader: %w", err)
	}
	v := u.upd
	u.log.Info("ota: resuming", "id", v.ID, "phase", v.Phase, "booted", bs.Booted, "active", bs.Active, "trial", bs.Trial)
	switch v.Phase {
	case proto.PhasePrepare:
		// What the active slot holds as far as the agent knows without
		// reading it: a start never waits on a slot's read (the next
		// ota.start reads it).
		src, _, _, _ := u.knownSourceLocked(bs.Active, u.man)
		_, err := u.prepareLocked(ctx, src)
		return err
	case proto.PhasePrepared, proto.PhaseHalted:
		return nil // waiting for a request
	case proto.PhaseActivate:
		switch {
		case bs.Booted == v.Slot && bs.Trying():
			return u.trialLocked()
		case !v.TrialSet && bs.Trial == "":
			// Cut before the boot loader took the trial: still prepared.
			return u.transitionLocked(proto.PhasePrepared)
		case bs.Trial == v.Slot && v.TrialBoot == u.cfg.BootID:
			// The agent restarted before the reboot: do it now.
			if err := u.transitionLocked(proto.PhaseActivate); err != nil {
				return err
			}
			if u.cfg.Reboot != nil {
				go u.cfg.Reboot()
			}
			return nil
		}
		return u.finishLocked(ctx, proto.ResultRolledBack,
			fmt.Sprintf("the trial boot of slot %s did not come up: the boot loader fell back to %s", v.Slot, bs.Booted))
	case proto.PhaseTrial:
		if bs.Booted == v.Slot && bs.Trying() {
			return u.trialLocked() // the agent restarted within the trial boot
		}
		return u.finishLocked(ctx, proto.ResultRolledBack,
			fmt.Sprintf("the trial boot of slot %s ended before its health check passed; booted %s", v.Slot, bs.Booted))
	case proto.PhaseHeld:
		if bs.Booted == v.Slot && bs.Trying() {
			return u.holdLocked() // the agent restarted within the trial boot: the hold goes on
		}
		return u.finishLocked(ctx, proto.ResultRolledBack,
			fmt.Sprintf("the trial boot of slot %s ended while it waited for the host's verdict", v.Slot))
	case proto.PhaseCommit:
		if bs.Active == v.Slot {
			return u.finishLocked(ctx, proto.ResultCommitted, "")
		}
		if bs.Booted == v.Slot && bs.Trying() {
			return u.commitLocked(ctx)
		}
		return u.finishLocked(ctx, proto.ResultRolledBack,
			fmt.Sprintf("the trial boot of slot %s ended before it was committed", v.Slot))
	case proto.PhaseRollback:
		if bs.Booted != v.Slot {
			return u.finishLocked(ctx, proto.ResultRolledBack, v.Reason)
		}
		return u.rollbackLocked(ctx, v.Reason)
	}
	return u.finishLocked(ctx, proto.ResultFailed, fmt.Sprintf("unknown phase %q", v.Phase))
}

// trialLocked runs the health check of a trial boot in the background;
// its verdict is the machine's own work, bound to Stop.
func (u *Updater) trialLocked() error {
	if err := u.transitionLocked(proto.PhaseTrial); err != nil {
		return err
	}
	ctx, id, slot, version := u.ctx, u.upd.ID, u.upd.Slot, u.upd.Version
	u.work.Go(func() {
		err := u.healthCheck(ctx, slot, version)
		u.mu.Lock()
		defer u.mu.Unlock()
		if ctx.Err() != nil || u.upd == nil || u.upd.ID != id || u.upd.Phase != proto.PhaseTrial {
			return // stopping: the next start decides
		}
		if err != nil {
			u.log.Warn("ota: health check failed", "id", id, "err", err)
			_ = u.rollbackLocked(ctx, fmt.Sprintf("health check failed: %v", err))
			return
		}
		if u.upd.Hold > 0 {
			u.upd.HoldUntil = time.Now().Add(u.upd.Hold).UTC()
			_ = u.holdLocked()
			return
		}
		_ = u.commitLocked(ctx)
	})
	return nil
}

// holdLocked keeps a trial whose health check passed until the host's
// verdict or HoldUntil, when it rolls back by itself: a host that went
// away never leaves the board on a trial.
func (u *Updater) holdLocked() error {
	if err := u.transitionLocked(proto.PhaseHeld); err != nil {
		return err
	}
	ctx, id, until := u.ctx, u.upd.ID, u.upd.HoldUntil
	u.log.Info("ota: trial held for the host's verdict", "id", id, "until", until)
	u.work.Go(func() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return // stopping: the next start holds again
		case <-t.C:
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.upd == nil || u.upd.ID != id || u.upd.Phase != proto.PhaseHeld {
			return // a verdict came first
		}
		u.log.Warn("ota: no verdict within the hold; rolling back", "id", id)
		_ = u.rollbackLocked(ctx, fmt.Sprintf("no verdict from the host within the hold (until %s)", until.Format(time.RFC3339)))
	})
	return nil
}

// Commit is the host's verdict on a held trial: keep it.
func (u *Updater) Commit(ctx context.Context, id string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.heldLocked(id); err != nil {
		return err
	}
	u.log.Info("ota: the host commits the held trial", "id", id)
	return u.commitLocked(ctx)
}

// Rollback is the host's verdict on a held trial: back to the old slot,
// for reason.
func (u *Updater) Rollback(ctx context.Context, id, reason string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.heldLocked(id); err != nil {
		return err
	}
	if reason == "" {
		reason = "no reason given"
	}
	u.log.Info("ota: the host rolls the held trial back", "id", id, "reason", reason)
	return u.rollbackLocked(ctx, "rolled back by the host: "+reason)
}

func (u *Updater) heldLocked(id string) error {
	if u.upd == nil || u.upd.ID != id {
		return proto.Errorf(proto.ReasonNotFound, "no update %s", id)
	}
	if u.upd.Phase != proto.PhaseHeld {
		return proto.Errorf(proto.ReasonBusy, "update %s is in phase %s, not held", id, u.upd.Phase)
	}
	return nil
}

func (u *Updater) commitLocked(ctx context.Context) error {
	if err := u.transitionLocked(proto.PhaseCommit); err != nil {
		return err
	}
	if err := u.cfg.Boot.Commit(ctx); err != nil {
		if ctx.Err() != nil {
			return err // stopping: the next start commits
		}
		return u.rollbackLocked(ctx, fmt.Sprintf("commit: %v", err))
	}
	return u.finishLocked(ctx, proto.ResultCommitted, "")
}

// rollbackLocked cancels the trial and reboots into the old slot; the
// next start records the result.
func (u *Updater) rollbackLocked(ctx context.Context, reason string) error {
	if u.upd.FailedPhase == "" {
		u.upd.FailedPhase = u.upd.Phase
	}
	u.upd.Reason = reason
	if err := u.transitionLocked(proto.PhaseRollback); err != nil {
		return err
	}
	if err := u.cfg.Boot.Rollback(ctx); err != nil {
		u.log.Error("ota: rollback", "err", err)
	}
	if u.cfg.Reboot != nil {
		go u.cfg.Reboot()
	}
	return nil
}

// healthCheck runs the configured checks, all within HealthTimeout.
func (u *Updater) healthCheck(ctx context.Context, slot, version string) error {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.HealthTimeout)
	defer cancel()
	for _, check := range u.cfg.HealthChecks {
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", check)
		cmd.Env = append(os.Environ(), "BOARDLINK_SLOT="+slot, "BOARDLINK_VERSION="+version)
		// The check's own children end with it, and hold neither its
		// output nor Stop.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = time.Second
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return fmt.Errorf("%q did not finish within %s", check, u.cfg.HealthTimeout)
		}
		if err != nil {
			tail := strings.TrimSpace(string(out))
			if len(tail) > 200 {
				tail = "…" + tail[len(tail)-200:]
			}
			return fmt.Errorf("%q: %v: %s", check, err, tail)
		}
	}
	return nil
}
