package service

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// waitRollout follows rollout id until it is over, and returns it.
func waitRollout(t *testing.T, c *Client, st RolloutStatus) RolloutStatus {
	t.Helper()
	ctx := context.Background()
	for st.State == store.StateRunning {
		var err error
		if st, err = c.WaitRollout(ctx, st.ID, st.Updated, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// resultsOf maps the rollout's boards to their results.
func resultsOf(st RolloutStatus) map[string]string {
	m := map[string]string{}
	for _, b := range st.BoardResults {
		m[b.BoardID] = b.Result
	}
	return m
}

// TestRolloutGateThroughService: a rollout run by the service in waves of
// one board, with a gate that fails on the second board: the first
// commits, the second's trial rolls back (gate_failed), the third is never
// started; the boards it worked on read updating meanwhile, and every
// board is idle after. A rollout to a board another lease holds is
// refused.
func TestRolloutGateThroughService(t *testing.T) {
	o := startOTALab(t, 3, false)
	ctx := context.Background()
	alice := o.clients["alice"]
	b0, b1, b2 := o.sim.Boards[0].ID, o.sim.Boards[1].ID, o.sim.Boards[2].ID
	st, err := alice.StartRollout(ctx, o.img, RolloutRequest{Concurrency: 1, WaveSize: 1, MaxFailures: -1,
		Gate: fmt.Sprintf(`exec: test "$BOARDLINK_BOARD" != %s`, b1)})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != store.StateRunning || st.Boards != 3 || !strings.HasPrefix(st.ID, "r-") {
		t.Fatalf("started: %+v", st)
	}
	st = waitRollout(t, alice, st)
	got := resultsOf(st)
	if st.State != store.StateStopped || got[b0] != string(proto.ResultCommitted) || got[b1] != dispatcher.ResultGateFailed ||
		got[b2] != dispatcher.ResultSkipped {
		t.Fatalf("rollout %s: %s %v", st.ID, st.State, got)
	}
	if o.commitsOf(b0) != 1 || o.commitsOf(b1) != 0 || o.commitsOf(b2) != 0 {
		t.Fatalf("commits on the boards: %v", o.commits)
	}
	o.waitIdle()
	// The service's record of the boards' states: b0 and b1 were updating,
	// b2 never.
	for _, b := range []string{b0, b1, b2} {
		es, err := o.svc.Audit(ctx, store.AuditFilter{Board: b, Action: "board.state"})
		if err != nil {
			t.Fatal(err)
		}
		updating := false
		for _, e := range es {
			updating = updating || strings.HasSuffix(strings.SplitN(e.Detail, ":", 2)[0], "-> updating")
		}
		if updating != (b != b2) {
			t.Errorf("%s: updating %v in %+v", b, updating, es)
		}
	}
	list, err := alice.Rollouts(ctx, 10)
	if err != nil || len(list) != 1 || list[0].ID != st.ID || list[0].Summary[dispatcher.ResultSkipped] != 1 {
		t.Fatalf("rollouts: %+v %v", list, err)
	}
	// The image is not kept once the rollout is over (it is removed once
	// the state is written: an event after the one seen above).
	testenv.Eventually(t, "the rollout's image removed", func() bool {
		kept, _ := os.ReadDir(filepath.Join(o.dir, "rollouts"))
		return len(kept) == 0
	})
	var ae *APIError
	if _, err := alice.Rollout(ctx, "r-nothing"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("an unknown rollout: %v", err)
	}
	// A board bob's lease holds is refused, naming him.
	if _, err := acquire(ctx, o.clients["bob"], AcquireRequest{Boards: []string{b2}, TTLMs: 60000}); err != nil {
		t.Fatal(err)
	}
	_, err = alice.StartRollout(ctx, o.img, RolloutRequest{Boards: []string{b2}})
	leased(t, "a rollout", err, "bob")
}

// TestRolloutResumesAfterKill: `boardlink serve`, a real process, is
// killed (SIGKILL) while its rollout updates the second of two boards,
// wave by wave; started again on the same database it resumes the rollout
// and finishes it, each board committed once.
func TestRolloutResumesAfterKill(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	o := startOTALab(t, 2, true)
	b0, b1 := o.sim.Boards[0].ID, o.sim.Boards[1].ID
	reached, killed := make(chan struct{}), make(chan struct{})
	o.hold = func(board string, phase proto.Phase) {
		// The second board's prepare waits, on the board's side, for the
		// service to be killed.
		if board == b1 && phase == proto.PhasePrepare {
			close(reached)
			<-killed
		}
	}
	var once bool
	t.Cleanup(func() {
		if !once {
			close(killed)
		}
	})
	var boards strings.Builder
	for _, b := range o.sim.Boards {
		fmt.Fprintf(&boards, "  - {id: %s, address: %q}\n", b.ID, b.Addr())
	}
	cfg := filepath.Join(o.dir, "serve.yaml")
	writeSecret(t, cfg, fmt.Sprintf("token_file: %s\nheartbeat: 200ms\nusers:\n  - {name: alice, token_sha256: %x}\nboards:\n%s",
		o.cfg.TokenFile, sha256.Sum256([]byte(o.tokens["alice"])), boards.String()))
	serve := func() (*exec.Cmd, *Client, *testenv.Buffer) {
		cmd, url, stderr := serveProcess(t, cli, []string{"XDG_CONFIG_HOME=" + o.dir, "XDG_STATE_HOME=" + o.dir},
			"--config", cfg, "--listen", "127.0.0.1:0", "--db", o.db)
		c, err := NewClient(url, o.tokens["alice"], nil)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, c, stderr
	}
	ctx := context.Background()
	cmd, c, stderr := serve()
	testenv.Eventually(t, "both boards idle", func() bool {
		bs, err := c.Boards(ctx)
		return err == nil && len(bs) == 2 && bs[0].State == Idle && bs[1].State == Idle
	})
	st, err := c.StartRollout(ctx, o.img, RolloutRequest{Concurrency: 1, WaveSize: 1})
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	<-reached
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	once = true
	close(killed)
	if o.commitsOf(b0) != 1 || o.commitsOf(b1) != 0 {
		t.Fatalf("when the service was killed: commits %v", o.commits)
	}

	_, c, stderr = serve()
	st = waitRollout(t, c, st)
	if got := resultsOf(st); st.State != store.StateDone || got[b0] != string(proto.ResultCommitted) || got[b1] != string(proto.ResultCommitted) {
		t.Fatalf("after the restart: %s %v\n%s", st.State, got, stderr.String())
	}
	if o.commitsOf(b0) != 1 || o.commitsOf(b1) != 1 {
		t.Fatalf("commits on the boards: %v", o.commits)
	}
	testenv.Eventually(t, "both boards idle after the rollout", func() bool {
		bs, err := c.Boards(ctx)
		return err == nil && bs[0].State == Idle && bs[1].State == Idle
	})
}

// serveProcess starts `boardlink serve ARGS...` (cli) with env added to
// this process's, and returns it once it says where it listens, with that
// URL and its stderr. The test's end kills it.
func serveProcess(t *testing.T, cli string, env []string, args ...string) (*exec.Cmd, string, *testenv.Buffer) {
	t.Helper()
	cmd := exec.Command(cli, append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return startServe(t, cmd)
}

// startServe starts cmd, a `boardlink serve`, and returns it with the
// URL it says it listens on and its stderr.
func startServe(t *testing.T, cmd *exec.Cmd) (*exec.Cmd, string, *testenv.Buffer) {
	t.Helper()
	stderr := &testenv.Buffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	_, url, ok := strings.Cut(strings.TrimSpace(line), "listening on ")
	if err != nil || !ok {
		t.Fatalf("serve said %q (%v)\n%s", line, err, stderr.String())
	}
	return cmd, url, stderr
}

// TestRolloutWaitsForLease: a board that a lease took after the rollout
// started is not updated under its holder when its turn comes: the
// rollout's attempts wait for the lease, and the board fails naming the
// holder, never updating, never rebooted, leased throughout.
func TestRolloutWaitsForLease(t *testing.T) {
	o := startOTALab(t, 2, false)
	ctx := context.Background()
	alice, bob := o.clients["alice"], o.clients["bob"]
	b0, b1 := o.sim.Boards[0].ID, o.sim.Boards[1].ID
	reached, leased := make(chan struct{}), make(chan struct{})
	var once sync.Once
	o.mu.Lock()
	o.hold = func(board string, phase proto.Phase) {
		// The first board's prepare waits, on the board's side, for bob
		// to lease the second.
		if board == b0 && phase == proto.PhasePrepare {
			once.Do(func() { close(reached); <-leased })
		}
	}
	o.mu.Unlock()
	st, err := alice.StartRollout(ctx, o.img, RolloutRequest{Concurrency: 1, WaveSize: 1, MaxFailures: -1})
	if err != nil {
		t.Fatal(err)
	}
	<-reached
	l, err := acquire(ctx, bob, AcquireRequest{Boards: []string{b1}, TTLMs: 60000})
	close(leased)
	if err != nil {
		t.Fatal(err)
	}
	boots := o.sim.Boards[1].Boots()
	st = waitRollout(t, alice, st)
	var r1 store.BoardResult
	for _, b := range st.BoardResults {
		if b.BoardID == b1 {
			r1 = b
		}
	}
	if got := resultsOf(st); got[b0] != string(proto.ResultCommitted) || !dispatcher.RolloutFailure(got[b1]) ||
		!strings.Contains(r1.Reason, "bob") {
		t.Fatalf("rollout %s: %v, %s: %+v", st.ID, got, b1, r1)
	}
	if o.commitsOf(b1) != 0 || o.sim.Boards[1].Boots() != boots {
		t.Fatalf("the leased board was updated: %d commits, %d boots (was %d)", o.commitsOf(b1), o.sim.Boards[1].Boots(), boots)
	}
	if b, err := o.svc.Board(b1); err != nil || b.State != Leased || b.Lease != l.ID {
		t.Fatalf("%s after the rollout: %+v %v", b1, b, err)
	}
	es, err := o.svc.Audit(ctx, store.AuditFilter{Board: b1, Action: "board.state"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if strings.Contains(e.Detail, "updating") {
			t.Errorf("%s was updating under the lease: %+v", b1, e)
		}
	}
}
