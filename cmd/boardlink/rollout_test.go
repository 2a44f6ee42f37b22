package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// phases counts, on the boards' side, what their OTA machines do.
type phases struct {
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced at every phase
	preparing map[string]bool
	prepared  map[string]bool // boards that began to prepare, ever
	peak      int
	commits   map[string]int // board -> updates committed
}

func newPhases() *phases {
	return &phases{changed: make(chan struct{}), preparing: map[string]bool{}, prepared: map[string]bool{}, commits: map[string]int{}}
}

// await waits until cond, called with p.mu held, holds after a phase; it
// reports false if ctx ends first.
func (p *phases) await(ctx context.Context, cond func() bool) bool {
	p.mu.Lock()
	for !cond() {
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return true
}

func (p *phases) on(board, _ string, phase proto.Phase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.changed)
	p.changed = make(chan struct{})
	if phase == proto.PhasePrepare {
		p.preparing[board] = true
		p.prepared[board] = true
	} else {
		delete(p.preparing, board)
	}
	p.peak = max(p.peak, len(p.preparing))
	if phase == proto.PhaseCommit {
		p.commits[board]++
	}
}

// rolloutLab is n in-process sim boards and an inventory file naming them.
type rolloutLab struct {
	lab       *simlab.Lab
	inventory string
	db        string
	img       string
	phases    *phases
}

func startRolloutLab(t *testing.T, n int, failing func(i int) bool) *rolloutLab {
	t.Helper()
	l := newOTALab(t)
	pub, err := image.LoadPublicKey(l.pub)
	if err != nil {
		t.Fatal(err)
	}
	ph := newPhases()
	lab, err := simlab.Start(context.Background(), simlab.Options{Boards: n, Dir: t.TempDir(), Token: testToken, IDPrefix: labPrefix(),
		TrustKeys: []ed25519.PublicKey{pub}, OnPhase: ph.on, BootDelay: 10 * time.Millisecond,
		HealthChecks: func(i int) []string {
			if failing != nil && failing(i) {
				return []string{"echo the new image does not start its service >&2; exit 1"}
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Stop(context.Background()) })
	var inv []dispatcher.Target
	for _, b := range lab.Boards {
		inv = append(inv, dispatcher.Target{ID: b.ID, Address: b.Addr(), Model: "sim", Labels: map[string]string{"rack": "r1"}})
	}
	raw, _ := json.Marshal(inv)
	dir := t.TempDir()
	r := &rolloutLab{lab: lab, inventory: filepath.Join(dir, "lab.json"), db: filepath.Join(dir, "records.db"),
		img: l.build("2.0.0", l.base[:1<<20], "sim", nil), phases: ph}
	if err := os.WriteFile(r.inventory, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// rollout runs `boardlink rollout` against the lab with --json and
// returns the final report and the exit status.
func (r *rolloutLab) rollout(t *testing.T, flags ...string) (string, dispatcher.Report, string, int) {
	t.Helper()
	args := append([]string{"rollout", "--inventory", r.inventory, "--timeout", "0", "--db", r.db,
		"--board-timeout", "20s", "--json"}, flags...)
	if !slicesHasPrefix(flags, "--resume") {
		args = append(args, r.img)
	}
	stdout, stderr, code := cli(t, "", args...)
	return lastReport(t, stdout, stderr, code)
}

func slicesHasPrefix(flags []string, flag string) bool {
	return len(flags) > 0 && flags[0] == flag
}

func lastReport(t *testing.T, stdout, stderr string, code int) (string, dispatcher.Report, string, int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var rep struct {
		Rollout string `json:"rollout"`
		dispatcher.Report
	}
	if len(lines) == 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &rep) != nil || rep.Rollout == "" {
		t.Fatalf("rollout printed no report (exit %d):\n%s\n%s", code, stdout, stderr)
	}
	return rep.Rollout, rep.Report, stderr, code
}

// TestRollout50: 50 boards, at most 8 at once: every board commits, and
// the boards themselves never saw more than 8 preparing at once.
func TestRollout50(t *testing.T) {
	r := startRolloutLab(t, 50, nil)
	id, rep, stderr, code := r.rollout(t, "-C", "8", "--select", "rack=r1")
	if code != 0 || rep.Counts[string(proto.ResultCommitted)] != 50 {
		t.Fatalf("rollout %s: exit %d, counts %v\n%s", id, code, rep.Counts, stderr)
	}
	if r.phases.peak > 8 || r.phases.peak < 2 {
		t.Fatalf("the boards saw %d preparing at once, want 2..8", r.phases.peak)
	}
	if rep.ImageBytesRead != 1<<20 {
		t.Fatalf("the image was read for %d bytes, its payload is %d: not one read per chunk", rep.ImageBytesRead, 1<<20)
	}
	t.Logf("50 boards committed in %.1fs; at most %d preparing at once; image payload read once (%d bytes)",
		float64(rep.TookMs)/1000, r.phases.peak, rep.ImageBytesRead)
	// The records say the same, and history lists it.
	stdout, _, code := cli(t, "", "history", "--db", r.db)
	if code != 0 || !strings.Contains(stdout, id) {
		t.Fatalf("history: %d\n%s", code, stdout)
	}
}

// TestRolloutFailures: a rollback is a failure; past --max-failures no new
// board starts.
func TestRolloutFailures(t *testing.T) {
	t.Run("rollback", func(t *testing.T) {
		r := startRolloutLab(t, 4, func(i int) bool { return i == 2 })
		_, rep, stderr, code := r.rollout(t, "--max-failures", "1")
		if code == 0 || rep.Counts[string(proto.ResultRolledBack)] != 1 || rep.Counts[string(proto.ResultCommitted)] != 3 {
			t.Fatalf("exit %d, counts %v\n%s", code, rep.Counts, stderr)
		}
		for _, b := range rep.Boards {
			if b.Result == string(proto.ResultRolledBack) && !strings.Contains(b.Reason, "health check") {
				t.Fatalf("rolled back without its reason: %+v", b)
			}
		}
	})
	t.Run("max-failures", func(t *testing.T) {
		// Boards 0-4 fail their health check; one at a time, so the order is known.
		r := startRolloutLab(t, 10, func(i int) bool { return i < 5 })
		_, rep, stderr, code := r.rollout(t, "-C", "1", "--max-failures", "2")
		started := 0
		for _, b := range rep.Boards {
			if b.Result != dispatcher.ResultSkipped {
				started++
			}
		}
		if code == 0 || rep.Counts[string(proto.ResultRolledBack)] != 3 || started != 3 || rep.Counts[dispatcher.ResultSkipped] != 7 {
			t.Fatalf("exit %d, counts %v, %d boards started (want 3: none after the third failure)\n%s", code, rep.Counts, started, stderr)
		}
	})
	t.Run("board disappears", func(t *testing.T) {
		r := startRolloutLab(t, 3, nil)
		gone := r.lab.Boards[1]
		r.phases.mu.Lock()
		r.phases.preparing = map[string]bool{}
		r.phases.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Once the first board is under way, the second goes.
			if r.phases.await(ctx, func() bool { return len(r.phases.commits) > 0 || r.phases.peak > 0 }) {
				gone.Down(context.Background())
			}
		}()
		_, rep, stderr, code := r.rollout(t, "-C", "1", "--max-failures", "-1", "--board-timeout", "3s")
		cancel()
		<-done
		var b dispatcher.BoardReport
		for _, x := range rep.Boards {
			if x.ID == gone.ID {
				b = x
			}
		}
		if code == 0 || b.Result != dispatcher.ResultUnreachable || b.Attempts < 2 || rep.Counts[string(proto.ResultCommitted)] != 2 {
			t.Fatalf("exit %d, the vanished board %+v, counts %v\n%s", code, b, rep.Counts, stderr)
		}
	})
}

// TestRolloutPlanThenRun: a saved plan, run later, gives the same result
// with no plan stage.
func TestRolloutPlanThenRun(t *testing.T) {
	r := startRolloutLab(t, 5, nil)
	planFile := filepath.Join(t.TempDir(), "plan.json")
	stdout, stderr, code := cli(t, "", "rollout", "--inventory", r.inventory, "--timeout", "0", "--db", r.db,
		"--save-plan", planFile, r.img)
	if code != 0 {
		t.Fatalf("--save-plan: %d %s%s", code, stdout, stderr)
	}
	if r.phases.peak != 0 {
		t.Fatal("planning changed a board")
	}
	stdout, stderr, code = cli(t, "", "rollout", "--db", r.db, "--json", "--plan", planFile, r.img)
	_, rep, _, _ := lastReport(t, stdout, stderr, code)
	if code != 0 || rep.Counts[string(proto.ResultCommitted)] != 5 {
		t.Fatalf("--plan: exit %d, counts %v\n%s", code, rep.Counts, stderr)
	}
	if strings.Contains(stdout, `"stage":"plan"`) || !strings.Contains(stdout, `"stage":"prepare"`) {
		t.Fatalf("--plan ran a plan stage, or no prepare stage:\n%s", stdout)
	}
}

// TestRolloutResumeAfterKill kills the dispatcher (the real binary,
// SIGKILL) in the middle of a rollout, then resumes it: every board ends
// committed and no board committed twice.
func TestRolloutResumeAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the real boardlink")
	}
	r := startRolloutLab(t, 12, nil)
	bin := testenv.GoBuild(t, ".")
	// A gate that notes every board it passed on: the resumed run must
	// keep it, though --resume is not told again.
	gates := filepath.Join(t.TempDir(), "gates")
	cmd := exec.Command(bin, "rollout", "--inventory", r.inventory, "--timeout", "0", "--db", r.db, "-C", "3",
		"--gate", `exec: echo "$BOARDLINK_BOARD" >>`+gates, "--json", r.img)
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	testenv.Eventually(t, "three boards to commit", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("the rollout ended before it was killed: %v\n%s", err, out.String())
		default:
		}
		r.phases.mu.Lock()
		defer r.phases.mu.Unlock()
		return len(r.phases.commits) >= 3
	})
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	db, err := store.Open(context.Background(), r.db)
	if err != nil {
		t.Fatal(err)
	}
	rolls, err := db.Rollouts(context.Background(), 1)
	db.Close()
	if err != nil || len(rolls) != 1 {
		t.Fatalf("records after the kill: %v %v\n%s", rolls, err, out.String())
	}
	t.Logf("killed with %v", rolls[0].Summary)
	_, rep, stderr, code := r.rollout(t, "--resume", rolls[0].ID)
	if code != 0 || rep.Counts[string(proto.ResultCommitted)] != 12 {
		t.Fatalf("resumed: exit %d, counts %v\n%s", code, rep.Counts, stderr)
	}
	r.phases.mu.Lock()
	defer r.phases.mu.Unlock()
	for b, n := range r.phases.commits {
		if n != 1 {
			t.Fatalf("board %s committed %d updates", b, n)
		}
	}
	if len(r.phases.commits) != 12 {
		t.Fatalf("%d boards committed, want 12", len(r.phases.commits))
	}
	gated, err := os.ReadFile(gates)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range r.lab.Boards {
		if !strings.Contains(string(gated), b.ID+"\n") {
			t.Fatalf("the gate never ran on %s:\n%s", b.ID, gated)
		}
	}
}

// TestRolloutGate: --gate in waves of --wave boards, each trial held for
// the gate: a gate that fails on one board rolls its whole wave back and
// stops the rollout before the next wave, each board left out saying why;
// a gate that passes lets every wave through.
func TestRolloutGate(t *testing.T) {
	t.Run("fails", func(t *testing.T) {
		r := startRolloutLab(t, 6, nil)
		bad := r.lab.Boards[2].ID
		id, rep, stderr, code := r.rollout(t, "-C", "2", "--wave", "2", "--gate",
			`exec: test "$BOARDLINK_BOARD" != `+bad+` || { echo "selftest: eth0 down" >&2; exit 4; }`)
		res := map[string]dispatcher.BoardReport{}
		for _, b := range rep.Boards {
			res[b.ID] = b
		}
		if code != 1 || rep.Counts[string(proto.ResultCommitted)] != 2 || rep.Counts[string(proto.ResultRolledBack)] != 1 ||
			rep.Counts[dispatcher.ResultGateFailed] != 1 ||
			rep.Counts[dispatcher.ResultSkipped] != 2 || !strings.Contains(stderr, "gate failed in wave 2 on "+bad) {
			t.Fatalf("exit %d, counts %v\n%s", code, rep.Counts, stderr)
		}
		if b := res[bad]; !strings.Contains(b.Reason, "exit 4: selftest: eth0 down") || r.phases.commits[bad] != 0 {
			t.Fatalf("the board that failed its gate: %+v, %d commits", b, r.phases.commits[bad])
		}
		if other := r.lab.Boards[3].ID; res[other].Result != string(proto.ResultRolledBack) || r.phases.commits[other] != 0 {
			t.Fatalf("the other board of its wave: %+v, %d commits", res[other], r.phases.commits[other])
		}
		for _, b := range r.lab.Boards[4:] {
			if r.phases.prepared[b.ID] || !strings.Contains(res[b.ID].Reason, "gate failed") {
				t.Fatalf("%s, in the wave after the failure: %+v", b.ID, res[b.ID])
			}
		}
		stdout, _, code := cli(t, "", "history", "--db", r.db)
		if code != 0 || !strings.Contains(stdout, id) || !strings.Contains(stdout, store.StateStopped) {
			t.Fatalf("history: %d\n%s", code, stdout)
		}
	})
	t.Run("passes", func(t *testing.T) {
		r := startRolloutLab(t, 5, nil)
		gates := filepath.Join(t.TempDir(), "gates")
		_, rep, stderr, code := r.rollout(t, "-C", "2", "--gate", `exec: echo "$BOARDLINK_BOARD $BOARDLINK_VERSION" >>`+gates)
		if code != 0 || rep.Counts[string(proto.ResultCommitted)] != 5 {
			t.Fatalf("exit %d, counts %v\n%s", code, rep.Counts, stderr)
		}
		gated, err := os.ReadFile(gates)
		if err != nil || strings.Count(string(gated), " 2.0.0\n") != 5 {
			t.Fatalf("the gate ran: %q %v", gated, err)
		}
	})
	t.Run("usage", func(t *testing.T) {
		if _, stderr, code := cli(t, "", "rollout", "--gate", "selftest", "image"); code != exitUsage || !strings.Contains(stderr, "exec: COMMAND") {
			t.Fatalf("a gate without exec: %d %s", code, stderr)
		}
	})
}
