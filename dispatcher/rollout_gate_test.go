package dispatcher_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/rolloutjob"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/proto"
)

// gateLab is a lab of n sim boards, an image for them, and the updates
// each board committed, counted on the board's side.
type gateLab struct {
	lab *simlab.Lab
	im  *image.Image
	img string // the image file

	mu      sync.Mutex
	commits map[string]int
}

func newGateLab(t *testing.T, n int) *gateLab {
	t.Helper()
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	g := &gateLab{commits: map[string]int{}}
	g.lab = otaLabOf(t, simlab.Options{Boards: n, TrustKeys: []ed25519.PublicKey{pub},
		OnPhase: func(board, _ string, phase proto.Phase) {
			if phase == proto.PhaseCommit {
				g.mu.Lock()
				g.commits[board]++
				g.mu.Unlock()
			}
		}})
	raw, im := imageFile(t, priv, "2.0.0")
	g.im, g.img = im, filepath.Join(t.TempDir(), "image.blimg")
	if err := os.WriteFile(g.img, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *gateLab) id(i int) string { return g.lab.Boards[i].ID }

func (g *gateLab) config(gate string, wave int) dispatcher.RolloutConfig {
	cfg := dispatcher.RolloutConfig{Image: g.im, Concurrency: 2, MaxFailures: -1, Attempts: 2, Backoff: time.Millisecond,
		DialOptions: g.lab.DialOptions(), WaveSize: wave}
	if gate != "" {
		cfg.Gate, _ = dispatcher.ParseGate(gate)
	}
	return cfg
}

func (g *gateLab) run(t *testing.T, cfg dispatcher.RolloutConfig) dispatcher.Report {
	t.Helper()
	ctx := context.Background()
	return dispatcher.RunRollout(ctx, cfg, dispatcher.PlanRollout(ctx, cfg, targets(g.lab)), nil)
}

// results maps board ids to results.
func results(rep dispatcher.Report) map[string]string {
	m := map[string]string{}
	for _, b := range rep.Boards {
		m[b.ID] = b.Result
	}
	return m
}

// TestGateFailureStopsBeforeNextWave: six boards in waves of two, each
// trial held for the gate; the gate fails on the fourth: neither board of
// its wave commits (the other passed its gate and is rolled back with
// it), and the third wave never starts, each of its boards skipped with
// the reason, never touched.
func TestGateFailureStopsBeforeNextWave(t *testing.T) {
	g := newGateLab(t, 6)
	cfg := g.config(`exec: echo "selftest on $BOARDLINK_BOARD"; test "$BOARDLINK_BOARD" != `+g.id(3)+` || { echo "eth0 is down" >&2; exit 3; }`, 2)
	var ev events
	cfg.Events = ev.add
	rep := g.run(t, cfg)
	got := byID(rep)
	for i, want := range []string{"committed", "committed", "rolled_back", dispatcher.ResultGateFailed, dispatcher.ResultSkipped, dispatcher.ResultSkipped} {
		if b := got[g.id(i)]; b.Result != want {
			t.Errorf("%s: %s (%s), want %s", b.ID, b.Result, b.Reason, want)
		}
	}
	if b := got[g.id(3)]; b.Stage != dispatcher.StageGate || !strings.Contains(b.Reason, "exit 3") ||
		!strings.Contains(b.Reason, "eth0 is down") || !strings.HasSuffix(b.Reason, "; rolled back") {
		t.Errorf("the gate's failure: %+v", b)
	}
	if b := got[g.id(2)]; !strings.Contains(b.Reason, "the gate failed in wave 2 on "+g.id(3)) || b.Phase != string(proto.PhaseDone) {
		t.Errorf("the other board of the failed wave: %+v", b)
	}
	g.mu.Lock()
	for i, want := range []int{1, 1, 0, 0, 0, 0} {
		if n := g.commits[g.id(i)]; n != want {
			t.Errorf("%s committed %d times, want %d", g.id(i), n, want)
		}
	}
	g.mu.Unlock()
	for _, i := range []int{4, 5} {
		b := got[g.id(i)]
		if !strings.Contains(b.Reason, "the gate failed in wave 2 on "+g.id(3)) || b.Attempts != 0 || g.lab.Boards[i].Boots() != 1 {
			t.Errorf("a board of the next wave: %+v, %d boots", b, g.lab.Boards[i].Boots())
		}
	}
	if rep.OK() || !strings.Contains(rep.Stopped, "gate failed") {
		t.Errorf("report OK %v, stopped %q", rep.OK(), rep.Stopped)
	}
	// Wave 2's gate failed before anything of wave 3 started.
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.all {
		if e.Wave == 3 && e.Kind != "done" {
			t.Errorf("wave 3 started: %+v", e)
		}
	}
}

// TestGatePassesEveryWave: a gate that passes lets every wave through,
// each wave's gate done before the next wave starts, and the gate saw the
// board and the version.
func TestGatePassesEveryWave(t *testing.T) {
	g := newGateLab(t, 5)
	cfg := g.config(`exec: test -n "$BOARDLINK_BOARD" && test "$BOARDLINK_VERSION" = 2.0.0`, 2)
	var ev events
	cfg.Events = ev.add
	rep := g.run(t, cfg)
	if !rep.OK() || rep.Counts["committed"] != 5 || rep.Stopped != "" {
		t.Fatalf("counts %v, stopped %q: %+v", rep.Counts, rep.Stopped, rep.Boards)
	}
	// Every gate of a wave ended before the next wave's first start.
	ev.mu.Lock()
	defer ev.mu.Unlock()
	lastGate, firstStart := map[int]int{}, map[int]int{}
	for i, e := range ev.all {
		switch {
		case e.Stage == dispatcher.StageGate && e.Kind == "done":
			lastGate[e.Wave] = i
		case e.Kind == "start" && e.Stage == dispatcher.StagePrepare:
			if _, ok := firstStart[e.Wave]; !ok {
				firstStart[e.Wave] = i
			}
		}
	}
	if len(lastGate) != 3 || len(firstStart) != 3 {
		t.Fatalf("gates of waves %v, starts of waves %v: want 3 waves", lastGate, firstStart)
	}
	for w := 1; w < 3; w++ {
		if lastGate[w] > firstStart[w+1] {
			t.Errorf("wave %d started before wave %d's gate ended", w+1, w)
		}
	}
}

// TestGateSilentBoard: a board whose gate never ends fails on the gate's
// timeout, and one that goes away before its gate fails as unreachable;
// either stops the rollout before the next wave.
func TestGateSilentBoard(t *testing.T) {
	t.Run("hangs", func(t *testing.T) {
		g := newGateLab(t, 3)
		cfg := g.config(`exec: if [ "$BOARDLINK_BOARD" = `+g.id(1)+` ]; then sleep 600; fi`, 2)
		cfg.Gate.Timeout = 300 * time.Millisecond
		got := byID(g.run(t, cfg))
		if b := got[g.id(1)]; b.Result != dispatcher.ResultGateFailed || !strings.Contains(b.Reason, "timed out") {
			t.Errorf("the board whose gate hangs: %+v", b)
		}
		if b := got[g.id(2)]; b.Result != dispatcher.ResultSkipped {
			t.Errorf("the next wave: %+v", b)
		}
	})
	t.Run("goes away", func(t *testing.T) {
		g := newGateLab(t, 3)
		gone := g.lab.Boards[0]
		cfg := g.config(`exec: true`, 2)
		cfg.Events = func(e dispatcher.Event) {
			// Held on its trial, then silent before its gate.
			if e.Stage == dispatcher.StageExecute && e.Kind == "done" && e.Board == gone.ID {
				if err := gone.Down(context.Background()); err != nil {
					t.Error(err)
				}
			}
		}
		got := byID(g.run(t, cfg))
		if b := got[gone.ID]; b.Result != dispatcher.ResultUnreachable || b.Stage != dispatcher.StageGate {
			t.Errorf("the board that went away: %+v", b)
		}
		if b := got[g.id(2)]; b.Result != dispatcher.ResultSkipped {
			t.Errorf("the next wave: %+v", b)
		}
	})
}

// TestParseGate: what --gate accepts.
func TestParseGate(t *testing.T) {
	g, err := dispatcher.ParseGate("exec: /usr/bin/selftest --quick")
	if err != nil || g.Exec != "/usr/bin/selftest --quick" || g.String() != "exec: /usr/bin/selftest --quick" {
		t.Fatalf("%+v %v", g, err)
	}
	for _, bad := range []string{"", "exec:", "exec:   ", "http://x", "/usr/bin/selftest", "exec: " + strings.Repeat("x", 5000)} {
		if _, err := dispatcher.ParseGate(bad); err == nil {
			t.Errorf("ParseGate(%.20q): no error", bad)
		}
	}
}

// TestRolloutJobResumes: a recorded rollout with a gate, interrupted in
// its second wave (the service stopped), stays running in the records;
// ResumeRollouts finishes it with the same gate and waves: every board
// of the first two waves committed once, the gate failing on one board of
// the third wave (which rolls back whole) and the fourth skipped.
func TestRolloutJobResumes(t *testing.T) {
	g := newGateLab(t, 8)
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "records.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	gatesFile := filepath.Join(t.TempDir(), "gates")
	gate, _ := dispatcher.ParseGate(`exec: echo "$BOARDLINK_BOARD" >>` + gatesFile + `; test "$BOARDLINK_BOARD" != ` + g.id(5))
	env := dispatcher.RolloutConfig{DialOptions: g.lab.DialOptions(), Attempts: 2, Backoff: time.Millisecond}
	plan := dispatcher.PlanRollout(ctx, dispatcher.RolloutConfig{Image: g.im, DialOptions: env.DialOptions}, targets(g.lab))
	id, err := rolloutjob.RecordRollout(ctx, st, rolloutjob.NewRollout{ImagePath: g.img, Selector: "model=sim", Plan: plan,
		Concurrency: 2, MaxFailures: -1, Spec: rolloutjob.RolloutSpec{Gate: gate, WaveSize: 2, Owner: rolloutjob.OwnerService}})
	if err != nil {
		t.Fatal(err)
	}
	// Another owner's rollout, left running: not the service's to resume.
	other, err := rolloutjob.RecordRollout(ctx, st, rolloutjob.NewRollout{ImagePath: g.img, Plan: dispatcher.Plan{
		Version: plan.Version, ImageSHA256: plan.ImageSHA256}, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}

	// The first run stops once wave 2 is held on its trials, before its gate.
	stop, cancel := context.WithCancel(ctx)
	first := env
	first.Events = func(e dispatcher.Event) {
		if e.Stage == dispatcher.StageGate && e.Kind == "stage" && e.Wave == 2 {
			cancel()
		}
	}
	if _, err := rolloutjob.RunRecorded(stop, st, id, first); !errors.Is(err, context.Canceled) {
		t.Fatalf("the interrupted run: %v", err)
	}
	rec, boards, err := st.Rollout(ctx, id)
	if err != nil || rec.State != store.StateRunning || rec.Summary["committed"] != 2 {
		t.Fatalf("after the interruption: %+v %v", rec, err)
	}
	if b := boards[2]; b.Phase != store.PhaseExecute || b.Result != "" || b.UpdateID == "" {
		t.Fatalf("a board of wave 2 after the interruption: %+v", b)
	}

	outcomes, err := rolloutjob.ResumeRollouts(ctx, st, rolloutjob.OwnerService, env, nil)
	if err != nil || len(outcomes) != 1 || outcomes[0].ID != id || outcomes[0].Err != nil {
		t.Fatalf("resumed %+v %v", outcomes, err)
	}
	want := []string{"committed", "committed", "committed", "committed", "rolled_back", dispatcher.ResultGateFailed,
		dispatcher.ResultSkipped, dispatcher.ResultSkipped}
	rec, boards, err = st.Rollout(ctx, id)
	if err != nil || rec.State != store.StateStopped {
		t.Fatalf("after the resume: %+v %v", rec, err)
	}
	for i, b := range boards {
		if b.Result != want[i] {
			t.Errorf("%s: %s (%s), want %s", b.BoardID, b.Result, b.Reason, want[i])
		}
	}
	g.mu.Lock()
	for i := range 6 {
		if n, want := g.commits[g.id(i)], min(1, 4-min(i, 4)); n != want {
			t.Errorf("%s committed %d updates, want %d", g.id(i), n, want)
		}
	}
	g.mu.Unlock()
	gated, err := os.ReadFile(gatesFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(gated))
	for i := range 6 {
		if n := strings.Count(string(gated), g.id(i)+"\n"); n != 1 {
			t.Errorf("the gate ran %d times on %s: %q", n, g.id(i), lines)
		}
	}
	if slices.Contains(lines, g.id(6)) {
		t.Errorf("the gate ran on a board of the skipped wave: %q", lines)
	}
	if r, _, err := st.Rollout(ctx, other); err != nil || r.State != store.StateRunning {
		t.Errorf("the CLI's rollout: %+v %v", r, err)
	}
}
