package simlab_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startLab starts a lab in a temporary directory and stops it when the
// test ends (checking that the stop is clean).
func startLab(t testing.TB, opts simlab.Options) *simlab.Lab {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	l, err := simlab.Start(ctxTimeout(t, time.Minute), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return l
}

// checkLeaks is testenv.CheckLeaks, after starting Go's netpoller: the
// first socket of a process starts it (an epoll fd and an eventfd, kept
// for good), which must not count as a leak.
func checkLeaks(t *testing.T) {
	t.Helper()
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	testenv.CheckLeaks(t)
}

// testToken is every test lab's token.
const testToken = "simlab-test-token"

// testOpts dial a test lab's board: its token, and its key trusted on
// first use (boards of different labs share ids, not keys).
func testOpts() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: testToken, Trust: dispatcher.NewKnownBoards("")}
}

func dial(t testing.TB, ctx context.Context, addr string) *dispatcher.Client {
	t.Helper()
	c, err := dispatcher.Dial(ctx, addr, testOpts())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestBoardsAnswer: every board is a real agent with its own id, boot id
// and address.
func TestBoardsAnswer(t *testing.T) {
	l := startLab(t, simlab.Options{Token: testToken, Boards: 3, Labels: func(i int) map[string]string {
		return map[string]string{"rack": string(rune('a' + i))}
	}})
	ctx := ctxTimeout(t, time.Minute)
	ids, boots, addrs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, b := range l.Boards {
		if b.Index != i || b.Boots() != 1 || !strings.HasPrefix(b.Addr(), "wss://127.0.0.1:") || b.Dir() == "" {
			t.Fatalf("board %d: index %d, boots %d, addr %q, dir %q", i, b.Index, b.Boots(), b.Addr(), b.Dir())
		}
		info, err := dial(t, ctx, b.Addr()).Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.ID != b.ID || info.BootID != b.BootID() || info.Model != "sim" ||
			info.Labels["rack"] != string(rune('a'+i)) || !slices.Contains(info.Capabilities, proto.CapOTA) {
			t.Errorf("board %s (boot %s) answered %+v", b.ID, b.BootID(), info)
		}
		ids[info.ID], boots[info.BootID], addrs[b.Addr()] = true, true, true
	}
	if len(ids) != 3 || len(boots) != 3 || len(addrs) != 3 {
		t.Fatalf("ids %v, boot ids %v, addresses %v: want 3 distinct of each", ids, boots, addrs)
	}
	if l.Boards[0].ID != "sim-000" || l.Boards[2].ID != "sim-002" {
		t.Fatalf("ids %s, %s", l.Boards[0].ID, l.Boards[2].ID)
	}
}

// TestReboot: system.reboot brings the board back on the same address
// with a new boot id; the others are untouched.
func TestReboot(t *testing.T) {
	l := startLab(t, simlab.Options{Token: testToken, Boards: 3, BootDelay: 10 * time.Millisecond})
	ctx := ctxTimeout(t, time.Minute)
	b := l.Boards[1]
	addr, old := b.Addr(), b.BootID()
	c := dial(t, ctx, addr)
	res, err := c.RebootWait(ctx, dispatcher.WaitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.OldBootID != old || res.NewBootID == old || res.NewBootID != b.BootID() {
		t.Fatalf("rebooted %+v; board's boot id %s (was %s)", res, b.BootID(), old)
	}
	if b.Addr() != addr || b.Boots() != 2 {
		t.Fatalf("after reboot: addr %s (was %s), boots %d", b.Addr(), addr, b.Boots())
	}
	if info, err := c.Info(ctx); err != nil || info.BootID != b.BootID() {
		t.Fatalf("info after reboot: %+v %v", info, err)
	}
	for _, o := range []*simlab.Board{l.Boards[0], l.Boards[2]} {
		if o.Boots() != 1 {
			t.Errorf("%s booted %d times", o.ID, o.Boots())
		}
	}
	t.Logf("reboot took %v (%d attempts)", res.Took.Round(time.Millisecond), res.Attempts)
}

// TestDownUp: a board taken down drops its connections and refuses new
// ones until it is up again, at the same address.
func TestDownUp(t *testing.T) {
	l := startLab(t, simlab.Options{Token: testToken, Boards: 2})
	ctx := ctxTimeout(t, time.Minute)
	b := l.Boards[0]
	addr, old := b.Addr(), b.BootID()
	c := dial(t, ctx, addr)
	if err := b.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Down(ctx); err != nil {
		t.Fatalf("second Down: %v", err)
	}
	if _, err := c.Info(ctx); err == nil {
		t.Fatal("the connection survived Down")
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if c2, err := dispatcher.Dial(short, addr, testOpts()); err == nil {
		c2.Close()
		t.Fatal("Dial succeeded while the board is down")
	}
	if _, err := dial(t, ctx, l.Boards[1].Addr()).Info(ctx); err != nil {
		t.Fatalf("the other board: %v", err)
	}
	if err := b.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Up(ctx); err != nil {
		t.Fatalf("second Up: %v", err)
	}
	info, err := dial(t, ctx, addr).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr() != addr || info.BootID == old || info.BootID != b.BootID() || b.Boots() != 2 {
		t.Fatalf("after Up: addr %s (was %s), boot %s (was %s, board says %s), boots %d",
			b.Addr(), addr, info.BootID, old, b.BootID(), b.Boots())
	}
}

// buildImage builds a signed image of random bytes for the sim model.
func buildImage(t testing.TB, key ed25519.PrivateKey, version string) *image.Image {
	t.Helper()
	payload := make([]byte, 64<<10)
	rand.Read(payload)
	im, err := image.BuildBytes(payload, image.BuildOptions{Key: key, Models: []string{"sim"}, Version: version, ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// phases records OnPhase calls by board.
type phases struct {
	mu sync.Mutex
	m  map[string][]proto.Phase
}

func (p *phases) add(board, _ string, phase proto.Phase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m[board] = append(p.m[board], phase)
}

func (p *phases) of(board string) []proto.Phase {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.m[board])
}

// TestOTA: a full update through the in-process boot loop commits; a board
// whose health check fails rolls back to its old slot.
func TestOTA(t *testing.T) {
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	seen := &phases{m: map[string][]proto.Phase{}}
	l := startLab(t, simlab.Options{Token: testToken, Boards: 3, TrustKeys: []ed25519.PublicKey{pub}, OnPhase: seen.add,
		BootDelay: 10 * time.Millisecond, HealthTimeout: 20 * time.Second,
		HealthChecks: func(i int) []string {
			if i == 2 {
				return []string{"exit 1"}
			}
			return []string{"test \"$BOARDLINK_SLOT\" = B"}
		}})
	ctx := ctxTimeout(t, 2*time.Minute)
	im := buildImage(t, priv, "1.1.0")

	good := l.Boards[0]
	c := dial(t, ctx, good.Addr())
	rep, err := c.Update(ctx, im, dispatcher.OTAOptions{})
	if err != nil {
		t.Fatalf("update %s: %v", good.ID, err)
	}
	if rep.Update == nil || rep.Update.Result != proto.ResultCommitted || rep.Reboots != 1 || good.Boots() != 2 {
		t.Fatalf("report %+v (update %+v), boots %d", rep, rep.Update, good.Boots())
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.Slots, func(s proto.Slot) bool { return s.Name == "B" && s.Booted && s.Active && s.Version == "1.1.0" }) {
		t.Fatalf("slots after the update: %+v", info.Slots)
	}
	got := seen.of(good.ID)
	want := []proto.Phase{proto.PhasePrepare, proto.PhasePrepared, proto.PhaseActivate, proto.PhaseTrial, proto.PhaseCommit, proto.PhaseDone}
	if !slices.Equal(got, want) {
		t.Fatalf("%s went through %v, want %v", good.ID, got, want)
	}

	bad := l.Boards[2]
	c = dial(t, ctx, bad.Addr())
	_, err = c.Update(ctx, im, dispatcher.OTAOptions{})
	var oerr *dispatcher.OTAError
	if !errors.As(err, &oerr) || oerr.Result != proto.ResultRolledBack || oerr.Phase != proto.PhaseTrial {
		t.Fatalf("update %s: %v, want rolled back in its trial", bad.ID, err)
	}
	if bad.Boots() != 3 {
		t.Fatalf("%s booted %d times, want 3 (the trial and the way back)", bad.ID, bad.Boots())
	}
	info, err = c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.Slots, func(s proto.Slot) bool { return s.Name == "A" && s.Booted && s.Active }) {
		t.Fatalf("slots after the rollback: %+v", info.Slots)
	}
	if got := seen.of(bad.ID); len(got) == 0 || got[0] != proto.PhasePrepare || got[len(got)-1] != proto.PhaseDone ||
		!slices.Contains(got, proto.PhaseRollback) {
		t.Fatalf("%s went through %v", bad.ID, got)
	}
	if got := seen.of(l.Boards[1].ID); len(got) != 0 {
		t.Fatalf("%s, never updated, went through %v", l.Boards[1].ID, got)
	}
	t.Logf("%s committed in %dms; %s: %v", good.ID, rep.TookMs, bad.ID, oerr)
}

// TestStopLeavesNothing: after Stop (with a connection open, a command
// running and a reboot just done), no goroutine or descriptor remains.
func TestStopLeavesNothing(t *testing.T) {
	checkLeaks(t)
	ctx := ctxTimeout(t, time.Minute)
	l, err := simlab.Start(ctx, simlab.Options{Token: testToken, Boards: 3, Dir: t.TempDir(), BootDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dispatcher.Dial(ctx, l.Boards[0].Addr(), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.RebootWait(ctx, dispatcher.WaitOptions{}); err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		res proto.ExecResult
		err error
	}
	running := make(chan outcome, 1)
	go func() {
		res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sleep", "30"}})
		running <- outcome{res, err}
	}()
	testenv.Eventually(t, "the command to start", func() bool {
		log, err := c.ExecLog(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(log, func(e proto.ExecLogEntry) bool { return e.Running })
	})
	// A reboot in flight while the lab stops.
	if _, err := dial(t, ctx, l.Boards[1].Addr()).Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := l.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if o := <-running; o.err == nil && o.res.Signal == "" {
		t.Fatalf("the command outlived the lab: %+v", o.res)
	}
	t.Logf("stopped in %v", time.Since(t0).Round(time.Millisecond))
	if err := l.Boards[0].Up(ctx); err == nil {
		t.Fatal("Up after Stop")
	}
	if err := l.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestMDNS: with Ifaces, every board advertises the daemon's record; a
// reboot announces the new boot, and a board taken down says goodbye. In a
// private network namespace, on lo.
func TestMDNS(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	l := startLab(t, simlab.Options{Token: testToken, Boards: 3, Ifaces: []string{"lo"}, Labels: func(i int) map[string]string {
		return map[string]string{"lab": "simlab"}
	}})
	ctx := ctxTimeout(t, time.Minute)
	recs, err := discovery.Browse(ctx, discovery.BrowseConfig{Ifaces: []string{"lo"}}, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("found %d boards: %+v", len(recs), recs)
	}
	for i, b := range l.Boards {
		r := recs[i] // sorted by id
		if r.ID != b.ID || r.Address != b.Addr() || r.BootID != b.BootID() || r.Model != "sim" || r.Slot != "A" ||
			r.Labels["lab"] != "simlab" || !slices.Contains(r.Capabilities, proto.CapOTA) {
			t.Errorf("%s (%s, boot %s) announced %+v", b.ID, b.Addr(), b.BootID(), r)
		}
		if _, err := dial(t, ctx, r.Address).Info(ctx); err != nil {
			t.Errorf("%s at its announced address: %v", b.ID, err)
		}
	}

	br := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: []string{"lo"}})
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer br.Stop()
	// until returns the next event for the board id, keeping the other
	// boards' events for later.
	pending := map[string][]discovery.Event{}
	until := func(id string) discovery.Event {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for len(pending[id]) == 0 {
			select {
			case ev := <-br.Events():
				pending[ev.Record.ID] = append(pending[ev.Record.ID], ev)
			case <-timeout:
				t.Fatalf("no event for %s within 10s", id)
			}
		}
		ev := pending[id][0]
		pending[id] = pending[id][1:]
		return ev
	}
	for _, b := range l.Boards {
		if ev := until(b.ID); ev.Op != discovery.Added {
			t.Fatalf("%s: %s first", b.ID, ev.Op)
		}
	}
	b := l.Boards[0]
	if _, err := dial(t, ctx, b.Addr()).RebootWait(ctx, dispatcher.WaitOptions{}); err != nil {
		t.Fatal(err)
	}
	// The goodbye of the old boot and the new boot's announcement come
	// within the browser's grace: one update, with the new boot id.
	if ev := until(b.ID); ev.Op != discovery.Updated || ev.Record.BootID != b.BootID() {
		t.Fatalf("after the reboot of %s: %s with boot %s, want updated with %s", b.ID, ev.Op, ev.Record.BootID, b.BootID())
	}
	down := l.Boards[1]
	t0 := time.Now()
	if err := down.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := until(down.ID); ev.Op != discovery.Removed {
		t.Fatalf("after Down of %s: %s", down.ID, ev.Op)
	}
	if took := time.Since(t0); took > discovery.DefaultGrace+time.Second {
		t.Fatalf("removed %v after Down: no goodbye?", took)
	}
	if err := down.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := until(down.ID); ev.Op != discovery.Added || ev.Record.BootID != down.BootID() {
		t.Fatalf("after Up of %s: %s with boot %s", down.ID, ev.Op, ev.Record.BootID)
	}
}

// TestStartFails: a lab that cannot boot every board starts none and
// leaves nothing behind.
func TestStartFails(t *testing.T) {
	checkLeaks(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "board-001"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := simlab.Start(ctxTimeout(t, time.Minute), simlab.Options{Token: testToken, Boards: 3, Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "sim-001") {
		t.Fatalf("Start = %v, %v; want sim-001's error", l, err)
	}
	if _, err := simlab.Start(context.Background(), simlab.Options{Token: testToken, Boards: 0, Dir: dir}); err == nil {
		t.Fatal("a lab of no boards started")
	}
}

// BenchmarkStart100 starts and stops a lab of 100 boards.
func BenchmarkStart100(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		l, err := simlab.Start(context.Background(), simlab.Options{Token: testToken, Boards: 100, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIdle200 measures what an idle board costs: the heap in use and
// the goroutines, with 200 boards up, per board.
func BenchmarkIdle200(b *testing.B) {
	const n = 200
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		l, err := simlab.Start(context.Background(), simlab.Options{Token: testToken, Boards: n, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		g1 := runtime.NumGoroutine()
		if err := l.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(after.HeapInuse)/n, "heap-B/board")
		b.ReportMetric((float64(after.HeapInuse)-float64(before.HeapInuse))/n, "heap-delta-B/board")
		b.ReportMetric(float64(g1-g0)/n, "goroutines/board")
	}
}
