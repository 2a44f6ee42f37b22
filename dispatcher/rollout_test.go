package dispatcher_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// otaLab runs n sim boards that trust key's images; the boards of failing
// fail their health check.
func otaLab(t *testing.T, n int, key ed25519.PublicKey, failing ...int) *simlab.Lab {
	t.Helper()
	return otaLabOf(t, simlab.Options{Boards: n, TrustKeys: []ed25519.PublicKey{key},
		HealthChecks: func(i int) []string {
			if slices.Contains(failing, i) {
				return []string{"exit 1"}
			}
			return nil
		}})
}

// otaLabOf starts a lab of sim boards as opts says, in a directory of the
// test's, with labToken and a quick boot; it stops when the test ends.
func otaLabOf(t *testing.T, opts simlab.Options) *simlab.Lab {
	t.Helper()
	opts.Dir, opts.Token, opts.BootDelay = t.TempDir(), labToken, time.Millisecond
	lab, err := simlab.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return lab
}

func targets(lab *simlab.Lab) []dispatcher.Target {
	var out []dispatcher.Target
	for _, b := range lab.Boards {
		out = append(out, dispatcher.Target{ID: b.ID, Address: b.Addr(), Model: simlab.DefaultModel})
	}
	return out
}

// events records a rollout's events.
type events struct {
	mu  sync.Mutex
	all []dispatcher.Event
}

func (e *events) add(ev dispatcher.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) kinds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.all {
		if !slices.Contains(out, ev.Kind) {
			out = append(out, ev.Kind)
		}
	}
	slices.Sort(out)
	return out
}

func byID(rep dispatcher.Report) map[string]dispatcher.BoardReport {
	m := map[string]dispatcher.BoardReport{}
	for _, b := range rep.Boards {
		m[b.ID] = b
	}
	return m
}

// TestRollout: boards that take the image commit, a board whose health
// check fails rolls back and counts as a failure, one that never answers
// is unreachable after its retries, one an earlier run committed is left
// alone; each chunk is read from the image once; planning again finds the
// committed boards current.
func TestRollout(t *testing.T) {
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := otaLab(t, 4, pub, 3)
	_, im := imageFile(t, priv, "2.0.0")
	var ev events
	var recorded sync.Map
	cfg := dispatcher.RolloutConfig{Image: im, Concurrency: 2, MaxFailures: -1, Attempts: 2, Backoff: time.Millisecond,
		DialOptions: lab.DialOptions(), Events: ev.add, Record: func(b dispatcher.BoardReport) { recorded.Store(b.ID, b) }}
	ctx := context.Background()
	tgts := append(targets(lab), dispatcher.Target{ID: "gone", Address: "wss://" + closedAddr(t)})
	plan := dispatcher.PlanRollout(ctx, cfg, tgts)
	if len(plan.Boards) != 5 || plan.Version != "2.0.0" || plan.ImageSHA256 != im.Manifest.PayloadSHA256 {
		t.Fatalf("plan %+v", plan)
	}
	for _, bp := range plan.Boards {
		want := ""
		if bp.ID == "gone" {
			want = dispatcher.ResultUnreachable
		}
		if bp.Result != want || bp.ID != "gone" && (bp.NeedChunks != len(im.Manifest.Chunks) || bp.Slot == "") {
			t.Fatalf("planned %+v", bp)
		}
	}
	earlier := lab.Boards[1]
	done := []dispatcher.BoardReport{{ID: earlier.ID, Address: earlier.Addr(), Result: string(proto.ResultCommitted)}}
	rep := dispatcher.RunRollout(ctx, cfg, plan, done)
	got := byID(rep)
	want := map[string]string{lab.Boards[0].ID: string(proto.ResultCommitted), earlier.ID: string(proto.ResultCommitted),
		lab.Boards[2].ID: string(proto.ResultCommitted), lab.Boards[3].ID: string(proto.ResultRolledBack), "gone": dispatcher.ResultUnreachable}
	for id, res := range want {
		if got[id].Result != res {
			t.Errorf("%s: %+v, want %s", id, got[id], res)
		}
	}
	if b := got[lab.Boards[3].ID]; b.Stage != dispatcher.StageExecute || !strings.Contains(b.Reason, "rolled_back") {
		t.Errorf("the rollback: %+v", b)
	}
	if earlier.Boots() != 1 || got[earlier.ID].Attempts != 0 {
		t.Errorf("the board committed earlier was touched: %d boots, %+v", earlier.Boots(), got[earlier.ID])
	}
	if rep.OK() || rep.Counts[string(proto.ResultCommitted)] != 3 || rep.Counts[dispatcher.ResultUnreachable] != 1 {
		t.Errorf("report OK %v, counts %v", rep.OK(), rep.Counts)
	}
	if rep.ImageBytesRead != im.Manifest.PayloadSize {
		t.Errorf("read %d bytes of the image for 3 boards, want the payload's %d once", rep.ImageBytesRead, im.Manifest.PayloadSize)
	}
	if k := ev.kinds(); !slices.Equal(k, []string{"done", "progress", "retry", "stage", "start"}) {
		t.Errorf("event kinds %v", k)
	}
	if r, ok := recorded.Load(lab.Boards[0].ID); !ok || r.(dispatcher.BoardReport).UpdateID == "" {
		t.Errorf("recorded %+v", r)
	}

	again := dispatcher.PlanRollout(ctx, cfg, targets(lab))
	for _, bp := range again.Boards {
		current := bp.ID == lab.Boards[0].ID || bp.ID == lab.Boards[2].ID
		if current != (bp.Result == dispatcher.ResultCurrent) || current && bp.FromVersion != "2.0.0" {
			t.Errorf("planned again: %+v", bp)
		}
	}
}

// TestRolloutStops: once more boards failed than allowed, the rest are
// skipped; an image for another model is incompatible at planning; a
// rollout interrupted before a board's turn leaves it to resume.
func TestRolloutStops(t *testing.T) {
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := otaLab(t, 2, pub)
	ctx := context.Background()
	_, im := imageFile(t, priv, "2.0.0")
	cfg := dispatcher.RolloutConfig{Image: im, Concurrency: 1, MaxFailures: 0, Attempts: 1,
		DialOptions: lab.DialOptions()}

	t.Run("max failures", func(t *testing.T) {
		tgts := append([]dispatcher.Target{{ID: "a-gone", Address: "wss://" + closedAddr(t)}}, targets(lab)...)
		rep := dispatcher.RunRollout(ctx, cfg, dispatcher.PlanRollout(ctx, cfg, tgts), nil)
		for _, b := range lab.Boards {
			if r := byID(rep)[b.ID]; r.Result != dispatcher.ResultSkipped || !strings.Contains(r.Reason, "failures") {
				t.Errorf("%s: %+v", b.ID, r)
			}
		}
	})
	t.Run("incompatible", func(t *testing.T) {
		cfg := cfg
		_, cfg.Image = imageFile(t, priv, "2.0.0", "imx8")
		plan := dispatcher.PlanRollout(ctx, cfg, targets(lab))
		for _, bp := range plan.Boards {
			if bp.Result != dispatcher.ResultIncompatible || bp.Reason == "" {
				t.Errorf("%+v", bp)
			}
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		plan := dispatcher.PlanRollout(ctx, cfg, targets(lab))
		stopped, cancel := context.WithCancel(ctx)
		cancel()
		rep := dispatcher.RunRollout(stopped, cfg, plan, nil)
		for _, b := range rep.Boards {
			if b.Result != dispatcher.ResultInterrupted || b.Reason != "the rollout was interrupted before its turn" {
				t.Errorf("%+v", b)
			}
		}
	})
}

// TestRolloutResumesAfterPrepare: a board whose update an interrupted run
// already prepared is not prepared again: the execute stage activates the
// same update.
func TestRolloutResumesAfterPrepare(t *testing.T) {
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := otaLab(t, 1, pub)
	_, im := imageFile(t, priv, "3.0.0")
	ctx := context.Background()
	c := dial(t, lab.Boards[0].Addr())
	prep, err := c.Prepare(ctx, im, dispatcher.OTAOptions{})
	if err != nil || prep.Update == nil || prep.Update.Phase != proto.PhasePrepared {
		t.Fatalf("prepare: %+v %v", prep, err)
	}
	c.Close()
	cfg := dispatcher.RolloutConfig{Image: im, DialOptions: lab.DialOptions()}
	plan := dispatcher.PlanRollout(ctx, cfg, targets(lab))
	prior := []dispatcher.BoardReport{{ID: lab.Boards[0].ID, Address: lab.Boards[0].Addr(), Stage: dispatcher.StagePrepare,
		UpdateID: prep.Plan.ID}}
	rep := dispatcher.RunRollout(ctx, cfg, plan, prior)
	b := rep.Boards[0]
	if b.Result != string(proto.ResultCommitted) || b.UpdateID != prep.Plan.ID || b.BytesSent != 0 || rep.ImageBytesRead != 0 {
		t.Fatalf("resumed: %+v (image bytes read %d)", b, rep.ImageBytesRead)
	}
}

// TestTransient: what a retry may cure (the link, the board away or busy)
// against what it cannot (a refusal, a failed update).
func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("something"), false},
		{&dispatcher.OTAError{Result: proto.ResultRolledBack}, false},
		{proto.Errorf(proto.ReasonBusy, "busy"), true},
		{proto.Errorf(proto.ReasonTimeout, "slow"), true},
		{proto.Errorf(proto.ReasonSignatureInvalid, "bad"), false},
		{proto.Errorf(proto.ReasonInvalidParams, "bad"), false},
		{fmt.Errorf("call: %w", transport.ErrClosed), true},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("%w after 1s", dispatcher.ErrNotBack), true},
		{&net.OpError{Op: "dial", Err: errors.New("refused")}, true},
	} {
		if got := dispatcher.Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRolloutHalt: a rollout stopped by hand while its first board
// prepares skips every board, the one preparing with its update aborted;
// stopped once a board's execute began, that board commits (a stop rolls
// nothing back) and the boards prepared after it are skipped, their
// updates aborted: none of them runs the new version.
func TestRolloutHalt(t *testing.T) {
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, at := range []string{dispatcher.StagePrepare, dispatcher.StageExecute} {
		t.Run(at, func(t *testing.T) {
			lab := otaLab(t, 3, pub)
			_, im := imageFile(t, priv, "2.0.0")
			halt := dispatcher.NewHalt()
			first := lab.Boards[0].ID
			cfg := dispatcher.RolloutConfig{Image: im, Concurrency: 1, MaxFailures: -1, DialOptions: lab.DialOptions(), Halt: halt,
				Events: func(e dispatcher.Event) {
					if e.Board == first && e.Stage == at && (e.Kind == "progress" || at == dispatcher.StageExecute && e.Kind == "start") {
						halt.Stop("stopped by alice")
					}
				}}
			rep := dispatcher.RunRollout(ctx, cfg, dispatcher.PlanRollout(ctx, cfg, targets(lab)), nil)
			if rep.Stopped != "stopped by alice" || rep.OK() {
				t.Fatalf("report: %+v", rep)
			}
			for i, b := range lab.Boards {
				r := byID(rep)[b.ID]
				c := dial(t, b.Addr())
				st, err := c.OTAStatus(ctx)
				info, ierr := c.Info(ctx)
				c.Close()
				if err != nil || ierr != nil {
					t.Fatal(err, ierr)
				}
				version := ""
				for _, s := range info.Slots {
					if s.Booted {
						version = s.Version
					}
				}
				if i == 0 && at == dispatcher.StageExecute {
					if r.Result != string(proto.ResultCommitted) || version != "2.0.0" {
						t.Errorf("%s, in execute when stopped: %+v, runs %s", b.ID, r, version)
					}
					continue
				}
				t.Logf("%s: %s: %s", b.ID, r.Result, r.Reason)
				if r.Result != dispatcher.ResultSkipped || !strings.Contains(r.Reason, "stopped by alice") || version == "2.0.0" {
					t.Errorf("%s: %+v, runs %s", b.ID, r, version)
				}
				if r.UpdateID != "" && (!strings.Contains(r.Reason, "its update aborted") || st.Update == nil ||
					st.Update.Result != proto.ResultAborted) {
					t.Errorf("%s: an update left behind: %+v, status %+v", b.ID, r, st.Update)
				}
			}
		})
	}
}
