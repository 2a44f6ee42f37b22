package service

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// helperEnv makes the test binary the helper process instead of running
// tests: a client of the service that runs a long command on the leased
// board, as a test script under `boardlink lease` would.
const helperEnv = "BOARDLINK_SERVICE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "exec":
		os.Exit(helperExec())
	case "simlab":
		os.Exit(helperSimlab())
	}
	os.Exit(pgtest.Main(m))
}

func helperExec() int {
	c, err := NewClient(os.Getenv("BOARDLINK_SERVER"), os.Getenv("BOARDLINK_TOKEN"), nil)
	if err != nil {
		return 3
	}
	out, err := c.Exec(context.Background(), os.Getenv("BOARDLINK_BOARDS"), os.Getenv("BOARDLINK_LEASE"),
		ExecRequest{Argv: []string{"sleep", "1000"}}, os.Stdout, os.Stderr)
	if err != nil {
		os.Stderr.WriteString("helper: " + err.Error() + "\n")
		return 4
	}
	os.Stderr.WriteString("helper: outcome: " + out.Result.Signal + " " + out.Canceled + "\n")
	return 0
}

// boardExecs is board b's command log, read from the board itself.
func (l *lab) boardExecs(i int) []proto.ExecLogEntry {
	l.t.Helper()
	ctx := context.Background()
	c, err := dispatcher.Dial(ctx, l.sim.Boards[i].Addr(), l.sim.DialOptions())
	if err != nil {
		l.t.Fatal(err)
	}
	defer c.Close()
	es, err := c.ExecLog(ctx, 0)
	if err != nil {
		l.t.Fatal(err)
	}
	return es
}

func sleeping(es []proto.ExecLogEntry) (proto.ExecLogEntry, bool) {
	for _, e := range es {
		if slices.Equal(e.Argv, []string{"sleep", "1000"}) {
			return e, true
		}
	}
	return proto.ExecLogEntry{}, false
}

// TestHolderKilled: `boardlink lease -- CMD` is killed with SIGKILL while
// CMD runs a command on the leased board through the service. The lease
// is no longer renewed and expires within the stated bound (from the
// service's own record of its last renewal and its end), the command on
// the board is killed, and the next in the queue gets the board.
func TestHolderKilled(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	const ttl = 3 * time.Second
	l := startLab(t, labOptions{boards: 2, ttl: ttl})
	l.waitIdle()
	ctx := context.Background()
	board := l.sim.Boards[0].ID

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command(cli, "--server", l.srv.URL, "lease", "--board", board, "--", self)
	holder.Env = append(os.Environ(), "BOARDLINK_TOKEN="+l.tokens["alice"], helperEnv+"=exec",
		"XDG_CONFIG_HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir())
	var stderr testenv.Buffer
	holder.Stdout, holder.Stderr = &stderr, &stderr
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := holder.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) }) // the helper, if still there

	testenv.Eventually(t, "the command running on the board", func() bool {
		e, ok := sleeping(l.boardExecs(0))
		return ok && e.Running
	})
	ls, err := l.clients["alice"].Leases(ctx, 0)
	if err != nil || len(ls) != 1 || ls[0].Holder != "alice" || ids(ls[0]) != board {
		t.Fatalf("%+v %v", ls, err)
	}
	held := ls[0]

	// Bob waits for the board.
	next, err := l.clients["bob"].Acquire(ctx, AcquireRequest{Boards: []string{board}, WaitMs: 60000})
	if err != nil || next.State != store.LeaseWaiting || next.Position != 1 {
		t.Fatalf("%+v %v", next, err)
	}
	granted := make(chan Lease, 1)
	go func() {
		g, err := l.clients["bob"].WaitGranted(ctx, next, nil)
		if err != nil {
			t.Error(err)
		}
		granted <- g
	}()

	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder.Wait()
	var got Lease
	select {
	case got = <-granted:
	case <-time.After(time.Minute): // a guard against a hang, not a bound
		t.Fatalf("bob never got the board; holder said:\n%s", stderr.String())
	}
	if ids(got) != board {
		t.Fatalf("bob got %+v", got)
	}

	old, err := l.clients["alice"].Lease(ctx, held.ID)
	if err != nil {
		t.Fatal(err)
	}
	if old.State != store.LeaseExpired {
		t.Fatalf("alice's lease: %+v", old)
	}
	late := old.Ended.Sub(old.Renewed)
	t.Logf("expired %v after its last renewal (TTL %v, stated bound %v)", late, ttl, ExpiryBound(ttl))
	if late < ttl || late > ExpiryBound(ttl) {
		t.Fatalf("expired %v after the last renewal: want between %v and %v", late, ttl, ExpiryBound(ttl))
	}
	if got.Granted.Before(old.Ended) {
		t.Fatalf("bob granted at %v, before alice's lease ended at %v", got.Granted, old.Ended)
	}
	testenv.Eventually(t, "the command killed on the board", func() bool {
		e, ok := sleeping(l.boardExecs(0))
		return ok && !e.Running && e.Signal == "TERM"
	})
	if !strings.Contains(stderr.String(), "boardlink: lease "+held.ID+": boards "+board) {
		t.Errorf("the holder did not say what it held:\n%s", stderr.String())
	}
}

// TestLeasedRefused: while alice holds a board, bob's exec and power on
// it are refused with alice and the expiry named, and so is alice's own
// exec without the lease; under the lease it runs.
func TestLeasedRefused(t *testing.T) {
	l := startLab(t, labOptions{boards: 2, ttl: 30 * time.Second})
	l.waitIdle()
	ctx := context.Background()
	board := l.sim.Boards[1].ID
	alice, bob := l.clients["alice"], l.clients["bob"]
	held, err := acquire(ctx, alice, AcquireRequest{Boards: []string{board}})
	if err != nil || held.State != store.LeaseActive {
		t.Fatalf("%+v %v", held, err)
	}
	echo := ExecRequest{Argv: []string{"echo", "hi"}}
	for _, tc := range []struct {
		name  string
		c     *Client
		lease string
	}{{"another user", bob, ""}, {"another user with the lease id", bob, held.ID}, {"the holder without the lease", alice, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.c.Exec(ctx, board, tc.lease, echo, nil, nil)
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("not refused: %v", err)
			}
			if tc.c == bob && tc.lease != "" {
				if ae.Reason != ReasonForbidden {
					t.Fatalf("%+v", ae)
				}
				return
			}
			if ae.Reason != ReasonLeased || ae.Status != 409 || ae.Leased == nil || ae.Leased.Holder != "alice" ||
				!ae.Leased.Expires.Equal(held.Expires) && ae.Leased.Expires.Before(held.Expires) {
				t.Fatalf("%+v %+v", ae, ae.Leased)
			}
			if !strings.Contains(ae.Message, "leased by alice") || !strings.Contains(ae.Message, "expires 20") {
				t.Fatalf("the message names neither the holder nor the expiry: %q", ae.Message)
			}
		})
	}
	if err := bob.Power(ctx, board, "", "cycle"); !strings.Contains(errString(err), "leased by alice") {
		t.Fatalf("power: %v", err)
	}
	var out strings.Builder
	res, err := alice.Exec(ctx, board, held.ID, echo, &out, nil)
	if err != nil || res.Result.ExitCode != 0 || out.String() != "hi\n" {
		t.Fatalf("%+v %q %v", res, out.String(), err)
	}
	// The other board is free to all.
	out.Reset()
	if _, err := bob.Exec(ctx, l.sim.Boards[0].ID, "", echo, &out, nil); err != nil || out.String() != "hi\n" {
		t.Fatalf("%q %v", out.String(), err)
	}
	// The board's own refusal comes back with its reason.
	var ae *APIError
	if _, err := bob.Exec(ctx, l.sim.Boards[0].ID, "", ExecRequest{Argv: []string{"/no/such/command"}}, nil, nil); !errors.As(err, &ae) ||
		ae.Status != 502 || ae.Reason != "not_found" {
		t.Fatalf("%v", err)
	}
	// Every action is in the audit log, refusals too.
	es, err := alice.Audit(ctx, store.AuditFilter{Board: board, Action: "board.exec"})
	if err != nil {
		t.Fatal(err)
	}
	var results []string
	for _, e := range es {
		results = append(results, e.User+":"+e.Result)
	}
	if len(es) != 4 || !strings.HasPrefix(results[0], "alice:ok") || !strings.Contains(results[1], "alice:board "+board+" is leased by alice") ||
		!strings.Contains(results[3], "bob:board "+board+" is leased by alice") {
		t.Fatalf("audit: %q", results)
	}
	acq, err := alice.Audit(ctx, store.AuditFilter{User: "alice", Action: "lease.acquire"})
	if err != nil || len(acq) != 1 || acq[0].Lease != held.ID || acq[0].Result != "ok" || acq[0].At.IsZero() {
		t.Fatalf("%+v %v", acq, err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestRestartKeepsLeases: a service stopped and started again on its
// database has its boards and its leases: the holder renews and the
// board is still refused to others.
func TestRestartKeepsLeases(t *testing.T) {
	l := startLab(t, labOptions{boards: 3, ttl: 30 * time.Second})
	l.waitIdle()
	ctx := context.Background()
	held, err := acquire(ctx, l.clients["alice"], AcquireRequest{Count: 2})
	if err != nil || held.State != store.LeaseActive {
		t.Fatalf("%+v %v", held, err)
	}
	waiting, err := l.clients["bob"].Acquire(ctx, AcquireRequest{Count: 2, WaitMs: 60000})
	if err != nil || waiting.State != store.LeaseWaiting {
		t.Fatalf("%+v %v", waiting, err)
	}
	if _, err := l.clients["carol"].SetMaintenance(ctx, l.sim.Boards[2].ID, MaintenanceRequest{On: true, Reason: "new cable"}); err != nil {
		t.Fatal(err)
	}
	l.stopService()
	l.start(nil)

	bs := l.svc.Boards()
	if len(bs) != 3 || bs[2].State != Maintenance || !strings.Contains(bs[2].Reason, "new cable") {
		t.Fatalf("%+v", bs)
	}
	testenv.Eventually(t, "the leased boards back as leased", func() bool {
		for _, id := range held.Boards {
			b, err := l.svc.Board(id)
			if err != nil || b.State != Leased || b.Lease != held.ID || b.Holder != "alice" {
				return false
			}
		}
		return true
	})
	got, err := l.clients["alice"].Renew(ctx, held.ID)
	if err != nil || got.State != store.LeaseActive || ids(got) != ids(held) {
		t.Fatalf("%+v %v", got, err)
	}
	w, err := l.clients["bob"].Lease(ctx, waiting.ID)
	if err != nil || w.State != store.LeaseWaiting || w.Position != 1 {
		t.Fatalf("%+v %v", w, err)
	}
	_, err = l.clients["bob"].Exec(ctx, held.Boards[0], "", ExecRequest{Argv: []string{"true"}}, nil, nil)
	if !strings.Contains(errString(err), "leased by alice") {
		t.Fatalf("%v", err)
	}
	if _, err := l.clients["alice"].Release(ctx, held.ID); err != nil {
		t.Fatal(err)
	}
	w, err = l.clients["bob"].WaitGranted(ctx, w, nil)
	if err != nil || ids(w) != ids(held) {
		t.Fatalf("%+v %v", w, err)
	}
}
