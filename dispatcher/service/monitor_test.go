package service

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

func (l *lab) waitState(id string, want State) Board {
	l.t.Helper()
	var b Board
	testenv.Eventually(l.t, id+" "+string(want), func() bool {
		var err error
		b, err = l.svc.Board(id)
		return err == nil && b.State == want
	})
	return b
}

// audited waits for an entry of the service's own in the audit log.
func (l *lab) audited(board, action, detail string) store.AuditEntry {
	l.t.Helper()
	var got store.AuditEntry
	testenv.Eventually(l.t, action+" of "+board+" in the audit log", func() bool {
		es, err := l.svc.Audit(context.Background(), store.AuditFilter{Board: board, Action: action})
		if err != nil {
			l.t.Fatal(err)
		}
		for _, e := range es {
			if strings.Contains(e.Detail, detail) {
				got = e
				return true
			}
		}
		return false
	})
	return got
}

// TestHeartbeat: a board whose agent stops is seen offline, and idle
// again with its new boot id when it comes back; a leased board that
// goes and comes back is still its lease's.
func TestHeartbeat(t *testing.T) {
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute})
	l.waitIdle()
	ctx := context.Background()
	sb := l.sim.Boards[0]
	first, _ := l.svc.Board(sb.ID)
	if first.BootID != sb.BootID() || first.LastSeen.IsZero() || !first.Online {
		t.Fatalf("%+v, boot %s", first, sb.BootID())
	}
	if err := sb.Down(ctx); err != nil {
		t.Fatal(err)
	}
	off := l.waitState(sb.ID, Offline)
	if off.Online || off.Failures == 0 {
		t.Fatalf("%+v", off)
	}
	l.audited(sb.ID, "board.state", "idle -> offline")
	if err := sb.Up(ctx); err != nil {
		t.Fatal(err)
	}
	back := l.waitState(sb.ID, Idle)
	if back.BootID != sb.BootID() || back.BootID == first.BootID || back.Failures != 0 {
		t.Fatalf("back: %+v, boot %s", back, sb.BootID())
	}
	l.audited(sb.ID, "board.boot", "new boot id "+back.BootID)

	held, err := acquire(ctx, l.clients["alice"], AcquireRequest{Boards: []string{sb.ID}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if b := l.waitState(sb.ID, Offline); b.Lease != held.ID {
		t.Fatalf("the lease left the board: %+v", b)
	}
	if err := sb.Up(ctx); err != nil {
		t.Fatal(err)
	}
	l.waitState(sb.ID, Leased)
	// Sightings record the boots.
	boots, err := l.svc.st.Boots(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "three boots sighted", func() bool {
		boots, err = l.svc.st.Boots(ctx, sb.ID)
		return err == nil && len(boots) == 3
	})
}

// TestQuarantine: a board without a power driver that fails its health
// checks N times in a row is quarantined; it stays so when it comes back,
// is never leased, and a person releases it.
func TestQuarantine(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute, quarantineAfter: 3})
	l.waitIdle()
	ctx := context.Background()
	sb := l.sim.Boards[0]
	if err := sb.Down(ctx); err != nil {
		t.Fatal(err)
	}
	q := l.waitState(sb.ID, Quarantined)
	if q.Failures != 3 || !strings.Contains(q.Reason, "3 failed health checks in a row") {
		t.Fatalf("%+v", q)
	}
	if err := sb.Up(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the board back online, still quarantined", func() bool {
		b, _ := l.svc.Board(sb.ID)
		return b.Online && b.State == Quarantined
	})
	if _, err := l.clients["alice"].Acquire(ctx, AcquireRequest{Boards: []string{sb.ID}}); !strings.Contains(errString(err), "not enough free boards") {
		t.Fatalf("a quarantined board leased: %v", err)
	}
	b, err := l.clients["bob"].ReleaseQuarantine(ctx, sb.ID)
	if err != nil || b.State != Idle || b.Failures != 0 {
		t.Fatalf("%+v %v", b, err)
	}
	if _, err := l.clients["bob"].ReleaseQuarantine(ctx, sb.ID); !strings.Contains(errString(err), "is idle") {
		t.Fatalf("released twice: %v", err)
	}
	es, err := l.clients["bob"].Audit(ctx, store.AuditFilter{User: "bob", Board: sb.ID})
	if err != nil || len(es) != 2 || es[0].Action != "board.release_quarantine" || es[1].Result != "ok" {
		t.Fatalf("%+v %v", es, err)
	}
	// A rollout's board is not leased until it is done with it.
	if err := l.svc.MarkUpdating(sb.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := l.clients["alice"].Acquire(ctx, AcquireRequest{Boards: []string{sb.ID}}); !strings.Contains(errString(err), "not enough free boards") {
		t.Fatalf("an updating board leased: %v", err)
	}
	if err := l.svc.MarkUpdating(sb.ID, false); err != nil || l.waitState(sb.ID, Idle).State != Idle {
		t.Fatal(err)
	}
	// Maintenance: out of the lab until put back, kept across its state.
	if b, err := l.clients["carol"].SetMaintenance(ctx, sb.ID, MaintenanceRequest{On: true, Reason: "rewiring"}); err != nil || b.State != Maintenance {
		t.Fatalf("%+v %v", b, err)
	}
	if b, err := l.clients["carol"].SetMaintenance(ctx, sb.ID, MaintenanceRequest{}); err != nil || b.State != Idle {
		t.Fatalf("%+v %v", b, err)
	}
}

// simPower is a sim board's power: a cycle cuts it (the board goes down)
// and, unless dead, switches it on again (a new boot).
type simPower struct {
	b      *simlab.Board
	dead   atomic.Bool
	cycles atomic.Int32
}

func (p *simPower) Name() string { return "sim" }

func (p *simPower) Do(ctx context.Context, a power.Action) error {
	if a == power.Cycle || a == power.Off {
		p.cycles.Add(1)
		if err := p.b.Down(ctx); err != nil {
			return err
		}
	}
	if a == power.Off || p.dead.Load() {
		return nil
	}
	return p.b.Up(ctx)
}

// TestRecovery: a board with a power driver whose agent is killed is
// power-cycled by the service and comes back with a new boot id; one that
// never comes back is quarantined; every step is in the audit log.
func TestRecovery(t *testing.T) {
	drivers := map[string]*simPower{}
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute, recovery: RecoveryConfig{Attempts: 2, Wait: Duration(2 * time.Second)},
		power: func(sim *simlab.Lab, bc BoardConfig) (power.Driver, error) {
			for _, b := range sim.Boards {
				if b.ID == bc.ID {
					drivers[b.ID] = &simPower{b: b}
					return drivers[b.ID], nil
				}
			}
			return power.New(power.Config{})
		}})
	l.waitIdle()
	ctx := context.Background()
	sb, dead := l.sim.Boards[0], l.sim.Boards[1]
	before := sb.BootID()
	if err := sb.Down(ctx); err != nil { // the agent killed
		t.Fatal(err)
	}
	l.audited(sb.ID, "board.recover", "power-cycle")
	back := l.waitState(sb.ID, Idle)
	if back.BootID == before || back.BootID != sb.BootID() {
		t.Fatalf("back with boot %s (before %s, now %s)", back.BootID, before, sb.BootID())
	}
	l.audited(sb.ID, "board.recover", "back "+back.BootID)

	drivers[dead.ID].dead.Store(true)
	if err := dead.Down(ctx); err != nil {
		t.Fatal(err)
	}
	q := l.waitState(dead.ID, Quarantined)
	if !strings.Contains(q.Reason, "not back after 2 power cycles") || drivers[dead.ID].cycles.Load() != 2 {
		t.Fatalf("%+v, %d cycles", q, drivers[dead.ID].cycles.Load())
	}
	l.audited(dead.ID, "board.recover", "gave-up")
	// Power through the API, under no lease: the board is back on.
	drivers[dead.ID].dead.Store(false)
	if err := l.clients["alice"].Power(ctx, dead.ID, "", "on"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the board on again", func() bool {
		b, _ := l.svc.Board(dead.ID)
		return b.Online
	})
	if err := l.clients["alice"].Power(ctx, dead.ID, "", "sideways"); !strings.Contains(errString(err), "action") {
		t.Fatalf("%v", err)
	}
}

// TestDiscovery: boards that announce themselves over mDNS join the
// inventory by themselves, with their labels, and are leased by them.
func TestDiscovery(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute, mdns: true, labels: func(i int) map[string]string {
		return map[string]string{"rack": []string{"r1", "r2"}[i]}
	}})
	testenv.Eventually(t, "both boards found and idle", func() bool {
		bs := l.svc.Boards()
		return len(bs) == 2 && bs[0].State == Idle && bs[1].State == Idle
	})
	for i, b := range l.svc.Boards() {
		if b.Source != "mdns" || b.Address != l.sim.Boards[i].Addr() || b.Labels["rack"] != []string{"r1", "r2"}[i] {
			t.Fatalf("%+v", b)
		}
	}
	held, err := acquire(context.Background(), l.clients["alice"], AcquireRequest{Select: map[string]string{"rack": "r2"}})
	if err != nil || ids(held) != l.sim.Boards[1].ID {
		t.Fatalf("%+v %v", held, err)
	}
}
