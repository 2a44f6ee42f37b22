package service

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// pairIdle waits until A and B both list every board of both idle, each
// owned by its service (a-NNN by A, b-NNN by B), their claim rounds run
// by the test: each then sees the other alive.
func pairIdle(t *testing.T, a, b *lab) {
	t.Helper()
	ctx := context.Background()
	testenv.Eventually(t, "every board idle on A and on B, each its owner's", func() bool {
		for _, l := range []*lab{a, b, a} {
			if err := l.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, l := range []*lab{a, b} {
			bs := l.svc.Boards()
			if len(bs) != len(a.sim.Boards)+len(b.sim.Boards) {
				return false
			}
			for _, v := range bs {
				if v.State != Idle || v.Owner != strings.ToUpper(v.ID[:1]) {
					return false
				}
			}
		}
		return true
	})
}

// killB kills B, and waits until A, past B's claims' TTL on clock, lists
// B's first board offline.
func killB(t *testing.T, a, b *lab, clock *fakeClock) {
	t.Helper()
	b.killService()
	clock.Add(claimTTL)
	testenv.Eventually(t, "B's board offline on A", func() bool {
		if err := a.svc.claimRound(context.Background()); err != nil {
			t.Fatal(err)
		}
		v, err := a.svc.Board("b-000")
		return err == nil && v.State == Offline
	})
}

// runCLI runs the boardlink binary cli against service l as user and
// returns its exit code and output.
func runCLI(t *testing.T, cli string, l *lab, user string, args ...string) (int, string) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(cli, append([]string{"--server", l.srv.URL}, args...)...)
	cmd.Env = append(os.Environ(), "BOARDLINK_TOKEN="+l.tokens[user], "XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home,
		"XDG_STATE_HOME="+home)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// prepareHold holds, on the boards' side, the first prepare of each of
// its boards until free (at the test's end at the latest); reached[id]
// is closed as board id's begins.
type prepareHold struct {
	reached map[string]chan struct{}
	held    sync.Map
	release chan struct{}
	once    sync.Once
}

func newPrepareHold(t *testing.T, boards ...string) *prepareHold {
	h := &prepareHold{reached: map[string]chan struct{}{}, release: make(chan struct{})}
	for _, id := range boards {
		h.reached[id] = make(chan struct{})
	}
	t.Cleanup(h.free)
	return h
}

// onPhase is the boards' simlab.Options.OnPhase.
func (h *prepareHold) onPhase(board, _ string, phase proto.Phase) {
	if ch, ok := h.reached[board]; ok && phase == proto.PhasePrepare {
		if _, again := h.held.LoadOrStore(board, true); !again {
			close(ch)
			<-h.release
		}
	}
}

func (h *prepareHold) free() { h.once.Do(func() { close(h.release) }) }

// TestRolloutStop: a rollout through A to the boards of A and B, one at
// a time, is stopped by carol (`boardlink rollout stop`) while the first
// board of each service prepares (held there on the board's side): it
// answers at once, running; each board preparing is cut short with its
// update aborted, the others are never started, on A and on B's part
// alike, every one skipped naming carol; A's rollout and B's part end
// stopped, the audit of each service names carol; `boardlink rollout`
// following it says so, and its page. Stopped again, it is
// answered as it is; a rollout over is refused (409), as is a part wait
// out of bounds, naming the field.
func TestRolloutStop(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	for _, e := range sharedEngines {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			pub, key, err := image.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			hold := newPrepareHold(t, "a-000", "b-000")
			clock := &fakeClock{t: time.Now()}
			a, b := startPairWith(t, labOptions{boards: 2, db: e.db(t), trustKeys: []ed25519.PublicKey{pub}, onPhase: hold.onPhase}, clock)
			pairIdle(t, a, b)
			boots := map[string]int{}
			for _, sb := range append(a.sim.Boards, b.sim.Boards...) {
				boots[sb.ID] = sb.Boots()
			}
			img := (&otaLab{lab: a, key: key}).image("2.0.0")
			st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{Concurrency: 1, MaxFailures: -1})
			if err != nil || len(st.Parts) != 1 || st.Parts[0].State != store.PartStarted {
				t.Fatalf("%+v %v", st, err)
			}
			part := st.Parts[0].Rollout
			<-hold.reached["a-000"]
			<-hold.reached["b-000"]
			// alice follows it (`boardlink rollout --resume`).
			home := t.TempDir()
			following := startFollowing(t, cli, []string{"BOARDLINK_TOKEN=" + a.tokens["alice"], "XDG_CONFIG_HOME=" + home,
				"XDG_CACHE_HOME=" + home, "XDG_STATE_HOME=" + home}, "--server", a.srv.URL, "rollout", "--resume", st.ID)
			following.waitFor("rollout " + part + " on service B: 2 boards")

			code, out := runCLI(t, cli, a, "carol", "rollout", "stop", st.ID)
			if code != 0 || !strings.Contains(out, "rollout "+st.ID+": running; stopped by carol: the boards under way stop at their safe points") ||
				!strings.Contains(out, "rollout "+part+" on service B: 2 boards") {
				t.Fatalf("rollout stop: %d\n%s", code, out)
			}
			// One audit log for both: A's entry, and B's of A telling it (in
			// the background: the stop answered at once), once B stopped its part.
			testenv.Eventually(t, "carol's stop in the audit, of the rollout and of its part", func() bool {
				es, err := a.clients["alice"].Audit(ctx, store.AuditFilter{Action: "rollout.stop"})
				seen := map[string]bool{}
				for _, e := range es {
					for _, id := range []string{st.ID, part} {
						seen[id] = seen[id] || e.User == "carol" && e.Result == "ok" && e.Board == "" &&
							e.Detail == "rollout "+id+": stopped by carol"
					}
				}
				return err == nil && seen[st.ID] && seen[part]
			})

			following.waitFor("rollout " + st.ID + " stopped by carol: no board starts now")
			hold.free()
			st = waitRollout(t, a.clients["alice"], st)
			theirs := waitRollout(t, b.clients["alice"], RolloutStatus{Rollout: store.Rollout{ID: part, State: store.StateRunning}})
			for _, r := range []RolloutStatus{st, theirs} {
				if r.State != store.StateStopped || r.Stop != "stopped by carol" || len(r.BoardResults) != 2 {
					t.Fatalf("stopped: %+v", r)
				}
				for _, br := range r.BoardResults {
					first := strings.HasSuffix(br.BoardID, "-000")
					switch {
					case br.Result != store.ResultSkipped || !strings.Contains(br.Reason, "stopped by carol"):
						t.Errorf("%s: %+v", br.BoardID, br)
					case first && !strings.Contains(br.Reason, "during its prepare; its update aborted"):
						t.Errorf("%s, preparing when stopped: %+v", br.BoardID, br)
					case !first && (!br.Started.IsZero() || br.Attempts != 0):
						t.Errorf("%s, not started when stopped, was: %+v", br.BoardID, br)
					}
				}
			}
			for _, sb := range append(a.sim.Boards, b.sim.Boards...) {
				if sb.Boots() != boots[sb.ID] {
					t.Errorf("%s booted %d times during a rollout stopped before any activation", sb.ID, sb.Boots()-boots[sb.ID])
				}
			}
			if code, out := following.end(); code != 1 || !strings.Contains(out, "rollout "+st.ID+" stopped: stopped by carol") {
				t.Fatalf("the CLI that followed: %d\n%s", code, out)
			}
			dash := newDashClient(t, a.srv.URL)
			dash.signIn(a.tokens["alice"])
			if _, body := dash.do("GET", "/rollouts/"+st.ID, nil, nil); !strings.Contains(body, `data-state="stopped"`) ||
				!strings.Contains(body, `<span class="stop">stopped by carol</span>`) || strings.Contains(body, `id="rollout-stop"`) {
				t.Fatalf("the page of a rollout stopped:\n%s", body)
			}

			// Again, by alice: as it is, carol's.
			again, err := a.clients["alice"].StopRollout(ctx, st.ID)
			if err != nil || again.State != store.StateStopped || again.Stop != "stopped by carol" {
				t.Fatalf("stopped again: %+v %v", again, err)
			}
			a.waitIdle()
			done, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{Boards: []string{"a-001"}})
			if err != nil {
				t.Fatal(err)
			}
			done = waitRollout(t, a.clients["alice"], done)
			var ae *APIError
			if _, err := a.clients["alice"].StopRollout(ctx, done.ID); done.State != store.StateDone || !errors.As(err, &ae) ||
				ae.Status != http.StatusConflict || ae.Reason != ReasonState || !strings.Contains(ae.Message, "only a rollout under way") {
				t.Fatalf("a rollout %s stopped: %v", done.State, err)
			}
			if code, out := runCLI(t, cli, a, "alice", "rollout", "stop", done.ID); code != 1 || !strings.Contains(out, "is done") {
				t.Fatalf("rollout stop of a rollout done: %d\n%s", code, out)
			}
			for _, bad := range []int64{-1, (MaxPartWait + time.Millisecond).Milliseconds()} {
				_, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{PartWaitMs: bad})
				if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || len(ae.Fields) != 1 || ae.Fields[0].Field != "part_wait_ms" {
					t.Fatalf("part wait %d: %v", bad, err)
				}
			}
		})
	}
}

// TestRolloutPartWaitAndRetry (Postgres): B is dead when a rollout with
// a part wait of an hour starts through A: A's board commits, B's part
// waits; past the hour on the services' clock it is given up, naming B
// and since when it waited, and the rollout keeps its image. Tried
// again (from the rollout's page, which offers it) it waits afresh (a
// second retry, by `boardlink rollout retry`, is refused, as is a retry
// of a part the rollout lacks); B back, it starts there and B's board
// commits.
func TestRolloutPartWaitAndRetry(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	a, b := startPair(t, pgtest.New(t), 1, clock, pub)
	pairIdle(t, a, b)
	killB(t, a, b, clock)
	img := (&otaLab{lab: a, key: key}).image("2.0.0")
	st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{MaxFailures: -1, PartWaitMs: time.Hour.Milliseconds()})
	if err != nil || len(st.Parts) != 1 || st.Parts[0].State != store.PartWaiting {
		t.Fatalf("%+v %v", st, err)
	}
	since := st.Parts[0].Waiting
	for st.Summary[store.ResultCommitted] < 1 {
		if st, err = a.clients["alice"].WaitRollout(ctx, st.ID, st.Updated, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if st.State != store.StateRunning || st.Parts[0].State != store.PartWaiting {
		t.Fatalf("within its part wait: %+v", st)
	}
	clock.Add(time.Hour)
	testenv.Eventually(t, "B's part given up", func() bool {
		if err := a.svc.claimRound(ctx); err != nil { // wakes the parts loop: a part is due to be given up
			t.Fatal(err)
		}
		if st, err = a.clients["alice"].Rollout(ctx, st.ID); err != nil {
			t.Fatal(err)
		}
		return st.Parts[0].State == store.PartGivenUp
	})
	st = waitRollout(t, a.clients["alice"], st) // A's own board's end written
	if p := st.Parts[0]; st.State != store.StateStopped || !strings.Contains(p.Error, "service B was not back within 1h0m0s") ||
		!strings.Contains(p.Error, since.UTC().Format(time.RFC3339)) {
		t.Fatalf("given up: %+v", st)
	}
	if _, err := os.Stat(st.Image); err != nil {
		t.Fatalf("the image of a rollout whose part was given up: %v", err)
	}

	// The rollout's page offers carol a retry of B's part, and a stop.
	page := "/rollouts/" + st.ID
	dash := newDashClient(t, a.srv.URL)
	dash.signIn(a.tokens["carol"])
	if _, body := dash.do("GET", page, nil, nil); !strings.Contains(body, `<tr data-part="B" data-state="given_up">`) ||
		!strings.Contains(body, `data-retry="B"`) || !strings.Contains(body, `id="rollout-stop"`) {
		t.Fatalf("the page of a rollout whose part was given up:\n%s", body)
	}
	resp, body := dash.do("POST", page+"/parts/B/retry", url.Values{"csrf": {dash.csrf(page)}}, dash.sameSite())
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != page {
		t.Fatalf("retry from the page: %s\n%s", resp.Status, body)
	}
	if _, body := dash.do("GET", page, nil, nil); !strings.Contains(body, `<tr data-part="B" data-state="waiting">`) ||
		strings.Contains(body, `data-retry="B"`) {
		t.Fatalf("the page of a part tried again:\n%s", body)
	}
	testenv.Eventually(t, "carol's retry in the audit", func() bool {
		es, err := a.clients["alice"].Audit(ctx, store.AuditFilter{Action: "rollout.retry_part", User: "carol"})
		return err == nil && len(es) == 1 && es[0].Detail == "rollout "+st.ID+": its part on B (dashboard)" && es[0].Result == "ok"
	})
	code, out := runCLI(t, cli, a, "bob", "rollout", "retry", st.ID, "B")
	if code != 1 || !strings.Contains(out, "its part on B is waiting; only a part given up is tried again") {
		t.Fatalf("rollout retry of a part waiting: %d\n%s", code, out)
	}
	var ae *APIError
	if _, err := a.clients["bob"].RetryPart(ctx, st.ID, "C"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("a part the rollout lacks: %v", err)
	}
	if ps, err := a.svc.st.RolloutParts(ctx, st.ID); err != nil || !ps[0].Waiting.Equal(clock.Now().Truncate(0)) || ps[0].Refusals != 0 {
		t.Fatalf("tried again: %+v %v", ps, err)
	}

	b.start(nil)
	testenv.Eventually(t, "B's part started", func() bool {
		for _, l := range []*lab{b, a} {
			if err := l.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if st, err = a.clients["alice"].Rollout(ctx, st.ID); err != nil {
			t.Fatal(err)
		}
		return st.Parts[0].State == store.PartStarted
	})
	st = waitRollout(t, a.clients["alice"], st)
	theirs, err := b.clients["alice"].Rollout(ctx, st.Parts[0].Rollout)
	if err != nil || st.State != store.StateDone || resultsOf(theirs)["b-000"] != store.ResultCommitted {
		t.Fatalf("retried: %+v; B's: %+v %v", st, theirs, err)
	}
	imageGone(t, st.Image)
}

// TestRolloutStopReachesOwnerAway (Postgres): a rollout through A to B's
// boards runs as B's part; B is killed while its first board prepares
// (held on the board's side), and the rollout is stopped through A. The
// stop waits on record: B restarted resumes its part stopped, its first
// board's update (begun before the kill) aborted, the second never
// started, and the rollout reads stopped.
func TestRolloutStopReachesOwnerAway(t *testing.T) {
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	hold := newPrepareHold(t, "b-000")
	clock := &fakeClock{t: time.Now()}
	a, b := startPairWith(t, labOptions{boards: 2, db: pgtest.New(t), trustKeys: []ed25519.PublicKey{pub}, onPhase: hold.onPhase}, clock)
	pairIdle(t, a, b)
	img := (&otaLab{lab: a, key: key}).image("2.0.0")
	st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{Boards: []string{"b-000", "b-001"}, Concurrency: 1})
	if err != nil || len(st.Parts) != 1 || st.Parts[0].State != store.PartStarted {
		t.Fatalf("%+v %v", st, err)
	}
	part := st.Parts[0].Rollout
	<-hold.reached["b-000"]
	b.killService()
	if st, err = a.clients["carol"].StopRollout(ctx, st.ID); err != nil || st.State != store.StateRunning || st.Stop != "stopped by carol" {
		t.Fatalf("stopped with B away: %+v %v", st, err)
	}
	hold.free()
	if theirs, _, err := a.svc.st.Rollout(ctx, part); err != nil || theirs.State != store.StateRunning || theirs.Stop != "stopped by carol" {
		t.Fatalf("B's part while B is away: %+v %v", theirs, err)
	}
	b.start(nil)
	st = waitRollout(t, a.clients["alice"], st)
	theirs, err := b.clients["alice"].Rollout(ctx, part)
	if err != nil || st.State != store.StateStopped || theirs.State != store.StateStopped {
		t.Fatalf("B back: %+v; B's part: %+v %v", st, theirs, err)
	}
	for _, br := range theirs.BoardResults {
		if br.Result != store.ResultSkipped || !strings.HasPrefix(br.Reason, "stopped by carol") ||
			br.BoardID == "b-000" && !strings.HasSuffix(br.Reason, "its update aborted") ||
			br.BoardID == "b-001" && !br.Started.IsZero() {
			t.Errorf("%s: %+v", br.BoardID, br)
		}
	}
}

// TestRolloutStopThroughAnother: a rollout A runs on its own boards is
// stopped through B: B answers at once, the stop on record; A reads it at
// its next claim round and stops its boards.
func TestRolloutStopThroughAnother(t *testing.T) {
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	hold := newPrepareHold(t, "a-000")
	clock := &fakeClock{t: time.Now()}
	a, b := startPairWith(t, labOptions{boards: 2, db: filepath.Join(t.TempDir(), "lab.db"), trustKeys: []ed25519.PublicKey{pub},
		onPhase: hold.onPhase}, clock)
	pairIdle(t, a, b)
	img := (&otaLab{lab: a, key: key}).image("2.0.0")
	st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{Boards: []string{"a-000", "a-001"}, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	<-hold.reached["a-000"]
	if st, err = b.clients["carol"].StopRollout(ctx, st.ID); err != nil || st.State != store.StateRunning || st.Stop != "stopped by carol" {
		t.Fatalf("stopped through B: %+v %v", st, err)
	}
	if err := a.svc.claimRound(ctx); err != nil {
		t.Fatal(err)
	}
	hold.free()
	st = waitRollout(t, a.clients["alice"], st)
	if r := resultsOf(st); st.State != store.StateStopped || r["a-000"] != store.ResultSkipped || r["a-001"] != store.ResultSkipped {
		t.Fatalf("stopped through B: %+v", st)
	}
}

// TestRolloutResumeLeavesItsRunAlone: a service's resume of its unfinished
// rollouts may read the rollouts after one was started (it runs beside the
// start, and a slow start reads late). It must leave a rollout that already
// runs to that run: two runs of one rollout each drove its boards, and a
// stop halted one run only (TestRolloutStop failed so, about 1 in 18 runs in
// CI: the other run retried the aborted board, failed it, and started the
// next). Here the resume comes while the first board prepares; it returns
// at once, and a stop then ends the rollout as if there were no resume.
func TestRolloutResumeLeavesItsRunAlone(t *testing.T) {
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	hold := newPrepareHold(t, "a-000")
	a := startLab(t, labOptions{boards: 2, idPrefix: "a", trustKeys: []ed25519.PublicKey{pub}, onPhase: hold.onPhase})
	t.Cleanup(hold.free) // before the lab stops, which waits for what the hold holds
	a.waitIdle()
	img := (&otaLab{lab: a, key: key}).image("2.0.0")
	alice := a.clients["alice"]
	st, err := alice.StartRollout(ctx, img, RolloutRequest{Concurrency: 1, MaxFailures: -1})
	if err != nil {
		t.Fatal(err)
	}
	<-hold.reached["a-000"]
	resumed := make(chan struct{})
	go func() {
		a.svc.resumeRollouts(ctx) // as a start whose resume reads late: it finds st running
		close(resumed)
	}()
	// A second run would try a-000 again (and wait there on the held
	// update): its attempt is recorded as it begins.
	var now RolloutStatus
	testenv.Eventually(t, "the resume to return, or a second run to begin", func() bool {
		select {
		case <-resumed:
			return true
		default:
		}
		if now, err = alice.Rollout(ctx, st.ID); err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(now.BoardResults, func(br store.BoardResult) bool { return br.Attempts > 1 })
	})
	if now, err = alice.Rollout(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	for _, br := range now.BoardResults {
		if br.Result != "" || br.BoardID == "a-001" && br.Attempts != 0 || br.BoardID == "a-000" && br.Attempts != 1 {
			t.Fatalf("after the resume, before the stop: %+v", now.BoardResults)
		}
	}
	if _, err := alice.StopRollout(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	hold.free()
	st = waitRollout(t, alice, st)
	if st.State != store.StateStopped {
		t.Fatalf("stopped: %+v", st)
	}
	for _, br := range st.BoardResults {
		switch {
		case br.Result != store.ResultSkipped:
			t.Errorf("%s: %+v", br.BoardID, br)
		case br.BoardID == "a-000" && (br.Attempts != 1 || !strings.Contains(br.Reason, "during its prepare; its update aborted")):
			t.Errorf("a-000, preparing when stopped: %+v", br)
		case br.BoardID == "a-001" && (!br.Started.IsZero() || br.Attempts != 0):
			t.Errorf("a-001, not started when stopped, was: %+v", br)
		}
	}
}
