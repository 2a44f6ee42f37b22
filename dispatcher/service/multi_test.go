package service

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

// fakeClock is the claims' clock of the services of a test: it moves
// only when the test moves it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// claimTTL is the claims' TTL in these tests: on the fake clock, and so
// long on the real one that the services' own rounds never come during a
// test, which runs them itself.
const claimTTL = time.Hour

// sharedEngines are the databases two services of one test share: a
// SQLite file, and a database of the test binary's Postgres.
var sharedEngines = []struct {
	name string
	db   func(testing.TB) string
}{
	{"sqlite", func(t testing.TB) string { return filepath.Join(t.TempDir(), "lab.db") }},
	{"postgres", pgtest.New},
}

// startPair starts services A and B on database db, each with n sim
// boards of its own (a-NNN, b-NNN) that take images signed by keys, with
// one peer token and their claims on clock.
func startPair(t testing.TB, db string, n int, clock *fakeClock, keys ...ed25519.PublicKey) (a, b *lab) {
	t.Helper()
	return startPairWith(t, labOptions{boards: n, db: db, trustKeys: keys}, clock)
}

// startPairWith is startPair with the boards, database, keys and board
// hooks of o.
func startPairWith(t testing.TB, o labOptions, clock *fakeClock) (a, b *lab) {
	t.Helper()
	peer := filepath.Join(t.TempDir(), "peer.token")
	writeSecret(t, peer, "peer-secret")
	o.ttl, o.peerTokenFile, o.now, o.claimTTL = time.Minute, peer, clock.Now, claimTTL
	o.owner, o.idPrefix = "A", "a"
	a = startLab(t, o)
	o.owner, o.idPrefix = "B", "b"
	return a, startLab(t, o)
}

// TestTwoServices: services A and B on one database, each with boards of
// its own. A lists B's boards with B as their owner; a lease taken
// through A on a board of B's works end to end (a command's output comes
// back through A, B refuses the board to others and records the real
// user); B killed (its claims not released) shows its boards offline on
// A, naming B, once its claims expire on the clock; B restarted claims
// them again.
func TestTwoServices(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	for _, e := range sharedEngines {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			pub, key, err := image.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			clock := &fakeClock{t: time.Now()}
			a, b := startPair(t, e.db(t), 2, clock, pub)
			onB := b.sim.Boards[0].ID

			seenFromA := func(what string, ok func(Board) bool) Board {
				t.Helper()
				var v Board
				testenv.Eventually(t, what, func() bool {
					if err := a.svc.claimRound(ctx); err != nil {
						t.Fatal(err)
					}
					var err error
					v, err = a.svc.Board(onB)
					return err == nil && ok(v)
				})
				return v
			}
			seenFromA("B's board idle on A, owned by B", func(v Board) bool { return v.State == Idle && v.Owner == "B" })
			if v, err := a.svc.Board(a.sim.Boards[0].ID); err != nil || v.Owner != "A" {
				t.Fatalf("A's own board: %+v %v", v, err)
			}

			held, err := acquire(ctx, a.clients["alice"], AcquireRequest{Boards: []string{onB}})
			if err != nil || held.State != store.LeaseActive || held.Home != "A" {
				t.Fatalf("%+v %v", held, err)
			}
			var out bytes.Buffer
			res, err := a.clients["alice"].Exec(ctx, onB, held.ID, ExecRequest{Argv: []string{"echo", "hello from B"}}, &out, nil)
			if err != nil || res.Result.ExitCode != 0 || out.String() != "hello from B\n" {
				t.Fatalf("exec through A: %+v %q %v", res, out.String(), err)
			}
			var stream bytes.Buffer
			res, err = a.clients["alice"].ExecStream(ctx, onB, held.ID, ExecStreamRequest{Stdin: true,
				ExecRequest: ExecRequest{Argv: []string{"cat"}}}, ExecIO{Stdin: strings.NewReader("over the socket\n"), Stdout: &stream})
			if err != nil || res.Result.ExitCode != 0 || stream.String() != "over the socket\n" {
				t.Fatalf("exec stream through A: %+v %q %v", res, stream.String(), err)
			}
			_, err = b.clients["bob"].Exec(ctx, onB, "", ExecRequest{Argv: []string{"true"}}, nil, nil)
			if !strings.Contains(errString(err), "leased by alice") {
				t.Fatalf("bob on B, on a board A leased to alice: %v", err)
			}
			// The owner records each exec once its answer is out.
			var execs []store.AuditEntry
			testenv.Eventually(t, "three execs in the audit log", func() bool {
				execs, err = b.clients["alice"].Audit(ctx, store.AuditFilter{Action: "board.exec", Board: onB})
				return err == nil && len(execs) >= 3
			})
			if len(execs) != 3 {
				t.Fatalf("one record per exec, by the owner: %+v", execs)
			}
			alices := 0
			for _, e := range execs {
				switch {
				case e.User == "alice" && e.Result == "ok" && e.Lease == held.ID:
					alices++
				case e.User == "bob" && strings.Contains(e.Result, "leased by alice"):
				default:
					t.Fatalf("%+v", e)
				}
			}
			if alices != 2 {
				t.Fatalf("alice's execs: %+v", execs)
			}

			// The peer header counts only with the peer token.
			req, _ := http.NewRequestWithContext(ctx, "POST", b.srv.URL+"/api/v1/boards/"+onB+"/exec", strings.NewReader(`{"argv":["true"]}`))
			req.Header.Set("Authorization", "Bearer not-the-peer-token")
			req.Header.Set(PeerUserHeader, "alice")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("a forged peer request: %s", resp.Status)
			}
			if _, err := a.clients["alice"].Release(ctx, held.ID); err != nil {
				t.Fatal(err)
			}

			// A lease of B's, not renewed, is ended by A once B vanished.
			orphan := store.Lease{ID: "l-orphan", Seq: 1 << 40, Holder: "bob", State: store.LeaseActive, Count: 1, Home: "B",
				TTL: time.Second, Created: time.Now(), Renewed: time.Now(), Expires: time.Now()}
			if err := a.svc.st.PutLease(ctx, orphan); err != nil {
				t.Fatal(err)
			}
			b.killService()
			if err := a.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
			if l, err := a.clients["bob"].Lease(ctx, orphan.ID); err != nil || l.State != store.LeaseActive {
				t.Fatalf("B's lease while B's claims hold: %+v %v", l, err)
			}
			clock.Add(claimTTL)
			v := seenFromA("B's board offline on A, B named", func(v Board) bool { return v.State == Offline && !v.OwnerGone.IsZero() })
			if v.Owner != "B" || !strings.Contains(v.Reason, "its owner B vanished") {
				t.Fatalf("%+v", v)
			}
			if l, err := a.clients["bob"].Lease(ctx, orphan.ID); err != nil || l.State != store.LeaseExpired ||
				!strings.Contains(l.EndReason, "its home service B vanished") {
				t.Fatalf("B's lease once B vanished: %+v %v", l, err)
			}
			_, err = a.clients["alice"].Exec(ctx, onB, "", ExecRequest{Argv: []string{"true"}}, nil, nil)
			if !strings.Contains(errString(err), "owner B vanished") {
				t.Fatalf("exec on a vanished owner's board: %v", err)
			}
			testenv.Eventually(t, "the refusal in the audit log", func() bool {
				es, err := a.clients["alice"].Audit(ctx, store.AuditFilter{Action: "board.exec", Board: onB})
				return err == nil && len(es) > 0 && strings.Contains(es[0].Result, "owner B vanished")
			})

			b.start(nil)
			seenFromA("B's board back on A, owned by B", func(v Board) bool { return v.State == Idle && v.Owner == "B" && v.OwnerGone.IsZero() })
			if err := b.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
			if v, err := b.svc.Board(onB); err != nil || v.Owner != "B" {
				t.Fatalf("B's own board on B: %+v %v", v, err)
			}

			// One rollout through A to every board: A runs it on its own,
			// and starts B's share on B; the CLI follows both to their end.
			img := (&otaLab{lab: a, key: key}).image("2.0.0")
			home := t.TempDir()
			run := cliRunner(t, cli, "--server", a.srv.URL, "BOARDLINK_TOKEN="+a.tokens["alice"], "BOARDLINK_LEASE=",
				"XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home, "XDG_STATE_HOME="+home)
			stdout, stderr, code := run("rollout", img, "--max-failures", "-1")
			if code != 0 || !strings.Contains(stderr, "on service B: 2 boards") || strings.Count(stdout+stderr, "committed") < 4 {
				t.Fatalf("rollout through the CLI: %d\n%s\n%s", code, stdout, stderr)
			}
			b.waitIdle()
			testenv.Eventually(t, "every board idle on A after the update", func() bool {
				if err := a.svc.claimRound(ctx); err != nil {
					t.Fatal(err)
				}
				for _, v := range a.svc.Boards() {
					if v.State != Idle {
						return false
					}
				}
				return true
			})
			img = (&otaLab{lab: a, key: key}).image("3.0.0")
			st, err := a.clients["alice"].StartRollout(ctx, img, RolloutRequest{MaxFailures: -1})
			if err != nil || st.Boards != 2 || len(st.Parts) != 1 || st.Parts[0].Owner != "B" || st.Parts[0].Rollout == "" ||
				st.Parts[0].Error != "" || strings.Join(st.Parts[0].Boards, " ") != "b-000 b-001" {
				t.Fatalf("%+v %v", st, err)
			}
			mine := waitRollout(t, a.clients["alice"], st)
			theirs := waitRollout(t, b.clients["alice"], RolloutStatus{Rollout: store.Rollout{ID: st.Parts[0].Rollout, State: store.StateRunning}})
			for _, r := range []RolloutStatus{mine, theirs} {
				if r.State != store.StateDone || len(r.BoardResults) != 2 {
					t.Fatalf("%+v", r)
				}
				for id, res := range resultsOf(r) {
					if res != store.ResultCommitted {
						t.Fatalf("%s: %s (%+v)", id, res, r)
					}
				}
			}
		})
	}
}

// TestGrantConflict: B leases its board to bob before A has heard of it;
// alice's request through A for the same board is refused by the
// database (A's grant is undone and her lease waits), and is granted once
// bob releases the board and A's next round reads it free.
func TestGrantConflict(t *testing.T) {
	for _, e := range sharedEngines {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			a, b := startPair(t, e.db(t), 1, &fakeClock{t: time.Now()})
			onB := b.sim.Boards[0].ID
			testenv.Eventually(t, "B's board idle on A", func() bool {
				if err := a.svc.claimRound(ctx); err != nil {
					t.Fatal(err)
				}
				v, err := a.svc.Board(onB)
				return err == nil && v.State == Idle
			})

			bobs, err := acquire(ctx, b.clients["bob"], AcquireRequest{Boards: []string{onB}})
			if err != nil || bobs.State != store.LeaseActive {
				t.Fatalf("%+v %v", bobs, err)
			}
			if v, err := a.svc.Board(onB); err != nil || v.State != Idle {
				t.Fatalf("A has not heard of bob's lease yet: %+v %v", v, err)
			}
			alices, err := a.clients["alice"].Acquire(ctx, AcquireRequest{Boards: []string{onB}, WaitMs: 60000})
			if err != nil || alices.State != store.LeaseWaiting || alices.Seq <= bobs.Seq {
				t.Fatalf("alice's lease, refused by the database, waits after bob's: %+v %v", alices, err)
			}
			if ls, err := a.clients["alice"].Leases(ctx, 0); err != nil || len(ls) != 2 || ls[0].ID != bobs.ID || ls[1].ID != alices.ID {
				t.Fatalf("A lists both open leases in queue order: %+v %v", ls, err)
			}
			if _, err := a.clients["bob"].Release(ctx, bobs.ID); !strings.Contains(errString(err), "kept by another service") {
				t.Fatalf("bob's lease released through A: %v", err)
			}
			if _, err := b.clients["bob"].Release(ctx, bobs.ID); err != nil {
				t.Fatal(err)
			}
			if err := a.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := a.clients["alice"].WaitGranted(ctx, alices, nil)
			if err != nil || got.State != store.LeaseActive || ids(got) != onB {
				t.Fatalf("%+v %v", got, err)
			}
		})
	}
}

// BenchmarkExecThroughPeer runs `true` on a board of B's, in turn through
// B (its owner) and through A (which forwards it to B with the peer
// token), on one Postgres, and reports each and their ratio: what the
// forwarding costs a command.
func BenchmarkExecThroughPeer(bm *testing.B) {
	ctx := context.Background()
	a, b := startPair(bm, pgtest.New(bm), 1, &fakeClock{t: time.Now()})
	onB := b.sim.Boards[0].ID
	if err := a.svc.claimRound(ctx); err != nil {
		bm.Fatal(err)
	}
	req := ExecRequest{Argv: []string{"true"}}
	var owner, forwarded time.Duration
	exec := func(c *Client) time.Duration {
		start := time.Now()
		if res, err := c.Exec(ctx, onB, "", req, nil, nil); err != nil || res.Result.ExitCode != 0 {
			bm.Fatalf("%+v %v", res, err)
		}
		return time.Since(start)
	}
	testenv.Eventually(bm, "B's board online", func() bool {
		_, err := b.clients["alice"].Exec(ctx, onB, "", req, nil, nil)
		return err == nil
	})
	n := 0
	for bm.Loop() {
		owner += exec(b.clients["alice"])
		forwarded += exec(a.clients["alice"])
		n++
	}
	bm.ReportMetric(float64(owner.Microseconds())/float64(n), "owner-µs/exec")
	bm.ReportMetric(float64(forwarded.Microseconds())/float64(n), "forwarded-µs/exec")
	bm.ReportMetric(float64(forwarded)/float64(owner), "forwarded/owner")
}

// TestDashboardTwoServices: the dashboard of service A acts on the boards
// of service B (one database): a board's page shows B's view (its power
// driver) and its console, live; a power button switches it through B,
// which records alice once; a form without its token is refused by A;
// B's refusal (a board bob holds) comes back; B killed, a power post on
// A is refused and recorded by A, and the console stream refused.
func TestDashboardTwoServices(t *testing.T) {
	for _, e := range sharedEngines {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			clock := &fakeClock{t: time.Now()}
			db := e.db(t)
			peer := filepath.Join(t.TempDir(), "peer.token")
			writeSecret(t, peer, "peer-secret")
			o := labOptions{boards: 1, ttl: time.Minute, db: db, peerTokenFile: peer, now: clock.Now, claimTTL: claimTTL,
				owner: "A", idPrefix: "a"}
			a := startLab(t, o)
			drv := &simPower{}
			o.owner, o.idPrefix = "B", "b"
			o.power = func(sim *simlab.Lab, bc BoardConfig) (power.Driver, error) {
				if bc.ID != sim.Boards[0].ID {
					return power.New(bc.Power)
				}
				drv.b = sim.Boards[0]
				return drv, nil
			}
			b := startLab(t, o)
			// B again, with a board on a serial line (its console recorded
			// as B's reader of the line would).
			b.stopService()
			b.cfg.Boards = append(b.cfg.Boards, BoardConfig{ID: "b-uart", Address: "serial://" + filepath.Join(b.dir, "no-such-tty")})
			b.start(func(bc BoardConfig) (power.Driver, error) { return o.power(b.sim, bc) })
			onB := b.sim.Boards[0].ID
			testenv.Eventually(t, "B's boards on A, owned by B", func() bool {
				if err := a.svc.claimRound(ctx); err != nil {
					t.Fatal(err)
				}
				v, err := a.svc.Board(onB)
				u, uerr := a.svc.Board("b-uart")
				return err == nil && uerr == nil && v.State == Idle && v.Owner == "B" && u.Owner == "B"
			})
			rec, err := b.svc.consoles.Log("b-uart")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rec.Write([]byte("U-Boot on B\r\n")); err != nil {
				t.Fatal(err)
			}

			c := newDashClient(t, a.srv.URL)
			c.signIn(a.tokens["alice"])
			// A's boards page filters by the service that drives a board.
			_, boards := c.do("GET", "/?owner=B", nil, nil)
			if got := strings.Join(rows(boardRow, boards), " "); got != onB+" b-uart" ||
				!strings.Contains(boards, `<option selected>B</option>`) || !strings.Contains(boards, `<option>A</option>`) {
				t.Fatalf("B's boards on A's dashboard: %s\n%s", got, boards)
			}
			page := "/boards/" + onB
			if _, body := c.do("GET", page, nil, nil); !strings.Contains(body, `id="power-cycle"`) ||
				!strings.Contains(body, "driver configured") {
				t.Fatalf("B's board on A's dashboard has no power buttons:\n%s", body)
			}
			tok := c.csrf(page)
			path := page + "/power"
			if resp, body := c.do("POST", path, url.Values{"action": {"cycle"}, "csrf": {tok + "x"}}, c.sameSite()); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("a bad form token, on A: %s\n%s", resp.Status, body)
			}
			if n := drv.cycles.Load(); n != 0 {
				t.Fatalf("%d cycles after a refused post", n)
			}
			resp, body := c.do("POST", path, url.Values{"action": {"cycle"}, "csrf": {tok}}, c.sameSite())
			if resp.StatusCode != http.StatusSeeOther || drv.cycles.Load() == 0 {
				t.Fatalf("power cycle through A: %s, %d cycles\n%s", resp.Status, drv.cycles.Load(), body)
			}
			powers := func() []store.AuditEntry {
				es, err := b.svc.Audit(ctx, store.AuditFilter{Board: onB, Action: "board.power"})
				if err != nil {
					t.Fatal(err)
				}
				return es
			}
			if es := powers(); len(es) != 1 || es[0].User != "alice" || es[0].Result != "ok" || es[0].Detail != "cycle" {
				t.Fatalf("the cycle is recorded once, by B: %+v", es)
			}

			// A board bob holds through B: B's refusal comes back, recorded by B.
			held, err := acquire(ctx, b.clients["bob"], AcquireRequest{Boards: []string{onB}})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.svc.claimRound(ctx); err != nil {
				t.Fatal(err)
			}
			resp, body = c.do("POST", path, url.Values{"action": {"off"}, "csrf": {tok}}, c.sameSite())
			if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "leased by bob") {
				t.Fatalf("power of bob's board through A: %s\n%s", resp.Status, body)
			}
			if es := powers(); len(es) != 2 || es[0].User != "alice" || !strings.Contains(es[0].Result, "leased by bob") {
				t.Fatalf("the refusal is recorded once, by B: %+v", es)
			}
			if _, err := b.clients["bob"].Release(ctx, held.ID); err != nil {
				t.Fatal(err)
			}

			// A command run on B's board shows in its page's log on A.
			if _, err := a.clients["alice"].Exec(ctx, onB, "", ExecRequest{Argv: []string{"echo", "via-A"}}, nil, nil); err != nil {
				t.Fatal(err)
			}
			// (B records it once its answer is out.)
			testenv.Eventually(t, "the command in the page's log on A", func() bool {
				_, body := c.do("GET", page, nil, nil)
				return strings.Contains(body, "echo via-A")
			})

			// B's console, on A's page and A's live stream.
			if _, body := c.do("GET", "/boards/b-uart", nil, nil); !strings.Contains(body, "U-Boot on B") {
				t.Fatalf("B's console on A's page:\n%s", body)
			}
			resp, sc := openStream(t, c, "/live/boards/b-uart/console")
			var text strings.Builder
			if ev := nextEvent(t, sc); ev.name != "reset" {
				t.Fatalf("first event %+v", ev)
			}
			if _, err := rec.Write([]byte("Starting kernel on B\r\n")); err != nil {
				t.Fatal(err)
			}
			for !strings.Contains(text.String(), "Starting kernel on B") {
				var s string
				if err := json.Unmarshal([]byte(nextEvent(t, sc).data), &s); err != nil {
					t.Fatal(err)
				}
				text.WriteString(s)
			}
			resp.Body.Close()
			if !strings.Contains(text.String(), "U-Boot on B") {
				t.Fatalf("the stream's recent record: %q", text.String())
			}

			// B vanished: A refuses, and records the refusal itself.
			b.killService()
			clock.Add(claimTTL)
			testenv.Eventually(t, "B's board offline on A", func() bool {
				if err := a.svc.claimRound(ctx); err != nil {
					t.Fatal(err)
				}
				v, err := a.svc.Board(onB)
				return err == nil && !v.OwnerGone.IsZero()
			})
			resp, body = c.do("POST", path, url.Values{"action": {"cycle"}, "csrf": {tok}}, c.sameSite())
			if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "owner B vanished") {
				t.Fatalf("power through A, B gone: %s\n%s", resp.Status, body)
			}
			e := a.audited(onB, "board.power", "cycle (dashboard)")
			if e.User != "alice" || !strings.Contains(e.Result, "owner B vanished") {
				t.Fatalf("%+v", e)
			}
			if resp, _ := c.do("GET", "/live/boards/b-uart/console", nil, nil); resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("console stream, B gone: %s", resp.Status)
			}
			if resp, body := c.do("GET", "/boards/b-uart", nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "owner B vanished") {
				t.Fatalf("B's serial board's page, B gone: %s\n%s", resp.Status, body)
			}
		})
	}
}

// TestMetricsSharedDatabase: services A and B on one database, each with
// two boards, and a board whose owner C released it: each reports the
// boards it owns, and A (first by name) the one no service drives, so
// that the sum of their scrapes is the lab; so too for a running
// rollout's boards; B killed, A reports B's boards, offline, and their
// rollout results once B's claims expire.
func TestMetricsSharedDatabase(t *testing.T) {
	for _, e := range sharedEngines {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			clock := &fakeClock{t: time.Now()}
			a, b := startPair(t, e.db(t), 2, clock)
			if err := a.svc.st.PutLabBoard(ctx, store.LabBoard{ID: "c-000", State: string(Idle), Owner: "C"}); err != nil {
				t.Fatal(err)
			}
			settled := func(l *lab, want map[string]State) func() bool {
				return func() bool {
					if err := l.svc.claimRound(ctx); err != nil {
						t.Fatal(err)
					}
					for id, st := range want {
						if v, err := l.svc.Board(id); err != nil || v.State != st {
							return false
						}
					}
					return true
				}
			}
			all := map[string]State{"a-000": Idle, "a-001": Idle, "b-000": Idle, "b-001": Idle, "c-000": Offline}
			testenv.Eventually(t, "every board on A", settled(a, all))
			testenv.Eventually(t, "every board on B", settled(b, all))

			// boards sums boardlink_boards by state, and lists the boards
			// of boardlink_board_last_seen_timestamp_seconds, over scrapes.
			boards := func(ls ...*lab) (map[State]int, []string) {
				n := map[State]int{}
				var seen []string
				for _, l := range ls {
					m := scrape(t, l.srv.URL, l.tokens["alice"])
					for _, st := range States {
						n[st] += int(m.value(t, "boardlink_boards", "state="+string(st)))
					}
					for _, s := range m["boardlink_board_last_seen_timestamp_seconds"].GetMetric() {
						seen = append(seen, s.GetLabel()[0].GetValue())
					}
				}
				slices.Sort(seen)
				return n, seen
			}
			if n, seen := boards(a); n[Idle] != 2 || n[Offline] != 1 || strings.Join(seen, " ") != "a-000 a-001" {
				t.Errorf("A: %v %v", n, seen)
			}
			if n, seen := boards(b); n[Idle] != 2 || n[Offline] != 0 || strings.Join(seen, " ") != "b-000 b-001" {
				t.Errorf("B: %v %v", n, seen)
			}
			if n, seen := boards(a, b); n[Idle] != 4 || n[Offline] != 1 || len(seen) != 4 {
				t.Errorf("A and B: %v %v", n, seen)
			}

			// A running rollout's boards: each service reports those it
			// owns, A the one no service claims.
			ro := store.Rollout{ID: store.NewRolloutID(), Version: "2.0.0"}
			if err := a.svc.st.CreateRollout(ctx, ro); err != nil {
				t.Fatal(err)
			}
			for _, br := range []store.BoardResult{{BoardID: "a-000", Phase: store.PhaseDone, Result: store.ResultCommitted},
				{BoardID: "b-000", Phase: store.PhaseDone, Result: store.ResultFailed}, {BoardID: "x-000", Phase: store.PhasePrepare}} {
				br.RolloutID = ro.ID
				if err := a.svc.st.PutBoard(ctx, br); err != nil {
					t.Fatal(err)
				}
			}
			// rollout sums the rollout's boards and failed boards over scrapes.
			rollout := func(ls ...*lab) (n, failed float64) {
				for _, l := range ls {
					m := scrape(t, l.srv.URL, l.tokens["alice"])
					for _, s := range m["boardlink_rollout_boards"].GetMetric() {
						n += s.GetGauge().GetValue()
					}
					failed += m.metric("boardlink_rollout_failed_boards", "rollout="+ro.ID).GetGauge().GetValue()
				}
				return n, failed
			}
			for _, c := range []struct {
				name      string
				ls        []*lab
				n, failed float64
			}{{"A", []*lab{a}, 2, 0}, {"B", []*lab{b}, 1, 1}, {"A and B", []*lab{a, b}, 3, 1}} {
				if n, failed := rollout(c.ls...); n != c.n || failed != c.failed {
					t.Errorf("%s: rollout boards %v, failed %v; want %v, %v", c.name, n, failed, c.n, c.failed)
				}
			}

			b.killService()
			clock.Add(claimTTL)
			testenv.Eventually(t, "B's boards offline on A", settled(a, map[string]State{"b-000": Offline, "b-001": Offline}))
			if n, seen := boards(a); n[Idle] != 2 || n[Offline] != 3 || len(seen) != 4 {
				t.Errorf("A, B gone: %v %v", n, seen)
			}
			if n, failed := rollout(a); n != 3 || failed != 1 {
				t.Errorf("A, B gone: rollout boards %v, failed %v", n, failed)
			}
		})
	}
}

// TestRolloutDialsItsOwnBoard: a board's address is the view of the
// service that drives it, so another service's board may have the same
// (each service in a network namespace of its own, its boards on its
// loopback). B's inventory holds C's board a-999, listed before B's own,
// at the address of B's board: a rollout on B dials B's board, and
// commits.
func TestRolloutDialsItsOwnBoard(t *testing.T) {
	ctx := context.Background()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	_, b := startPair(t, filepath.Join(t.TempDir(), "lab.db"), 1, clock, pub)
	own := b.sim.Boards[0]
	if err := b.svc.st.PutLabBoard(ctx, store.LabBoard{ID: "a-999", Address: own.Addr(), State: string(Idle), Owner: "C"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "C's board on B, and B's own board idle and B's", func() bool {
		if err := b.svc.claimRound(ctx); err != nil {
			t.Fatal(err)
		}
		v, err := b.svc.Board("a-999")
		mine, err2 := b.svc.Board(own.ID)
		return err == nil && v.Owner == "C" && err2 == nil && mine.Owner == "B" && mine.State == Idle
	})
	img := (&otaLab{lab: &lab{t: t, dir: t.TempDir()}, key: key}).image("2.0.0")
	alice := b.clients["alice"]
	st, err := alice.StartRollout(ctx, img, RolloutRequest{Boards: []string{own.ID}, MaxFailures: -1})
	if err != nil {
		t.Fatal(err)
	}
	st = waitRollout(t, alice, st)
	if got := resultsOf(st); got[own.ID] != store.ResultCommitted {
		t.Fatalf("rollout %s: %s %v %+v", st.ID, st.State, got, st.BoardResults)
	}
}
