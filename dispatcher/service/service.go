package service

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/consolelog"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// Options configure a Service. Config and Store are required.
type Options struct {
	Config Config
	Store  *store.Store
	Logger *slog.Logger
	// Trust checks the boards' keys (default: the known-boards file of
	// Config.KnownBoards, else known_boards.json beside the database).
	Trust dispatcher.Trust
	// Power makes a board's power driver (default: power.New of its
	// config's power).
	Power func(BoardConfig) (power.Driver, error)
	// ConsoleDir keeps the boards' console records, one directory per
	// board (default: console/ beside the database).
	ConsoleDir string
	// MaxUpload bounds a file pushed or an image sent through the API
	// (default DefaultMaxUpload); uploads are spooled to disk beside the
	// database, never held in memory.
	MaxUpload int64
	// Listen is the address the API was asked to listen on (default
	// Config.Listen), of which the owner name's default is made: the same
	// across restarts, even with port 0. URL is where it is served
	// (default http://Listen), the advertised URL's default.
	Listen, URL string
	// Now is the clock of the boards' claims (default time.Now): the
	// services sharing a database compare their claims' times.
	Now func() time.Time
}

// Service is the lab service. Its methods are safe for concurrent use.
type Service struct {
	cfg   Config
	st    *store.Store
	log   *slog.Logger
	trust dispatcher.Trust
	users []user
	opts  Options
	// owner names this service in the database's claims; advertise is
	// where the others reach it; peerHash is the sha256 of the peer token
	// (zero: none) and peerToken the token itself.
	owner, advertise string
	peerToken        string
	peerTransport    http.RoundTripper
	peerHash         [sha256.Size]byte
	now              func() time.Time
	claimMu          sync.Mutex // one claim round at a time
	claimKick        chan struct{}

	mu      sync.Mutex
	boards  map[string]*board
	ids     []string // the boards' ids, sorted
	leases  map[string]*store.Lease
	changed chan struct{} // closed and replaced when a lease changes
	nextRun uint64        // ids of commands run through the service
	stopped bool
	closing chan struct{} // closed by Stop: long polls return

	// instances are the services sharing the database, by owner name, as
	// the last claim round read them; renewed is when this service's
	// claims were last renewed.
	instances map[string]store.Instance
	renewed   time.Time

	consoles *consolelog.Set
	// rolled are the boards each rollout run by the service marked
	// updating; rolloutChanged is closed and replaced when a rollout moves.
	rolled         map[string]map[string]bool
	rolloutChanged chan struct{}
	// partOwners are the services the waiting parts of this service's
	// rollouts wait for, as the parts loop last read them; partsKick wakes
	// that loop.
	partOwners map[string]bool
	partsKick  chan struct{}
	// partDue is when the first waiting part whose owner is away is due
	// to be given up, as the parts loop last read them (zero: none).
	partDue time.Time
	// halts stop the rollouts this service runs, by id.
	halts   map[string]*dispatcher.Halt
	kick    chan struct{} // wakes the expiry loop
	journal *journal
	uploads uploadSlots     // uploads under way, by user (ops.go)
	metrics *metrics        // nil: none
	ctx     context.Context // the service's life, from Start to Stop
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// board is one board of the inventory; the fields after mu's comment are
// guarded by Service.mu.
type board struct {
	id     string
	static *BoardConfig // nil: discovered
	power  power.Driver // nil: none

	// guarded by Service.mu
	address, source, model string
	labels                 map[string]string
	state                  State
	reason                 string
	online                 bool
	lease                  string
	bootID                 string
	agent                  string
	slots                  []proto.Slot
	lastSeen               time.Time
	failures               int
	client                 *dispatcher.Client
	runs                   map[uint64]*run // commands run through the service
	updating               int             // updates under way through the service (MarkUpdating)
	stop                   context.CancelFunc
	// local: this service reaches the board (its config or its discovery)
	// and claims it; owner is the service whose claim holds it ("": none),
	// and ownerGone when that claim expired (zero: it has not); unclaimed:
	// another's claim on it expired or was released, so no service drives
	// it.
	local     bool
	owner     string
	ownerGone time.Time
	unclaimed bool
	// hold is a lease another service granted that holds the board (its
	// Lease empty: none), as the database says.
	hold store.Hold
}

// run is a command run on a board through the service, under a lease or
// none.
type run struct {
	lease  string
	cancel context.CancelCauseFunc
}

// New makes the service from its config and its store, bringing back the
// inventory and the open leases the store holds. Nothing runs until
// Start.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.Store == nil {
		return nil, errors.New("service: Options.Store is required")
	}
	if err := o.Config.Check(); err != nil {
		return nil, err
	}
	users, err := loadUsers(o.Config.Users)
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Power == nil {
		o.Power = func(bc BoardConfig) (power.Driver, error) { return power.New(bc.Power) }
	}
	if o.MaxUpload <= 0 {
		o.MaxUpload = DefaultMaxUpload
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Listen = cmp.Or(o.Listen, o.Config.Listen)
	o.URL = cmp.Or(o.URL, "http://"+o.Listen)
	owner, err := o.Config.ownerName(o.Listen)
	if err != nil {
		return nil, err
	}
	var peerToken string
	if o.Config.PeerTokenFile != "" {
		if peerToken, err = readToken(o.Config.PeerTokenFile); err != nil {
			return nil, fmt.Errorf("%w: peer_token_file: %w", ErrBadConfig, err)
		}
	}
	if o.ConsoleDir == "" {
		o.ConsoleDir = filepath.Join(o.Store.Dir(), "console")
	}
	if o.Trust == nil {
		path := o.Config.KnownBoards
		if path == "" {
			path = filepath.Join(o.Store.Dir(), "known_boards.json")
		}
		o.Trust = dispatcher.NewKnownBoards(path)
	}
	s := &Service{cfg: o.Config, st: o.Store, log: o.Logger, trust: o.Trust, users: users, opts: o,
		boards: map[string]*board{}, leases: map[string]*store.Lease{}, changed: make(chan struct{}),
		kick: make(chan struct{}, 1), closing: make(chan struct{}), rolled: map[string]map[string]bool{},
		rolloutChanged: make(chan struct{}), owner: owner, advertise: o.Config.advertiseURL(o.URL), peerToken: peerToken,
		now: o.Now, claimKick: make(chan struct{}, 1), instances: map[string]store.Instance{}, partsKick: make(chan struct{}, 1),
		halts: map[string]*dispatcher.Halt{}}
	if peerToken != "" {
		s.peerHash = sha256.Sum256([]byte(peerToken))
	}
	if s.peerTransport, err = peerTransport(o.Config.PeerCAFile); err != nil {
		return nil, err
	}
	s.journal = newJournal(o.Store, o.Logger)
	if s.metrics, err = newMetrics(s); err != nil {
		return nil, err
	}
	s.consoles = consolelog.NewSet(o.ConsoleDir, consolelog.Options{SegmentBytes: o.Config.ConsoleBytes})
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// load brings back the stored inventory and open leases, and adds the
// static boards of the config.
func (s *Service) load(ctx context.Context) error {
	stored, err := s.st.LabBoards(ctx)
	if err != nil {
		return err
	}
	static := map[string]*BoardConfig{}
	for i := range s.cfg.Boards {
		static[s.cfg.Boards[i].ID] = &s.cfg.Boards[i]
	}
	for _, sb := range stored {
		mine := sb.Owner == "" || sb.Owner == s.owner
		if mine && sb.Source == sourceStatic && static[sb.ID] == nil {
			continue // no longer in the config
		}
		b := &board{id: sb.ID, address: sb.Address, source: sb.Source, model: sb.Model, labels: sb.Labels,
			state: Offline, bootID: sb.BootID, lastSeen: sb.LastSeen, failures: sb.Failures, local: mine}
		if !mine {
			b.owner = sb.Owner // this service drives its own once claimed
		}
		// What a person set stays; the rest is learned again.
		if st := State(sb.State); st == Maintenance || st == Quarantined {
			b.state, b.reason = st, sb.Reason
		}
		s.boards[b.id] = b
	}
	for id, bc := range static {
		b := s.boards[id]
		if b == nil {
			b = &board{id: id, state: Offline}
			s.boards[id] = b
		}
		b.static, b.address, b.source, b.model, b.labels = bc, bc.Address, sourceStatic, bc.Model, maps.Clone(bc.Labels)
		b.local = true
		d, err := s.opts.Power(*bc)
		if err != nil {
			return fmt.Errorf("%w: board %s: %w", ErrBadConfig, id, err)
		}
		if d.Name() != power.DriverNone {
			b.power = d
		}
	}
	for _, b := range s.boards {
		s.ids = append(s.ids, b.id)
	}
	slices.Sort(s.ids)

	open, err := s.st.Leases(ctx, 0)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, l := range open {
		if l.Home != "" && l.Home != s.owner {
			continue // another service's to keep
		}
		// The holders could not renew while the service was down: each
		// gets a full TTL from now.
		if fresh := now.Add(l.TTL); l.Expires.Before(fresh) {
			l.Expires = fresh
			if !l.Until.IsZero() && l.Expires.After(l.Until) {
				l.Expires = l.Until
			}
		}
		if l.State == store.LeaseActive {
			for _, id := range l.Boards {
				if b := s.boards[id]; b != nil {
					b.lease = l.ID
				}
			}
		}
		s.leases[l.ID] = &l
	}
	return nil
}

// Board sources.
const (
	sourceStatic = "static"
)

// Start starts the service's work: a monitor per board, the lease expiry
// loop, discovery when the config asks, the journal's writer, and the
// rollouts it ran that a stop or a crash left unfinished, resumed.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.ctx != nil {
		s.mu.Unlock()
		return errors.New("service: started twice")
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.cleanSpool()
	s.wg.Go(func() { s.journal.run(s.ctx) })
	s.mu.Unlock()
	// The first round claims the boards, and starts the monitors of those
	// this service wins.
	if err := s.claimRound(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wg.Go(func() { s.claimLoop(s.ctx) })
	s.wg.Go(func() { s.expiryLoop(s.ctx) })
	if s.cfg.Discovery.MDNS || s.cfg.Discovery.Serial {
		s.wg.Go(func() { s.discover(s.ctx) })
	}
	s.wg.Go(func() { s.resumeRollouts(s.ctx) })
	s.wg.Go(func() { s.partsLoop(s.ctx) })
	s.log.Info("service started", "owner", s.owner, "advertise", s.advertise, "boards", len(s.ids), "open_leases", len(s.leases))
	return nil
}

// Stop ends every monitor and loop, closes the boards' connections
// (canceling the commands run through them), writes what the journal
// holds and releases the boards' claims, for another service that
// reaches them to take at once. Open leases stay in the store, for the
// next start.
func (s *Service) Stop(ctx context.Context) error {
	err := s.halt(ctx)
	s.mu.Lock()
	started := s.ctx != nil
	s.mu.Unlock()
	if !started || err != nil {
		return err
	}
	if err := s.st.ReleaseClaims(ctx, s.owner); err != nil {
		return fmt.Errorf("service: stop: %w", err)
	}
	return nil
}

// halt is Stop without releasing the claims: what a killed host leaves
// behind, its claims expiring in the database.
func (s *Service) halt(ctx context.Context) error {
	s.mu.Lock()
	if !s.stopped {
		close(s.closing)
	}
	s.stopped = true
	cancel := s.cancel
	for _, b := range s.boards {
		for _, r := range b.runs {
			r.cancel(errServiceStopping)
		}
	}
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("service: stop: %w", ctx.Err())
	}
	s.mu.Lock()
	for _, b := range s.boards {
		if b.client != nil {
			b.client.Close()
			b.client = nil
		}
	}
	s.mu.Unlock()
	return errors.Join(s.journal.flush(ctx), s.consoles.Close())
}

var errServiceStopping = errors.New("the lab service is stopping")

// watchLocked starts b's monitor.
func (s *Service) watchLocked(b *board) {
	if b.stop != nil {
		b.stop()
	}
	ctx, cancel := context.WithCancel(s.ctx)
	b.stop = cancel
	addr := b.address
	s.wg.Go(func() { s.monitor(ctx, b, addr) })
}

// recordLocked has the journal write b's row, if this service owns b:
// the row of a board another service drives is that one's to write.
func (s *Service) recordLocked(b *board) {
	if b.owner == s.owner {
		s.journal.board(store.LabBoard{ID: b.id, Address: b.address, Source: b.source, Model: b.model,
			Labels: maps.Clone(b.labels), State: string(b.state), Reason: b.reason, BootID: b.bootID,
			Failures: b.failures, LastSeen: b.lastSeen, Owner: s.owner})
	}
}

// setStateLocked moves b to state to, if the table allows it, and records
// the move.
func (s *Service) setStateLocked(b *board, to State, reason string) error {
	if b.state == to {
		if reason != b.reason {
			b.reason = reason
			s.recordLocked(b)
		}
		return nil
	}
	if !b.state.CanBecome(to) {
		return &StateError{Board: b.id, From: b.state, To: to}
	}
	from := b.state
	b.state, b.reason = to, reason
	s.notifyLocked() // the dashboard's live pages follow board states too
	s.log.Info("board state", "board", b.id, "from", from, "to", to, "reason", reason)
	s.recordLocked(b)
	s.journal.audit(store.AuditEntry{User: serviceUser, Action: "board.state", Board: b.id, Lease: b.lease,
		Result: "ok", Detail: fmt.Sprintf("%s -> %s: %s", from, to, reason)})
	return nil
}

// serviceUser is who the audit log names for what the service did itself.
const serviceUser = "service"

// settledLocked is the state b goes back to when nothing a person set
// holds it: offline, updating (when the table allows it from where b is),
// leased or idle.
func (b *board) settledLocked() State {
	switch {
	case !b.online:
		return Offline
	case b.updating > 0 && b.state.CanBecome(Updating):
		return Updating
	case b.lease != "":
		return Leased
	}
	return Idle
}

// ExpiryBound is how late, at most, a lease ends after its holder's last
// renewal: its TTL plus this.
func ExpiryBound(ttl time.Duration) time.Duration { return ttl + expiryTick }

// expiryTick is the slack the expiry loop allows itself: it wakes at a
// deadline, and a busy machine may run it a little late.
const expiryTick = time.Second
