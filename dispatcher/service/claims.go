package service

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// Several services on one database. Each owns the boards it reaches by a
// claim in the database (store.ClaimBoards), renewed every third of
// Config.ClaimTTL, and drives only those: a monitor, the heartbeat,
// recovery and the console record. The boards the others own are listed
// as their rows say, with their owner; a board whose owner's claim
// expired reads offline, naming that owner and when, until a service that
// reaches it claims it. Leases are shared through the database's lease
// table (store.Holds); an action on another service's board is forwarded
// to it (forward.go).

// claimLoop runs a claim round every third of the claim TTL, or when
// kicked, until ctx ends.
func (s *Service) claimLoop(ctx context.Context) {
	every := s.cfg.ClaimTTL.D() / 3
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.claimKick:
		}
		if err := s.claimRound(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("claim round failed", "owner", s.owner, "err", err)
		}
		t.Reset(every)
	}
}

// kickClaims asks for a claim round now (a board was found).
func (s *Service) kickClaims() {
	select {
	case s.claimKick <- struct{}{}:
	default:
	}
}

// claimRound records this service in the database, claims (or renews)
// the boards it reaches, and reads who owns the rest and which leases
// hold what; then it drives the boards it won, lets go of those it lost,
// and brings the others' boards up to date.
func (s *Service) claimRound(ctx context.Context) error {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	now := s.now()
	ttl := s.cfg.ClaimTTL.D()
	s.mu.Lock()
	var local []string
	for _, id := range s.ids {
		if s.boards[id].local {
			local = append(local, id)
		}
	}
	s.mu.Unlock()
	won, err := s.claim(ctx, local, ttl, now)
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		// Past the TTL the others may have taken the boards: this service
		// no longer drives them.
		if !now.Before(s.renewed.Add(ttl)) {
			for _, id := range s.ids {
				if b := s.boards[id]; b.owner == s.owner {
					s.disownLocked(b, "claim not renewed: "+err.Error())
				}
			}
		}
		return err
	}
	claims, err := s.st.Claims(ctx)
	if err != nil {
		return err
	}
	instances, err := s.st.Instances(ctx)
	if err != nil {
		return err
	}
	rows, err := s.st.LabBoards(ctx)
	if err != nil {
		return err
	}
	holds, err := s.st.Holds(ctx, time.Now())
	if err != nil {
		return err
	}
	if err := s.endOrphans(ctx, now, instances); err != nil {
		return err
	}
	if err := s.readStops(ctx); err != nil {
		s.log.Error("rollout stops not read", "err", err) // read again next round
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.renewed, s.instances = now, instances
	s.applyClaimsLocked(now, won, claims, rows, holds)
	s.kickPartsLocked()
	return nil
}

// claim records this service and claims the boards ids.
func (s *Service) claim(ctx context.Context, ids []string, ttl time.Duration, now time.Time) ([]string, error) {
	if err := s.st.PutInstance(ctx, s.owner, s.advertise, now); err != nil {
		return nil, err
	}
	return s.st.ClaimBoards(ctx, s.owner, ids, ttl, now)
}

// applyClaimsLocked brings the boards in line with a claim round's
// reading of the database.
func (s *Service) applyClaimsLocked(now time.Time, won []string, claims []store.Claim, rows []store.LabBoard, holds map[string]store.Hold) {
	claimOf := make(map[string]store.Claim, len(claims))
	for _, c := range claims {
		claimOf[c.BoardID] = c
	}
	rowOf := make(map[string]store.LabBoard, len(rows))
	added := false
	for _, r := range rows {
		rowOf[r.ID] = r
		if s.boards[r.ID] == nil && r.Owner != "" && r.Owner != s.owner {
			s.boards[r.ID] = &board{id: r.ID, state: Offline, owner: r.Owner}
			s.ids = append(s.ids, r.ID)
			added = true
		}
	}
	if added {
		slices.Sort(s.ids)
	}
	for _, id := range s.ids {
		b := s.boards[id]
		_, wins := slices.BinarySearch(won, id)
		switch {
		case wins && b.owner != s.owner:
			s.adoptLocked(b)
		case !wins && b.owner == s.owner:
			s.disownLocked(b, "another service claimed it")
		}
		if b.owner == s.owner {
			s.holdLocked(b, holds[id])
			continue
		}
		s.viewOthersLocked(b, now, rowOf[id], claimOf[id], holds[id])
	}
	s.scheduleLocked(time.Now())
}

// adoptLocked makes this service b's owner and starts driving it. What a
// person set (maintenance, quarantine) stays; the rest is learned again.
func (s *Service) adoptLocked(b *board) {
	if b.owner != "" {
		s.log.Info("board taken over", "board", b.id, "from", b.owner)
	}
	b.owner, b.ownerGone, b.unclaimed, b.online = s.owner, time.Time{}, false, false
	if b.state != Maintenance && b.state != Quarantined {
		b.state, b.reason = Offline, "claimed by "+s.owner
	}
	s.recordLocked(b)
	s.notifyLocked()
	if s.ctx != nil {
		s.watchLocked(b)
	}
}

// disownLocked stops driving b, whose claim this service lost: its
// monitor ends, its connection closes with the commands run on it.
func (s *Service) disownLocked(b *board, why string) {
	s.log.Warn("board no longer ours", "board", b.id, "owner", s.owner, "why", why)
	if b.stop != nil {
		b.stop()
		b.stop = nil
	}
	if b.client != nil {
		b.client.Close()
		b.client = nil
	}
	for _, r := range b.runs {
		r.cancel(fmt.Errorf("board %s: %s", b.id, why))
	}
	b.owner, b.online = "", false
	b.state, b.reason = Offline, why
	s.notifyLocked()
}

// holdLocked follows, on a board this service owns, the lease of another
// service that holds it in the database (h; an empty Lease: none): the
// board reads leased while it holds, and commands outside it are
// canceled.
func (s *Service) holdLocked(b *board, h store.Hold) {
	if h.Lease != "" && s.leases[h.Lease] != nil {
		h = store.Hold{} // one of ours: b.lease says it
	}
	prev := b.hold.Lease
	b.hold = h
	if h.Lease == prev {
		return
	}
	if prev != "" && b.lease == prev {
		b.lease = ""
	}
	if h.Lease != "" && b.lease == "" {
		b.lease = h.Lease
		for _, r := range b.runs {
			if r.lease != h.Lease {
				r.cancel(fmt.Errorf("board %s: leased by %s", b.id, h.Holder))
			}
		}
	}
	if b.state == Idle || b.state == Leased {
		s.must(s.setStateLocked(b, b.settledLocked(), "lease "+cmp.Or(h.Lease, prev)+" of another service"))
	}
}

// viewOthersLocked shows b, which another service owns (or owned), as
// its row and its claim say: a claim that expired (or was released) makes
// it offline, naming the owner that vanished and when.
func (s *Service) viewOthersLocked(b *board, now time.Time, r store.LabBoard, c store.Claim, h store.Hold) {
	old := *b
	if r.ID != "" {
		b.address, b.source, b.model, b.labels = r.Address, r.Source, r.Model, r.Labels
		b.bootID, b.lastSeen, b.failures = r.BootID, r.LastSeen, r.Failures
		b.owner = r.Owner
	}
	if c.BoardID != "" {
		b.owner = c.Owner
	}
	b.ownerGone = time.Time{}
	b.unclaimed = c.BoardID == "" || !c.Expires.After(now)
	switch {
	case c.BoardID == "":
		b.state, b.online = Offline, false
		b.reason = fmt.Sprintf("no service claims it (its owner %s released it)", b.owner)
	case !c.Expires.After(now):
		b.state, b.online, b.ownerGone = Offline, false, c.Expires
		b.reason = fmt.Sprintf("its owner %s vanished: claim expired at %s", c.Owner, c.Expires.UTC().Format(time.RFC3339))
	default:
		b.state, b.reason = State(r.State), r.Reason
		b.online = b.state != Offline
		if r.ID == "" {
			b.state = Offline
		}
	}
	// A lease of this service holds its board here at once; another's
	// as the database says.
	if l := s.leases[b.lease]; l == nil || l.State != store.LeaseActive {
		b.lease, b.hold = h.Lease, h
	}
	// Leased or idle is the lease table's to say, not the row's (written
	// later, by its owner's journal).
	switch {
	case b.lease != "" && b.state == Idle:
		b.state = Leased
	case b.lease == "" && b.state == Leased:
		b.state = Idle
	}
	if b.state != old.state || b.reason != old.reason || b.owner != old.owner || b.lease != old.lease {
		s.notifyLocked()
	}
}

// reportsLocked reports whether this service's metrics count board b:
// it owns it, or no service drives it and this service is the first
// (by name) of those alive (a claim round within a claim TTL), so that
// across services every board is counted once.
func (s *Service) reportsLocked(b *board, now time.Time) bool {
	return b.owner == s.owner || (b.owner == "" || b.unclaimed) && s.leadsLocked(now)
}

// leadsLocked reports whether this service is the first by name of those
// alive at now, which reports what no service drives.
func (s *Service) leadsLocked(now time.Time) bool {
	for name, in := range s.instances {
		if name < s.owner && now.Before(in.Renewed.Add(s.cfg.ClaimTTL.D())) {
			return false
		}
	}
	return true
}

// endOrphans ends the open leases whose home service vanished (it has not
// done a claim round for a claim TTL) and that were not renewed in time:
// nobody else may renew them, and they would read open for ever. A home
// that comes back in time keeps its leases.
func (s *Service) endOrphans(ctx context.Context, now time.Time, instances map[string]store.Instance) error {
	open, err := s.st.Leases(ctx, 0)
	if err != nil {
		return err
	}
	for _, l := range open {
		home, known := instances[l.Home]
		if l.Home == "" || l.Home == s.owner || !known || now.Before(home.Renewed.Add(s.cfg.ClaimTTL.D())) ||
			time.Now().Before(l.Expires) {
			continue
		}
		l.State, l.Ended = store.LeaseExpired, time.Now()
		l.EndReason = fmt.Sprintf("its home service %s vanished (last seen %s) and it was not renewed", l.Home,
			home.Renewed.UTC().Format(time.RFC3339))
		if err := s.st.PutLease(ctx, l); err != nil {
			return err
		}
		s.log.Warn("lease ended: its home vanished", "lease", l.ID, "home", l.Home, "holder", l.Holder)
	}
	return nil
}
