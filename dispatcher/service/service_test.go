package service

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// lab is a service over sim boards in this process, with its API on
// loopback and a client per user.
type lab struct {
	t           testing.TB
	sim         *simlab.Lab
	dir         string
	db          string
	cfg         Config
	svc         *Service
	srv         *httptest.Server
	clients     map[string]*Client
	stopService func()
	// killService stops the service as a killed host does: its claims
	// are not released.
	killService func()
	tokens      map[string]string
	now         func() time.Time
}

type labOptions struct {
	boards int
	labels func(i int) map[string]string
	ttl    time.Duration
	power  func(*simlab.Lab, BoardConfig) (power.Driver, error)
	// quarantineAfter is Config.QuarantineAfter (0: never, in tests).
	quarantineAfter int
	recovery        RecoveryConfig
	// mdns makes the boards advertise themselves on lo and the service
	// find them there, instead of static entries: only in
	// testenv.InPrivateLoopback.
	mdns bool
	// Several services on one database: db (default a SQLite file of the
	// lab's own), the service's owner name, the peer token's file, the
	// boards' id prefix, and the claims' clock.
	db, owner, peerTokenFile, idPrefix string
	now                                func() time.Time
	claimTTL                           time.Duration
	// trustKeys are the keys the boards take images signed by.
	trustKeys []ed25519.PublicKey
	// onPhase is the boards' simlab.Options.OnPhase.
	onPhase func(board, updateID string, phase proto.Phase)
}

// writeSecret writes a file only its owner reads.
func writeSecret(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startLab(t testing.TB, o labOptions) *lab {
	t.Helper()
	dir := t.TempDir()
	so := simlab.Options{Boards: o.boards, Dir: filepath.Join(dir, "boards"), Labels: o.labels, IDPrefix: o.idPrefix,
		TrustKeys: o.trustKeys, OnPhase: o.onPhase}
	if o.mdns {
		so.Ifaces = []string{"lo"}
	}
	sim, err := simlab.Start(context.Background(), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := sim.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	l := &lab{t: t, sim: sim, dir: dir, db: cmp.Or(o.db, filepath.Join(dir, "lab.db")), clients: map[string]*Client{},
		tokens: map[string]string{}, now: o.now}
	boardTok := filepath.Join(dir, "board-token")
	writeSecret(t, boardTok, sim.Token())
	l.cfg = Config{TokenFile: boardTok, Heartbeat: Duration(200 * time.Millisecond), QuarantineAfter: cmp.Or(o.quarantineAfter, -1),
		Leases: LeaseBounds{TTL: Duration(o.ttl)}, Recovery: o.recovery, Owner: o.owner, PeerTokenFile: o.peerTokenFile,
		ClaimTTL: Duration(o.claimTTL)}
	for _, b := range sim.Boards {
		if !o.mdns {
			l.cfg.Boards = append(l.cfg.Boards, BoardConfig{ID: b.ID, Address: b.Addr()})
		}
	}
	if o.mdns {
		l.cfg.Discovery = DiscoveryConfig{MDNS: true, Ifaces: []string{"lo"}}
	}
	for _, name := range []string{"alice", "bob", "carol"} {
		tok := "token-of-" + name
		path := filepath.Join(dir, name+".token")
		writeSecret(t, path, tok)
		l.cfg.Users = append(l.cfg.Users, UserConfig{Name: name, TokenFile: path})
		l.tokens[name] = tok
	}
	var pow func(BoardConfig) (power.Driver, error)
	if o.power != nil {
		pow = func(bc BoardConfig) (power.Driver, error) { return o.power(sim, bc) }
	}
	l.start(pow)
	return l
}

// start starts the service (again) on the lab's database.
func (l *lab) start(pow func(BoardConfig) (power.Driver, error)) {
	t := l.t
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, l.db)
	if err != nil {
		t.Fatal(err)
	}
	// The API's address is known before the service starts: it
	// advertises it to the others on the database.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.cfg.Advertise = "http://" + ln.Addr().String()
	svc, err := New(ctx, Options{Config: l.cfg, Store: st, Trust: l.sim.DialOptions().Trust, Power: pow, Now: l.now})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	l.svc = svc
	l.srv = httptest.NewUnstartedServer(svc.Handler())
	l.srv.Listener.Close()
	l.srv.Listener = ln
	l.srv.Start()
	for name, tok := range l.tokens {
		c, err := NewClient(l.srv.URL, tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.clients[name] = c
	}
	stopped := false
	end := func(how func(*Service, context.Context) error) {
		if stopped {
			return
		}
		stopped = true
		l.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := how(svc, ctx); err != nil {
			t.Error(err)
		}
		st.Close()
	}
	t.Cleanup(func() { end((*Service).Stop) })
	l.stopService = func() { end((*Service).Stop) }
	l.killService = func() { end((*Service).halt) }
}

// waitIdle waits until every board is online and idle.
// waitIdle waits until the service lists every board it owns idle.
// Another service's boards it reads only in its claim rounds, an hour
// apart in the tests of several services: what it read of them before
// they were up would never change (CI: TestRolloutPartGivenUp's "every
// board idle" on B, A's board read as B started). pairIdle waits for
// those, running the rounds.
func (l *lab) waitIdle() {
	l.t.Helper()
	testenv.Eventually(l.t, "every board of the service's idle", func() bool {
		for _, b := range l.svc.Boards() {
			if theirs := b.Owner != "" && b.Owner != l.svc.owner; !theirs && b.State != Idle {
				return false
			}
		}
		return true
	})
}

func TestStateTable(t *testing.T) {
	for _, from := range States {
		if _, ok := transitions[from]; !ok {
			t.Errorf("no transitions from %s", from)
		}
		if !from.CanBecome(from) {
			t.Errorf("%s cannot stay", from)
		}
	}
	tests := []struct {
		from, to State
		ok       bool
	}{
		{Idle, Leased, true},
		{Leased, Maintenance, false}, // a lease ends first
		{Maintenance, Leased, false},
		{Offline, Leased, true}, // a leased board coming back
		{Quarantined, Idle, true},
		{Offline, Updating, true},
	}
	for _, tc := range tests {
		if got := tc.from.CanBecome(tc.to); got != tc.ok {
			t.Errorf("%s -> %s: %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
}

func ids(l Lease) string { return strings.Join(l.Boards, ",") }

// TestCompetingClients: two clients ask for 3 boards of 5 each, in turn,
// twice over; the queue serves them in order and never gives a board to
// two leases.
func TestCompetingClients(t *testing.T) {
	l := startLab(t, labOptions{boards: 5, ttl: 5 * time.Second})
	l.waitIdle()
	ctx := context.Background()
	alice, bob := l.clients["alice"], l.clients["bob"]
	req := AcquireRequest{Count: 3, WaitMs: 60000}

	a1, err := alice.Acquire(ctx, req)
	if err != nil || a1.State != store.LeaseActive || len(a1.Boards) != 3 {
		t.Fatalf("%+v %v", a1, err)
	}
	b1, err := bob.Acquire(ctx, req)
	if err != nil || b1.State != store.LeaseWaiting || b1.Position != 1 {
		t.Fatalf("bob's first: %+v %v", b1, err)
	}
	a2, err := alice.Acquire(ctx, req)
	if err != nil || a2.State != store.LeaseWaiting || a2.Position != 2 {
		t.Fatalf("alice's second: %+v %v", a2, err)
	}
	// Two boards are free, but bob came first and claims them: a request
	// for one board waits too, behind both.
	c1, err := l.clients["carol"].Acquire(ctx, AcquireRequest{Count: 1, WaitMs: 60000})
	if err != nil || c1.State != store.LeaseWaiting || c1.Position != 3 {
		t.Fatalf("carol: %+v %v", c1, err)
	}
	if _, err := alice.Release(ctx, a1.ID); err != nil {
		t.Fatal(err)
	}
	b1, err = bob.WaitGranted(ctx, b1, nil)
	if err != nil || len(b1.Boards) != 3 {
		t.Fatalf("bob: %+v %v", b1, err)
	}
	a2, err = alice.Lease(ctx, a2.ID)
	if err != nil || a2.State != store.LeaseWaiting || a2.Position != 1 {
		t.Fatalf("alice's second after bob got his: %+v %v", a2, err)
	}
	// Two boards are free again and alice's second is first: carol's
	// one board waits behind her.
	c1, err = l.clients["carol"].Lease(ctx, c1.ID)
	if err != nil || c1.State != store.LeaseWaiting || c1.Position != 2 {
		t.Fatalf("carol after bob got his: %+v %v", c1, err)
	}
	if _, err := bob.Release(ctx, b1.ID); err != nil {
		t.Fatal(err)
	}
	a2, err = alice.WaitGranted(ctx, a2, nil)
	if err != nil {
		t.Fatal(err)
	}
	c1, err = l.clients["carol"].WaitGranted(ctx, c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(a2.Boards), c1.Boards...)
	slices.Sort(all)
	if len(slices.Compact(all)) != 4 {
		t.Fatalf("a board given twice: alice %v carol %v", a2.Boards, c1.Boards)
	}
	// The order of grants, from the service's own record.
	grants := map[string]time.Time{}
	for _, x := range []Lease{a1, b1, a2, c1} {
		got, err := alice.Lease(ctx, x.ID)
		if err != nil {
			t.Fatal(err)
		}
		grants[x.ID] = got.Granted
	}
	if !grants[a1.ID].Before(grants[b1.ID]) || !grants[b1.ID].Before(grants[a2.ID]) || grants[a2.ID].After(grants[c1.ID]) {
		t.Fatalf("grants out of order: %v", grants)
	}
	// Boards are marked leased by their leases.
	for _, b := range l.svc.Boards() {
		want := Idle
		if slices.Contains(a2.Boards, b.ID) || slices.Contains(c1.Boards, b.ID) {
			want = Leased
		}
		if b.State != want {
			t.Errorf("%s is %s, want %s", b.ID, b.State, want)
		}
	}
}

// acquire takes a lease, waiting in the queue if it must: a board that a
// loaded machine made miss a heartbeat comes back.
func acquire(ctx context.Context, c *Client, r AcquireRequest) (Lease, error) {
	r.WaitMs = 60000
	l, err := c.Acquire(ctx, r)
	if err != nil {
		return l, err
	}
	return c.WaitGranted(ctx, l, nil)
}

// TestOpenLeasesBounded: one user's open leases, held or waiting, are
// bounded: past MaxOpenLeases an acquire is refused (429, busy) rather
// than queued, and a release makes room again.
func TestOpenLeasesBounded(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	c, ctx := l.clients["alice"], context.Background()
	var first Lease
	for i := range MaxOpenLeases {
		got, err := c.Acquire(ctx, AcquireRequest{Count: 1, WaitMs: 60000, TTLMs: 60000})
		if err != nil {
			t.Fatalf("lease %d: %v", i+1, err)
		}
		if i == 0 {
			first = got
		}
	}
	_, err := c.Acquire(ctx, AcquireRequest{Count: 1, WaitMs: 60000, TTLMs: 60000})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || ae.Reason != ReasonBusy {
		t.Fatalf("lease %d: %v, want 429 busy", MaxOpenLeases+1, err)
	}
	if _, err := c.Release(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, AcquireRequest{Count: 1, WaitMs: 60000, TTLMs: 60000}); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}
