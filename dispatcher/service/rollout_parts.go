package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/rolloutjob"
	"github.com/boardlink/boardlink/dispatcher/store"
)

// A rollout asked of this service (its home) covers the boards the other
// services own by parts: one per owner, on record (store.RolloutPart)
// before any is tried. A part starts on its owner as a rollout of its
// own, whose id the part chose at its first try: the owner records it
// under that id or answers with the one it has, so a part starts at most
// once whoever tries it again. A part whose owner cannot be reached
// waits, with the image kept by its home, and is tried again when a claim
// round sees its owner alive (backing off while the owner refuses; given
// up after maxPartRefusals refusals); a restarted home tries its waiting
// parts again. The parent reads running while a part may start, and
// Rollout aggregates the parts' rollouts into its state.

// rolloutOwner is the owner of the rollouts this service runs: it resumes
// them when it starts, and no other service does.
func (s *Service) rolloutOwner() string { return rolloutjob.OwnerService + ":" + s.owner }

// maxPartRefusals is how many refusals of its owner a part takes before
// it is given up; each try waits twice as long as the one before
// (partBackoff), so about half a minute in all.
const maxPartRefusals = 6

// partRetry is the wait after a part's first try that failed; a variable
// for the tests.
var partRetry = time.Second

// partBackoff is the wait before a part's next try after its attempts:
// partRetry doubled at each, at most 64 times it.
func partBackoff(attempts int) time.Duration {
	return partRetry << min(max(attempts-1, 0), 6)
}

// othersBoards are the boards r selects that other services own, by
// owner; none for a rollout a service forwarded (it is not split again).
func (s *Service) othersBoards(who user, r RolloutRequest) map[string][]string {
	byOwner := map[string][]string{}
	if who.peer {
		return byOwner
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.ids {
		b := s.boards[id]
		t := dispatcher.Target{ID: id, Model: b.model, Labels: b.labels}
		if b.owner == "" || b.owner == s.owner || len(r.Boards) > 0 && !slices.Contains(r.Boards, id) ||
			!dispatcher.Selector(r.Select).Match(t) {
			continue
		}
		byOwner[b.owner] = append(byOwner[b.owner], id)
	}
	return byOwner
}

// recordParts records, waiting, the parts of rollout parent for the
// boards byOwner, to start for who as r asks.
func (s *Service) recordParts(ctx context.Context, parent string, who user, r RolloutRequest, byOwner map[string][]string) error {
	if len(byOwner) == 0 {
		return nil
	}
	r.Boards, r.ID = nil, ""
	req, err := json.Marshal(r)
	if err != nil {
		return err
	}
	var parts []store.RolloutPart
	s.mu.Lock()
	for _, owner := range slices.Sorted(maps.Keys(byOwner)) {
		p := store.RolloutPart{Parent: parent, Owner: owner, Home: s.owner, Boards: byOwner[owner], Request: req, Requester: who.name,
			Waiting: s.now()}
		if !s.aliveLocked(owner) {
			p.Error = s.goneLocked(owner)
		}
		parts = append(parts, p)
	}
	s.mu.Unlock()
	return s.st.CreateRolloutParts(ctx, parts)
}

// aliveLocked reports whether service owner did a claim round within a
// claim TTL, as the last round read it.
func (s *Service) aliveLocked(owner string) bool {
	in, ok := s.instances[owner]
	return ok && s.now().Before(in.Renewed.Add(s.cfg.ClaimTTL.D()))
}

// goneLocked says why a part waits for owner, which is not alive.
func (s *Service) goneLocked(owner string) string {
	in, ok := s.instances[owner]
	if !ok {
		return fmt.Sprintf("waiting for service %s, which this service has not seen", owner)
	}
	return fmt.Sprintf("waiting for service %s to come back (last seen %s)", owner, in.Renewed.UTC().Format(time.RFC3339))
}

// partsLoop tries the parts this service started that wait: at its start
// (those a stop or a crash left), when a claim round sees one's owner
// alive (kickParts), and at the next try of one whose owner is alive but
// refused or did not answer; until ctx ends.
func (s *Service) partsLoop(ctx context.Context) {
	s.reopenParts(ctx)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.partsKick:
		}
		next := s.tryParts(ctx)
		t.Stop()
		if !next.IsZero() {
			t.Reset(time.Until(next))
		}
	}
}

// reopenParts makes the parts a stopped or killed run of this service
// left starting wait again: tried again under their rollout id, they
// start at most once.
func (s *Service) reopenParts(ctx context.Context) {
	open, err := s.st.OpenRolloutParts(ctx, s.owner)
	if err != nil {
		s.log.Error("rollout parts not resumed", "err", err)
		return
	}
	for _, p := range open {
		if p.State != store.PartStarting {
			continue
		}
		if _, err := s.st.MovePart(ctx, store.PartMove{Parent: p.Parent, Owner: p.Owner, From: store.PartStarting,
			To: store.PartWaiting, Error: "interrupted while starting: " + p.Error}); err != nil {
			s.log.Error("rollout part not reopened", "rollout", p.Parent, "owner", p.Owner, "err", err)
		}
	}
}

// kickPartsLocked wakes the parts loop when a part waits for an owner
// the last claim round saw alive, or is due to be given up.
func (s *Service) kickPartsLocked() {
	if !s.partDue.IsZero() && !s.now().Before(s.partDue) {
		s.kickParts()
		return
	}
	for owner := range s.partOwners {
		if s.aliveLocked(owner) {
			s.kickParts()
			return
		}
	}
}

// kickParts wakes the parts loop.
func (s *Service) kickParts() {
	select {
	case s.partsKick <- struct{}{}:
	default:
	}
}

// tryParts tries every waiting part of this service that is due and
// whose owner is alive, gives up those whose owner stayed away past
// their part wait (on the service's clock), and returns when the next one
// whose owner is alive is due (zero: none).
func (s *Service) tryParts(ctx context.Context) time.Time {
	open, err := s.st.OpenRolloutParts(ctx, s.owner)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("rollout parts not read", "err", err)
		}
		return time.Now().Add(partBackoff(1))
	}
	owners := map[string]bool{}
	var due, late []store.RolloutPart
	var next, giveUp time.Time
	now := time.Now()
	s.mu.Lock()
	clock := s.now()
	for _, p := range open {
		if p.State != store.PartWaiting {
			continue
		}
		owners[p.Owner] = true
		switch {
		case !s.aliveLocked(p.Owner):
			if end := p.Waiting.Add(partWait(p)); !clock.Before(end) {
				late = append(late, p)
			} else if giveUp.IsZero() || end.Before(giveUp) {
				giveUp = end
			}
		case p.NextTry.After(now):
			if next.IsZero() || p.NextTry.Before(next) {
				next = p.NextTry
			}
		default:
			due = append(due, p)
		}
	}
	s.partOwners, s.partDue = owners, giveUp
	s.mu.Unlock()
	for _, p := range late {
		s.giveUp(ctx, p, partWait(p))
		s.settleParent(context.WithoutCancel(ctx), p.Parent)
	}
	s.startParts(ctx, due)
	if len(due) > 0 {
		return now.Add(partRetry) // read again: a try may have left its part waiting
	}
	return next
}

// startParts tries the parts ps whose owner is alive, at once, each on
// its owner: one after the other, four shares of 2,500 boards took
// minutes each to start (each owner plans its share).
func (s *Service) startParts(ctx context.Context, ps []store.RolloutPart) {
	var wg sync.WaitGroup
	for _, p := range ps {
		s.mu.Lock()
		alive := s.aliveLocked(p.Owner)
		s.mu.Unlock()
		if alive {
			wg.Go(func() { s.startPart(ctx, p) })
		}
	}
	wg.Wait()
}

// startPart tries part p on its owner, if this service wins the try in
// the database (a part another try holds, or not due, is left alone).
func (s *Service) startPart(ctx context.Context, p store.RolloutPart) {
	now := time.Now()
	n, err := s.st.MovePart(ctx, store.PartMove{Parent: p.Parent, Owner: p.Owner, From: store.PartWaiting,
		To: store.PartStarting, Rollout: store.NewRolloutID(), At: now})
	if err != nil || n == 0 {
		if err != nil {
			s.log.Error("rollout part not tried", "rollout", p.Parent, "owner", p.Owner, "err", err)
		}
		return
	}
	move := store.PartMove{Parent: p.Parent, Owner: p.Owner, From: store.PartStarting, To: store.PartStarted}
	rollout, err := s.askPart(ctx, p)
	var api *APIError
	refused := errors.As(err, &api) && api.Status < http.StatusInternalServerError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		move.To, move.Error = store.PartWaiting, "interrupted: "+err.Error()
	case refused && p.Refusals+1 >= maxPartRefusals:
		move.To, move.Error, move.Refused = store.PartGivenUp, err.Error(), true
	default:
		move.To, move.Error, move.Refused = store.PartWaiting, err.Error(), refused
		move.NextTry = now.Add(partBackoff(p.Attempts + 1))
	}
	if _, err := s.st.MovePart(context.WithoutCancel(ctx), move); err != nil {
		s.log.Error("rollout part not recorded", "rollout", p.Parent, "owner", p.Owner, "err", err)
	}
	s.log.Info("rollout part", "rollout", p.Parent, "owner", p.Owner, "part", rollout, "boards", len(p.Boards),
		"state", move.To, "err", move.Error)
	// A stop that came while it was starting (when it is not cancelled).
	s.stopParts(context.WithoutCancel(ctx), user{name: p.Requester}, p.Parent)
	s.rolloutMoved()
	s.settleParent(context.WithoutCancel(ctx), p.Parent)
}

// askPart asks part p's owner to start it under its rollout id, with the
// image its parent keeps, and returns the id.
func (s *Service) askPart(ctx context.Context, p store.RolloutPart) (string, error) {
	parts, err := s.st.RolloutParts(ctx, p.Parent)
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(parts, func(q store.RolloutPart) bool { return q.Owner == p.Owner })
	if i < 0 {
		return "", fmt.Errorf("rollout %s: its part on %s: %w", p.Parent, p.Owner, store.ErrNotFound)
	}
	rec, _, err := s.st.Rollout(ctx, p.Parent)
	if err != nil {
		return "", err
	}
	var r RolloutRequest
	if err := json.Unmarshal(p.Request, &r); err != nil {
		return "", fmt.Errorf("rollout %s: its part's request: %w", p.Parent, err)
	}
	r.Boards, r.ID = p.Boards, parts[i].Rollout
	c, err := s.peerClient(p.Owner, user{name: p.Requester})
	if err != nil {
		return r.ID, err
	}
	_, err = c.StartRollout(ctx, rec.Image, r)
	return r.ID, err
}

// rolloutMoved wakes those watching the rollouts.
func (s *Service) rolloutMoved() {
	s.mu.Lock()
	close(s.rolloutChanged)
	s.rolloutChanged = make(chan struct{})
	s.mu.Unlock()
}

// settleParent removes the image of rollout id once it is over: its own
// boards done and no part that may still start, nor be tried again (a
// part given up keeps it until it is tried again or the rollout is
// stopped).
func (s *Service) settleParent(ctx context.Context, id string) {
	rec, _, err := s.st.Rollout(ctx, id)
	if err != nil || rec.State == store.StateRunning {
		return
	}
	parts, err := s.st.RolloutParts(ctx, id)
	if err != nil || slices.ContainsFunc(parts, func(p store.RolloutPart) bool { return p.State == store.PartGivenUp }) {
		return
	}
	if err := os.Remove(rec.Image); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("rollout image not removed", "rollout", id, "err", err)
	}
}

// cancelParts cancels the parts of rollout id, which stopped, that wait
// or were given up.
func (s *Service) cancelParts(ctx context.Context, id, why string) {
	n := 0
	for _, from := range []store.PartState{store.PartWaiting, store.PartGivenUp} {
		m, err := s.st.MovePart(ctx, store.PartMove{Parent: id, From: from, To: store.PartCancelled,
			Error: "its rollout stopped: " + why})
		if err != nil {
			s.log.Error("rollout parts not cancelled", "rollout", id, "err", err)
		}
		n += m
	}
	if n > 0 {
		s.log.Info("rollout parts cancelled", "rollout", id, "parts", n, "why", why)
	}
}

// withParts adds to st, rollout id's status, its parts, and folds in the
// rollouts of those started: the parent reads running while one runs,
// stopped if one stopped, and its updated is the latest of them all.
func (s *Service) withParts(ctx context.Context, st RolloutStatus) (RolloutStatus, error) {
	parts, err := s.st.RolloutParts(ctx, st.ID)
	if err != nil {
		return st, err
	}
	st.Parts = parts
	running, stopped := false, false
	for _, p := range parts {
		if p.State != store.PartStarted {
			continue
		}
		r, _, err := s.st.Rollout(ctx, p.Rollout)
		if errors.Is(err, store.ErrNotFound) {
			continue // its owner has yet to record it
		}
		if err != nil {
			return st, err
		}
		running = running || r.State == store.StateRunning
		stopped = stopped || r.State == store.StateStopped
		if r.Updated.After(st.Updated) {
			st.Updated = r.Updated
		}
	}
	switch {
	case running:
		st.State = store.StateRunning
	case stopped && st.State == store.StateDone:
		st.State = store.StateStopped
	}
	return st, nil
}

// rolloutPoll is how often a long poll of a rollout reads it again, for
// the shares other services run.
const rolloutPoll = time.Second
