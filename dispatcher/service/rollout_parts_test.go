package service

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestRolloutPartWaits (Postgres): B is dead when a rollout to every
// board is started through A: A's boards commit, B's part waits, on
// record, and the parent reads running with it; A restarted (B still
// dead) keeps the part and its image; B back, A's claim round sees it
// and the part starts on B, once, however many try it (the parts loop
// and tries of A's and of another instance C at once; B asked again
// under the part's id answers the rollout it has); B's boards commit and the parent reads done, its
// image gone.
func TestRolloutPartWaits(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	a, b := startPair(t, pgtest.New(t), 2, clock, pub)
	onA := func(what string, ok func(Board) bool) {
		t.Helper()
		testenv.Eventually(t, what, func() bool {
			if err := a.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
			v, err := a.svc.Board(b.sim.Boards[0].ID)
			return err == nil && ok(v)
		})
	}
	ownIdle := func() {
		t.Helper()
		testenv.Eventually(t, "A's boards idle", func() bool {
			for _, v := range a.svc.Boards() {
				if v.Owner != "B" && v.State != Idle {
					return false
				}
			}
			return true
		})
	}
	b.waitIdle()
	ownIdle()
	onA("B's board idle on A", func(v Board) bool { return v.State == Idle && v.Owner == "B" })
	b.killService()
	clock.Add(claimTTL)
	onA("B's board offline on A", func(v Board) bool { return v.State == Offline && !v.OwnerGone.IsZero() })

	img := (&otaLab{lab: a, key: key}).image("2.0.0")
	st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{MaxFailures: -1})
	if err != nil || st.ID == "" || st.Boards != 2 || st.State != store.StateRunning || len(st.Parts) != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if p := st.Parts[0]; p.Owner != "B" || p.State != store.PartWaiting || strings.Join(p.Boards, " ") != "b-000 b-001" ||
		!strings.Contains(p.Error, "waiting for service B to come back") {
		t.Fatalf("B's part: %+v", p)
	}
	// A's boards commit; the parent runs on, for B's part.
	for st.Summary[store.ResultCommitted] < 2 {
		if st, err = a.clients["alice"].WaitRollout(ctx, st.ID, st.Updated, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	ownIdle()
	if st, err = a.clients["alice"].Rollout(ctx, st.ID); err != nil || st.State != store.StateRunning ||
		st.Parts[0].State != store.PartWaiting || st.Parts[0].Attempts != 0 {
		t.Fatalf("once A's boards committed: %+v %v", st, err)
	}
	if _, err := os.Stat(st.Image); err != nil {
		t.Fatalf("the image while a part waits: %v", err)
	}
	page := func(want string) {
		t.Helper()
		c := newDashClient(t, a.srv.URL)
		c.signIn(a.tokens["carol"])
		if _, body := c.do("GET", "/rollouts/"+st.ID, nil, nil); !strings.Contains(body, want) {
			t.Fatalf("the rollout's page lacks %q:\n%s", want, body)
		}
	}
	page(`<tr data-part="B" data-state="waiting">`)
	if rs, err := a.clients["alice"].Rollouts(ctx, 10); err != nil || len(rs) != 1 || rs[0].State != store.StateRunning {
		t.Fatalf("the list: %+v %v", rs, err)
	}

	// A restarted, B still dead: the part still waits.
	a.stopService()
	a.start(nil)
	ownIdle()
	// `boardlink rollout` follows it: it says what it waits for, and
	// Ctrl-C says what is left.
	home := t.TempDir()
	follow := func() *followingCLI {
		return startFollowing(t, cli, []string{"BOARDLINK_TOKEN=" + a.tokens["alice"], "XDG_CONFIG_HOME=" + home,
			"XDG_CACHE_HOME=" + home, "XDG_STATE_HOME=" + home}, "--server", a.srv.URL, "rollout", "--resume", st.ID)
	}
	stopped := follow()
	stopped.waitFor("waiting for service B to come back: 2 boards")
	if err := stopped.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code, out := stopped.end(); code != 130 || !strings.Contains(out, "interrupted: rollout "+st.ID+" goes on in the lab service (2 boards waiting for service B)") {
		t.Fatalf("the CLI interrupted: %d\n%s", code, out)
	}
	following := follow()
	following.waitFor("waiting for service B to come back: 2 boards")
	if st, err = a.clients["alice"].Rollout(ctx, st.ID); err != nil || st.State != store.StateRunning || st.Parts[0].State != store.PartWaiting {
		t.Fatalf("A restarted: %+v %v", st, err)
	}
	if _, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{ID: "r-mine"}); !strings.Contains(errString(err), "id") {
		t.Fatalf("a user naming the rollout's id: %v", err)
	}

	// B back: A's next round sees it alive, and the part starts there.
	b.start(nil)
	b.waitIdle()
	parts, err := a.svc.st.RolloutParts(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { a.svc.startParts(ctx, parts) }) // not yet alive for A: no try
	}
	wg.Wait()
	// Another instance, C, on the same database and the same disk, tries
	// the part too, racing A's parts loop and A's own tries.
	peer := filepath.Join(t.TempDir(), "peer.token")
	writeSecret(t, peer, "peer-secret")
	third := startLab(t, labOptions{boards: 1, ttl: time.Minute, db: a.db, peerTokenFile: peer, now: clock.Now, claimTTL: claimTTL,
		owner: "C", idPrefix: "c"})
	if err := third.svc.claimRound(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := a.svc.claimRound(ctx); err != nil { // wakes A's parts loop
			t.Error(err)
		}
	})
	for _, s := range []*Service{a.svc, a.svc, third.svc, third.svc} {
		wg.Go(func() { s.startParts(ctx, parts) })
	}
	wg.Wait()
	for st.State == store.StateRunning {
		if st, err = a.clients["alice"].WaitRollout(ctx, st.ID, st.Updated, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	p := st.Parts[0]
	if st.State != store.StateDone || p.State != store.PartStarted || p.Rollout == "" {
		t.Fatalf("once B is back: %+v", st)
	}
	page(`<a href="/rollouts/` + p.Rollout + `">`)
	t.Logf("B's part started after %d tries (%d refused)", p.Attempts, p.Refusals)
	theirs, err := b.clients["alice"].Rollout(ctx, p.Rollout)
	if err != nil || theirs.State != store.StateDone || len(theirs.BoardResults) != 2 {
		t.Fatalf("B's part: %+v %v", theirs, err)
	}
	for id, res := range resultsOf(theirs) {
		if res != store.ResultCommitted {
			t.Fatalf("%s: %s (%+v)", id, res, theirs)
		}
	}
	if code, out := following.end(); code != 0 || !strings.Contains(out, "rollout "+p.Rollout+" on service B: 2 boards") ||
		strings.Count(out, "committed") < 4 {
		t.Fatalf("the CLI that followed: %d\n%s", code, out)
	}
	// Asked again under the part's id, B answers the rollout it has.
	c, err := a.svc.peerClient("B", user{name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.StartRollout(ctx, img, RolloutRequest{ID: p.Rollout, Boards: p.Boards, MaxFailures: -1})
	if err != nil || again.ID != p.Rollout {
		t.Fatalf("a part started again: %+v %v", again, err)
	}
	all, err := b.clients["alice"].Rollouts(ctx, 10)
	if err != nil || len(all) != 2 {
		t.Fatalf("one rollout on A, one on B: %+v %v", all, err)
	}
	imageGone(t, st.Image)
}

// followingCLI is a `boardlink` run in the background whose output a
// test reads line by line as it comes.
type followingCLI struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	out   strings.Builder // every line read so far
}

// startFollowing starts the CLI cli with args, and env (NAME=value)
// added to the test's; its stdout and stderr come as one stream.
func startFollowing(t *testing.T, cli string, env []string, args ...string) *followingCLI {
	t.Helper()
	r, w := io.Pipe()
	f := &followingCLI{t: t, cmd: exec.Command(cli, args...), lines: make(chan string)}
	f.cmd.Env = append(os.Environ(), env...)
	f.cmd.Stdout, f.cmd.Stderr = w, w
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		f.cmd.Wait()
		w.Close()
	}()
	go func() {
		defer close(f.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { f.cmd.Process.Kill() })
	return f
}

// waitFor reads lines until one contains want; the CLI ending first
// fails the test.
func (f *followingCLI) waitFor(want string) {
	f.t.Helper()
	for line := range f.lines {
		f.out.WriteString(line + "\n")
		if strings.Contains(line, want) {
			return
		}
	}
	f.t.Fatalf("the CLI ended without %q:\n%s", want, f.out.String())
}

// end reads the rest until the CLI's end (the stream closes once it is
// waited for), and returns its exit code and everything it wrote.
func (f *followingCLI) end() (int, string) {
	for line := range f.lines {
		f.out.WriteString(line + "\n")
	}
	return f.cmd.ProcessState.ExitCode(), f.out.String()
}

// TestRolloutPartGivenUp (Postgres): a part whose owner is alive but
// refuses it (bob leases one of B's boards on B) is tried again, backing
// off, and given up after maxPartRefusals refusals: the parent reads
// stopped and keeps its image (for a retry) until it is stopped by hand,
// which cancels the part. A part whose owner is dead is
// cancelled when its parent's own boards stop (a gate failed), and the
// parent reads stopped.
func TestRolloutPartGivenUp(t *testing.T) {
	// Put back once the services stopped (cleanups run last first).
	old := partRetry
	t.Cleanup(func() { partRetry = old })
	partRetry = time.Millisecond // the backoff is not what is tested
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	a, b := startPair(t, pgtest.New(t), 1, clock, pub)
	b.waitIdle()
	testenv.Eventually(t, "B's board idle on A", func() bool {
		if err := a.svc.claimRound(ctx); err != nil {
			t.Fatal(err)
		}
		v, err := a.svc.Board("b-000")
		return err == nil && v.State == Idle && v.Owner == "B"
	})
	if _, err := acquire(ctx, b.clients["bob"], AcquireRequest{Boards: []string{"b-000"}}); err != nil {
		t.Fatal(err)
	}
	img := (&otaLab{lab: a, key: key}).image("2.0.0")
	st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{Boards: []string{"a-000", "b-000"}, MaxFailures: -1})
	if err != nil || len(st.Parts) != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	st = waitRollout(t, a.clients["alice"], st)
	p := st.Parts[0]
	if st.State != store.StateStopped || p.State != store.PartGivenUp || p.Refusals != maxPartRefusals ||
		p.Attempts != maxPartRefusals || !strings.Contains(p.Error, "leased by bob") || resultsOf(st)["a-000"] != store.ResultCommitted {
		t.Fatalf("a part B refuses: %+v", st)
	}
	// Its image stays for a retry, until the rollout is stopped.
	if _, err := os.Stat(st.Image); err != nil {
		t.Fatalf("the image of a rollout with a part given up: %v", err)
	}
	if st, err = a.clients["carol"].StopRollout(ctx, st.ID); err != nil || st.State != store.StateStopped ||
		st.Stop != "stopped by carol" || st.Parts[0].State != store.PartCancelled {
		t.Fatalf("stopped with its part given up: %+v %v", st, err)
	}
	imageGone(t, st.Image)

	killB(t, a, b, clock)
	testenv.Eventually(t, "A's board idle", func() bool {
		v, err := a.svc.Board("a-000")
		return err == nil && v.State == Idle
	})
	img = (&otaLab{lab: a, key: key}).image("3.0.0")
	st, err = a.clients["alice"].StartRollout(ctx, img, RolloutRequest{MaxFailures: -1, Gate: "exec: false"})
	if err != nil || len(st.Parts) != 1 || st.Parts[0].State != store.PartWaiting {
		t.Fatalf("%+v %v", st, err)
	}
	st = waitRollout(t, a.clients["alice"], st)
	if p := st.Parts[0]; st.State != store.StateStopped || p.State != store.PartCancelled || p.Attempts != 0 ||
		!strings.Contains(p.Error, "its rollout stopped") {
		t.Fatalf("a waiting part of a rollout that stopped: %+v", st)
	}
}

// imageGone waits until a rollout's image is removed: its service does
// it once the rollout reads over.
func imageGone(t *testing.T, path string) {
	t.Helper()
	testenv.Eventually(t, "the rollout's image removed", func() bool {
		_, err := os.Stat(path)
		return errors.Is(err, os.ErrNotExist)
	})
}
