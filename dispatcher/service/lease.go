package service

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
)

// AcquireRequest asks for boards: those with every label of Select (the
// key "model" is the model), or among the ids of Boards, Count of them.
type AcquireRequest struct {
	Select map[string]string `json:"select,omitempty" validate:"max=32,dive,keys,required,max=128,endkeys,max=256"`
	Boards []string          `json:"boards,omitempty" validate:"max=1024,dive,required,max=63"`
	// Count is how many boards (default: every one of Boards, else 1).
	Count int `json:"count,omitempty" validate:"min=0,max=1024"`
	// ForMs is how long the lease lasts at most (default the config's
	// default_for); TTLMs how long it lives without a renewal (default
	// the config's ttl); WaitMs how long it may wait in the queue (0:
	// it is granted at once or not at all).
	ForMs  int64 `json:"for_ms,omitempty" validate:"min=0"`
	TTLMs  int64 `json:"ttl_ms,omitempty" validate:"min=0"`
	WaitMs int64 `json:"wait_ms,omitempty" validate:"min=0"`
}

// RenewRequest renews a lease, optionally with a new TTL.
type RenewRequest struct {
	TTLMs int64 `json:"ttl_ms,omitempty" validate:"min=0"`
}

// Lease is a lease as the API shows it: the stored lease, and its place
// in the queue while it waits.
type Lease struct {
	store.Lease
	// TTLMs is how long it lives without a renewal.
	TTLMs int64 `json:"ttl_ms"`
	// Position is its place in the queue (1: next), while waiting.
	Position int `json:"position,omitempty"`
	// Addresses are the granted boards' addresses, in the order of Boards.
	Addresses []string `json:"addresses,omitempty"`
}

// Errors of leases a caller branches on.
var (
	// ErrNoSuchLease: no lease has that id.
	ErrNoSuchLease = errors.New("no such lease")
	// ErrNotHolder: the lease is someone else's.
	ErrNotHolder = errors.New("the lease is another user's")
	// ErrLeaseEnded: the lease has ended (released, expired, timed out).
	ErrLeaseEnded = errors.New("the lease has ended")
	// ErrUnsatisfiable: fewer boards match than the count asked.
	ErrUnsatisfiable = errors.New("not enough boards match")
	// ErrNoSuchBoard: no board of the inventory has that id.
	ErrNoSuchBoard = errors.New("no such board")
	// ErrNotAvailable: a lease that would not wait found no free boards.
	ErrNotAvailable = errors.New("not enough free boards")
	// ErrTooManyLeases: the user holds or waits for MaxOpenLeases already.
	ErrTooManyLeases = errors.New("too many open leases")
	// ErrElsewhere: another service sharing the database keeps the lease
	// (it was queued there) or drives the board a rollout names: ask it.
	ErrElsewhere = errors.New("kept by another service")
)

// MaxOpenLeases bounds the leases one user holds or waits for at once: the
// queue, and what the service keeps for it, stay bounded whatever a
// client does.
const MaxOpenLeases = 256

// LeasedError refuses an action on a board another lease holds.
type LeasedError struct {
	Board   string    `json:"board"`
	Lease   string    `json:"lease"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

func (e *LeasedError) Error() string {
	return fmt.Sprintf("board %s is leased by %s (lease %s, expires %s unless renewed)",
		e.Board, e.Holder, e.Lease, e.Expires.UTC().Format(time.RFC3339))
}

// FieldError is a request field that is wrong for the service's bounds.
type FieldError struct{ Field, Message string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

func newLeaseID() string {
	var b [6]byte
	rand.Read(b[:])
	return "l-" + hex.EncodeToString(b[:])
}

// Acquire queues a request for boards and grants it at once if it can:
// the lease returned is active, or waiting with its position.
func (s *Service) Acquire(ctx context.Context, holder string, r AcquireRequest) (Lease, error) {
	lb := s.cfg.Leases
	ttl := time.Duration(r.TTLMs) * time.Millisecond
	if ttl == 0 {
		ttl = lb.TTL.D()
	}
	if ttl < time.Second || ttl > lb.MaxTTL.D() {
		return Lease{}, &FieldError{"ttl_ms", fmt.Sprintf("must be between 1000 and %d", lb.MaxTTL.D().Milliseconds())}
	}
	span := time.Duration(r.ForMs) * time.Millisecond
	if span == 0 {
		span = lb.DefaultFor.D()
	}
	if span > lb.MaxFor.D() {
		return Lease{}, &FieldError{"for_ms", fmt.Sprintf("must be at most %d", lb.MaxFor.D().Milliseconds())}
	}
	wait := time.Duration(r.WaitMs) * time.Millisecond
	if wait > lb.MaxWait.D() {
		return Lease{}, &FieldError{"wait_ms", fmt.Sprintf("must be at most %d", lb.MaxWait.D().Milliseconds())}
	}
	count := r.Count
	if count == 0 {
		count = max(len(r.Boards), 1)
	}
	if len(r.Boards) > 0 && count > len(r.Boards) {
		return Lease{}, &FieldError{"count", fmt.Sprintf("must be at most the %d boards named", len(r.Boards))}
	}
	now := time.Now()
	l := &store.Lease{ID: newLeaseID(), Holder: holder, State: store.LeaseWaiting, Selector: r.Select,
		WantIDs: slices.Compact(slices.Sorted(slices.Values(r.Boards))), Count: count, TTL: ttl,
		Created: now, Renewed: now, Expires: now.Add(ttl), Until: now.Add(span)}
	if wait > 0 {
		l.WaitUntil = now.Add(wait)
	}
	// The queue is the database's, shared by the services on it.
	seq, err := s.st.NextLeaseSeq(ctx)
	if err != nil {
		return Lease{}, err
	}
	l.Seq, l.Home = seq, s.owner
	s.mu.Lock()
	defer s.mu.Unlock()
	open := 0
	for _, o := range s.leases {
		if o.Holder == holder {
			open++
		}
	}
	if open >= MaxOpenLeases {
		return Lease{}, fmt.Errorf("%w: %s has %d", ErrTooManyLeases, holder, open)
	}
	for _, id := range l.WantIDs {
		if s.boards[id] == nil {
			return Lease{}, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
		}
	}
	if n := s.matchingLocked(l); n < count {
		return Lease{}, fmt.Errorf("%w: %d of %d asked (select %v, boards %v)", ErrUnsatisfiable, n, count, r.Select, r.Boards)
	}
	s.leases[l.ID] = l
	s.scheduleLocked(now)
	if l.State == store.LeaseWaiting && wait == 0 {
		delete(s.leases, l.ID)
		s.scheduleLocked(now) // its claims held others back
		return Lease{}, fmt.Errorf("%w: %d asked, and the request does not wait", ErrNotAvailable, count)
	}
	if err := s.st.PutLease(ctx, *l); err != nil {
		s.endLocked(l, store.LeaseReleased, "not stored: "+err.Error(), now)
		return Lease{}, err
	}
	s.kickExpiry()
	return s.viewLocked(l), nil
}

// matchingLocked counts the boards of the inventory l could ever get.
func (s *Service) matchingLocked(l *store.Lease) int {
	n := 0
	for _, id := range s.ids {
		if matches(l, id, s.boards[id]) {
			n++
		}
	}
	return n
}

// matches reports whether board b (id) fits lease l.
func matches(l *store.Lease, id string, b *board) bool {
	if len(l.WantIDs) > 0 && !slices.Contains(l.WantIDs, id) {
		return false
	}
	return dispatcher.Selector(l.Selector).Match(dispatcher.Target{ID: id, Model: b.model, Labels: b.labels})
}

// scheduleLocked grants waiting leases in queue order. A lease that
// cannot be granted yet claims the free boards it could take, so that a
// later lease never takes them: first come, first served, with leases
// for other boards passing it.
func (s *Service) scheduleLocked(now time.Time) {
	claimed := map[string]bool{}
	for _, l := range s.queueLocked() {
		var free []string
		for _, id := range s.ids {
			b := s.boards[id]
			if !claimed[id] && b.state == Idle && b.lease == "" && matches(l, id, b) {
				free = append(free, id)
			}
		}
		if len(free) < l.Count || !s.grantLocked(l, free[:l.Count], now) {
			// A refused grant (another service granted one of them first)
			// leaves them aside until the next round tells which.
			for _, id := range free {
				claimed[id] = true
			}
		}
	}
}

// queueLocked is the waiting leases, first come first.
func (s *Service) queueLocked() []*store.Lease {
	var q []*store.Lease
	for _, l := range s.leases {
		if l.State == store.LeaseWaiting {
			q = append(q, l)
		}
	}
	slices.SortFunc(q, func(a, b *store.Lease) int { return int(a.Seq - b.Seq) })
	return q
}

// grantLocked gives l the boards ids; a command still running on one of
// them through the service (from before the lease) is canceled. The grant
// is stored first: one the store refuses (another service granted one of
// the boards, ErrConflict) is undone and l stays queued.
func (s *Service) grantLocked(l *store.Lease, ids []string, now time.Time) bool {
	queued := *l
	span := l.Until.Sub(l.Created)
	l.State, l.Boards, l.Granted, l.Renewed = store.LeaseActive, slices.Clone(ids), now, now
	l.Until = now.Add(span) // the span runs from the grant
	l.Expires = minTime(now.Add(l.TTL), l.Until)
	if err := s.st.PutLease(context.Background(), *l); err != nil {
		*l = queued
		if errors.Is(err, store.ErrConflict) {
			s.log.Info("grant refused: another service holds a board", "lease", l.ID, "err", err)
		} else {
			s.log.Error("grant not stored", "lease", l.ID, "err", err)
		}
		return false
	}
	s.metrics.leaseGranted(now.Sub(l.Created))
	for _, id := range ids {
		b := s.boards[id]
		b.lease = l.ID
		s.must(s.setStateLocked(b, Leased, "lease "+l.ID+" of "+l.Holder))
		for _, r := range b.runs {
			if r.lease != l.ID {
				r.cancel(fmt.Errorf("board %s: leased by %s", id, l.Holder))
			}
		}
		s.journal.audit(store.AuditEntry{At: now, User: l.Holder, Action: "lease.grant", Board: id, Lease: l.ID, Result: "ok"})
	}
	s.notifyLocked()
	s.kickExpiry()
	return true
}

// endLocked ends lease l: its boards go back (idle, unless they are
// offline or a person holds them), the commands it runs through the
// service are canceled, and the queue moves on.
func (s *Service) endLocked(l *store.Lease, state, reason string, now time.Time) {
	l.State, l.Ended, l.EndReason = state, now, reason
	delete(s.leases, l.ID)
	for _, id := range l.Boards {
		b := s.boards[id]
		if b == nil || b.lease != l.ID {
			continue
		}
		b.lease = ""
		for _, r := range b.runs {
			if r.lease == l.ID {
				r.cancel(fmt.Errorf("lease %s %s: %s", l.ID, state, reason))
			}
		}
		if b.state == Leased {
			s.must(s.setStateLocked(b, b.settledLocked(), "lease "+l.ID+" "+state))
		}
	}
	s.persistLocked(l)
	s.journal.audit(store.AuditEntry{At: now, User: l.Holder, Action: "lease.end", Lease: l.ID, Result: state,
		Detail: fmt.Sprintf("%s; boards %v", reason, l.Boards)})
	s.scheduleLocked(now)
	s.notifyLocked()
}

// persistLocked writes l to the store; a lease is written as it changes,
// so that a restarted service knows it.
func (s *Service) persistLocked(l *store.Lease) {
	if err := s.st.PutLease(context.Background(), *l); err != nil {
		s.log.Error("lease not stored", "lease", l.ID, "err", err)
	}
}

// notifyLocked wakes those waiting on a change of a lease or of a
// board's state (lease waiters, the dashboard's live pages).
func (s *Service) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Service) kickExpiry() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func minTime(a, b time.Time) time.Time {
	if !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// viewLocked is l as the API shows it.
func (s *Service) viewLocked(l *store.Lease) Lease {
	v := view(*l)
	v.Selector, v.WantIDs, v.Boards = maps.Clone(l.Selector), slices.Clone(l.WantIDs), slices.Clone(l.Boards)
	if l.State == store.LeaseWaiting {
		v.Position = 1
		for _, o := range s.leases {
			if o.State == store.LeaseWaiting && o.Seq < l.Seq {
				v.Position++
			}
		}
	}
	for _, id := range l.Boards {
		if b := s.boards[id]; b != nil {
			v.Addresses = append(v.Addresses, b.address)
		} else {
			v.Addresses = append(v.Addresses, "")
		}
	}
	return v
}

// view is l as the API shows it, without what only an open lease has.
func view(l store.Lease) Lease { return Lease{Lease: l, TTLMs: l.TTL.Milliseconds()} }

// heldLocked is open lease id, which who holds (or, an admin, may act
// on).
func (s *Service) heldLocked(ctx context.Context, who user, id string) (*store.Lease, error) {
	l, err := s.lookupLocked(ctx, id)
	if err != nil {
		return nil, err
	}
	if s.leases[id] == nil {
		return nil, fmt.Errorf("lease %s: %w (%s)", id, ErrElsewhere, l.Home)
	}
	if l.Holder != who.name && !who.admin {
		return nil, fmt.Errorf("lease %s: %w (%s)", l.ID, ErrNotHolder, l.Holder)
	}
	return l, nil
}

// lookupLocked finds an open lease, this service's or (from the
// database) another's, or says how it ended.
func (s *Service) lookupLocked(ctx context.Context, id string) (*store.Lease, error) {
	if l := s.leases[id]; l != nil {
		return l, nil
	}
	old, err := s.st.GetLease(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("lease %s: %w", id, ErrNoSuchLease)
	}
	if err != nil {
		return nil, err
	}
	if old.Open() {
		return &old, nil
	}
	return nil, fmt.Errorf("lease %s: %w: %s at %s (%s)", id, ErrLeaseEnded, old.State,
		old.Ended.Format(time.RFC3339), old.EndReason)
}

// Renew extends lease id by its TTL (or a new one), up to its end. A
// waiting lease is kept in the queue the same way.
func (s *Service) Renew(ctx context.Context, who user, id string, r RenewRequest) (Lease, error) {
	ttl := time.Duration(r.TTLMs) * time.Millisecond
	if ttl != 0 && (ttl < time.Second || ttl > s.cfg.Leases.MaxTTL.D()) {
		return Lease{}, &FieldError{"ttl_ms", fmt.Sprintf("must be between 1000 and %d", s.cfg.Leases.MaxTTL.D().Milliseconds())}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := s.heldLocked(ctx, who, id)
	if err != nil {
		return Lease{}, err
	}
	if ttl != 0 {
		l.TTL = ttl
	}
	s.renewLocked(l, time.Now())
	return s.viewLocked(l), nil
}

func (s *Service) renewLocked(l *store.Lease, now time.Time) {
	l.Renewed = now
	l.Expires = now.Add(l.TTL)
	if l.State == store.LeaseActive {
		l.Expires = minTime(l.Expires, l.Until)
	}
	s.persistLocked(l)
}

// Release ends lease id at its holder's (or an admin's) request.
func (s *Service) Release(ctx context.Context, who user, id string) (Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := s.heldLocked(ctx, who, id)
	if err != nil {
		return Lease{}, err
	}
	s.endLocked(l, store.LeaseReleased, "released by "+who.name, time.Now())
	return s.viewLocked(l), nil
}

// GetLease returns lease id, open or ended. With wait > 0 and a lease
// still waiting at position known (0: any), it first waits up to wait for
// it to be granted, to end or to move up the queue. A holder's look at a
// waiting lease keeps it in the queue (as a renewal).
func (s *Service) GetLease(ctx context.Context, who user, id string, known int, wait time.Duration) (Lease, error) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		s.mu.Lock()
		l := s.leases[id]
		if l == nil {
			s.mu.Unlock()
			old, err := s.st.GetLease(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return Lease{}, fmt.Errorf("lease %s: %w", id, ErrNoSuchLease)
			}
			return view(old), err
		}
		if l.State == store.LeaseWaiting && l.Holder == who.name {
			s.renewLocked(l, time.Now())
		}
		v := s.viewLocked(l)
		changed := s.changed
		s.mu.Unlock()
		if wait <= 0 || v.State != store.LeaseWaiting || known != 0 && v.Position != known {
			return v, nil
		}
		known = v.Position
		select {
		case <-changed:
		case <-timeout:
			return v, nil
		case <-s.closing:
			return v, nil
		case <-ctx.Done():
			return v, ctx.Err()
		}
	}
}

// Leases returns the open leases in queue order, and up to ended of the
// latest ended ones.
func (s *Service) Leases(ctx context.Context, ended int) ([]Lease, error) {
	s.mu.Lock()
	var out []Lease
	open := slices.Collect(maps.Values(s.leases))
	slices.SortFunc(open, func(a, b *store.Lease) int { return int(a.Seq - b.Seq) })
	for _, l := range open {
		out = append(out, s.viewLocked(l))
	}
	s.mu.Unlock()
	// The database has the others' open leases too, and the ended ones.
	all, err := s.st.Leases(ctx, ended)
	if err != nil {
		return nil, err
	}
	var others []Lease
	for _, l := range all {
		switch {
		case !l.Open():
			others = append(others, view(l))
		case l.Home != "" && l.Home != s.owner:
			out = append(out, view(l))
		}
	}
	slices.SortStableFunc(out, func(a, b Lease) int { return cmp.Compare(a.Seq, b.Seq) })
	return append(out, others...), nil
}

// expiryLoop ends the leases whose holders stopped renewing them, that
// ran past their span, or that waited past their wait, until ctx ends.
func (s *Service) expiryLoop(ctx context.Context) {
	for {
		now := time.Now()
		s.mu.Lock()
		for _, l := range slices.Collect(maps.Values(s.leases)) {
			if s.leases[l.ID] != l {
				continue // ended by the end of another
			}
			switch {
			case !now.Before(l.Expires):
				reason := fmt.Sprintf("not renewed within %v (last renewed %s)", l.TTL, l.Renewed.UTC().Format(time.RFC3339Nano))
				if l.State == store.LeaseActive && !l.Until.IsZero() && !now.Before(l.Until) {
					reason = "its time is up"
				}
				s.endLocked(l, store.LeaseExpired, reason, now)
			case l.State == store.LeaseWaiting && !l.WaitUntil.IsZero() && !now.Before(l.WaitUntil):
				s.endLocked(l, store.LeaseTimedOut, "still waiting after its wait", now)
			}
		}
		// Ends may have granted others: the next deadline is looked for
		// once they are done.
		next := now.Add(time.Hour)
		for _, l := range s.leases {
			next = minTime(next, l.Expires)
			if l.State == store.LeaseWaiting {
				next = minTime(next, l.WaitUntil)
			}
		}
		s.mu.Unlock()
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.kick:
			t.Stop()
		case <-t.C:
		}
	}
}
