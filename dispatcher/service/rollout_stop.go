package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// A rollout is stopped by hand (StopRollout) through any service: the
// stop is on record with the rollout (store.StopRollout), so that the
// service running it stops it at its boards' safe points (dispatcher.Halt)
// at once when it is that service, at its next claim round otherwise,
// or as it resumes it when it was away. Its parts that wait (or were
// given up) are cancelled; those started are stopped likewise on their
// owners (their rollouts get the stop on record, and the owners are told
// at once through the peer path). A part waiting for an owner that stays
// away longer than its rollout's part wait is given up, and a part given
// up may be tried again by hand (RetryPart).

// Part waits: how long a part waits for its owner when the request does
// not say, and at most.
const (
	DefaultPartWait = 24 * time.Hour
	MaxPartWait     = 30 * 24 * time.Hour
)

// RolloutStateError refuses an action a rollout's state (or its part's)
// does not allow: a stop of a rollout that is over, a retry of a part
// that was not given up.
type RolloutStateError struct {
	Rollout string
	Part    string // the part's owner; "" for the rollout itself
	State   string // the rollout's or the part's
	Want    string // what the action needs
}

func (e *RolloutStateError) Error() string {
	if e.Part != "" {
		return fmt.Sprintf("rollout %s: its part on %s is %s; %s", e.Rollout, e.Part, e.State, e.Want)
	}
	return fmt.Sprintf("rollout %s is %s; %s", e.Rollout, e.State, e.Want)
}

// StopRollout stops rollout id (or a unique prefix) for who and returns
// its status, at once: the stop goes on in the background, and the
// status reads running until the boards under way reached their safe
// points. A rollout stopped by hand already is answered as it is
// (stopping it again changes nothing); one that is over otherwise is a
// RolloutStateError. A rollout that is over but for parts given up
// (which keep its image for a retry) is stopped: they are cancelled.
func (s *Service) StopRollout(ctx context.Context, who user, id string) (RolloutStatus, error) {
	st, err := s.Rollout(ctx, id)
	if err != nil {
		return st, err
	}
	if st.Stop == "" && !stoppable(st) {
		return st, &RolloutStateError{Rollout: st.ID, State: st.State, Want: "only a rollout under way is stopped"}
	}
	why := "stopped by " + who.name
	if _, err := s.st.StopRollout(ctx, st.ID, why); errors.Is(err, store.ErrOver) {
		// It ended since it was read.
		if st, err = s.Rollout(ctx, st.ID); err != nil {
			return st, err
		}
		return st, &RolloutStateError{Rollout: st.ID, State: st.State, Want: "only a rollout under way is stopped"}
	} else if err != nil {
		return st, err
	}
	if h := s.haltOf(st.ID); h != nil {
		h.Stop(why) // the first stop's reason stays, as on record
	}
	s.stopParts(ctx, who, st.ID)
	s.settleParent(context.WithoutCancel(ctx), st.ID)
	s.rolloutMoved()
	s.log.Info("rollout stop", "rollout", st.ID, "by", who.name)
	return s.Rollout(ctx, st.ID)
}

// stoppable reports whether rollout st may be stopped: it runs, or a
// part of it was given up (and may be tried again).
func stoppable(st RolloutStatus) bool {
	return st.State == store.StateRunning ||
		slices.ContainsFunc(st.Parts, func(p store.RolloutPart) bool { return p.State == store.PartGivenUp })
}

// stopParts carries rollout id's stop (on record) to its parts: those
// that wait or were given up are cancelled, those started are stopped on
// their owners. It does nothing to a rollout not stopped by hand.
func (s *Service) stopParts(ctx context.Context, who user, id string) {
	stops, err := s.st.RolloutStops(ctx, []string{id})
	why := stops[id]
	if err != nil || why == "" {
		return
	}
	s.cancelParts(ctx, id, why)
	parts, err := s.st.RolloutParts(ctx, id)
	if err != nil {
		s.log.Error("rollout parts not stopped", "rollout", id, "err", err)
		return
	}
	for _, p := range parts {
		if p.State != store.PartStarted {
			continue
		}
		// On record first: an owner away stops it as it resumes it.
		if _, err := s.st.StopRollout(ctx, p.Rollout, why); errors.Is(err, store.ErrOver) {
			continue // it ended meanwhile
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Error("rollout part not stopped", "rollout", id, "owner", p.Owner, "err", err)
			continue
		}
		s.tellOwner(who, p)
	}
}

// tellOwner asks part p's owner, in the background, to stop the part's
// rollout now rather than at its next claim round; an owner away reads
// the stop as it resumes the rollout.
func (s *Service) tellOwner(who user, p store.RolloutPart) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.ctx == nil || !s.aliveLocked(p.Owner) {
		return
	}
	life := s.ctx
	s.wg.Go(func() {
		ctx, cancel := context.WithTimeout(life, s.cfg.ClaimTTL.D())
		defer cancel()
		c, err := s.peerClient(p.Owner, user{name: who.name})
		if err == nil {
			_, err = c.StopRollout(ctx, p.Rollout)
		}
		var se *APIError
		if err != nil && !(errors.As(err, &se) && se.Reason == ReasonState) { // over already: nothing to stop
			s.log.Warn("rollout part's owner not told of its stop", "rollout", p.Parent, "owner", p.Owner, "err", err)
		}
	})
}

// haltFor is the halt of rollout id, which this service is about to run;
// false if it runs it already. A rollout recorded as the service starts
// is also found running by its resume: it must run once, or a stop would
// halt one run and not the other.
func (s *Service) haltFor(id string) (*dispatcher.Halt, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.halts[id] != nil {
		return nil, false
	}
	h := dispatcher.NewHalt()
	s.halts[id] = h
	return h, true
}

// haltOf is the halt of rollout id if this service runs it (nil: it
// does not).
func (s *Service) haltOf(id string) *dispatcher.Halt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.halts[id]
}

// readStops halts the rollouts this service runs that were stopped on
// record through another service (a part's home, or a user asking
// another service): each claim round.
func (s *Service) readStops(ctx context.Context) error {
	s.mu.Lock()
	var ids []string
	for id, h := range s.halts {
		if h.Why() == "" {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	stops, err := s.st.RolloutStops(ctx, ids)
	if err != nil {
		return err
	}
	for id, why := range stops {
		if h := s.haltOf(id); h != nil {
			h.Stop(why)
			s.log.Info("rollout stop read", "rollout", id, "why", why)
		}
	}
	return nil
}

// RetryPart tries again the part of rollout id (or a unique prefix) on
// service owner, which was given up: its refusals start from none and it
// waits for its owner afresh (a part wait from now). A part in any other
// state, or of a rollout stopped by hand, is a RolloutStateError.
func (s *Service) RetryPart(ctx context.Context, who user, id, owner string) (RolloutStatus, error) {
	st, err := s.Rollout(ctx, id)
	if err != nil {
		return st, err
	}
	if st.Stop != "" {
		return st, &RolloutStateError{Rollout: st.ID, State: st.State, Want: "its parts are not tried again once it is " + st.Stop}
	}
	i := slices.IndexFunc(st.Parts, func(p store.RolloutPart) bool { return p.Owner == owner })
	if i < 0 {
		return st, &APIError{Status: http.StatusNotFound, Reason: string(proto.ReasonNotFound),
			Message: fmt.Sprintf("rollout %s has no part on service %s", st.ID, owner)}
	}
	state := st.Parts[i].State
	if state != store.PartGivenUp {
		return st, &RolloutStateError{Rollout: st.ID, Part: owner, State: string(state), Want: "only a part given up is tried again"}
	}
	n, err := s.st.MovePart(ctx, store.PartMove{Parent: st.ID, Owner: owner, From: store.PartGivenUp, To: store.PartWaiting,
		Error: "tried again by " + who.name, At: s.now()})
	if err != nil {
		return st, err
	}
	if n == 0 { // moved in between
		return st, &RolloutStateError{Rollout: st.ID, Part: owner, State: string(state), Want: "only a part given up is tried again"}
	}
	s.log.Info("rollout part tried again", "rollout", st.ID, "owner", owner, "by", who.name)
	s.rolloutMoved()
	s.kickParts()
	return s.Rollout(ctx, st.ID)
}

// partWait is how long part p waits for its owner: its rollout's
// request's, or DefaultPartWait.
func partWait(p store.RolloutPart) time.Duration {
	var r RolloutRequest
	if json.Unmarshal(p.Request, &r) != nil || r.PartWaitMs <= 0 {
		return DefaultPartWait
	}
	return time.Duration(r.PartWaitMs) * time.Millisecond
}

// giveUp gives up part p, waiting for owner since p.Waiting for longer
// than its wait.
func (s *Service) giveUp(ctx context.Context, p store.RolloutPart, wait time.Duration) {
	why := fmt.Sprintf("given up: service %s was not back within %v (its part wait) of %s, since when the part waited for it",
		p.Owner, wait, p.Waiting.UTC().Format(time.RFC3339))
	n, err := s.st.MovePart(ctx, store.PartMove{Parent: p.Parent, Owner: p.Owner, From: store.PartWaiting, To: store.PartGivenUp,
		Error: why})
	if err != nil {
		s.log.Error("rollout part not given up", "rollout", p.Parent, "owner", p.Owner, "err", err)
		return
	}
	if n > 0 {
		s.log.Info("rollout part given up", "rollout", p.Parent, "owner", p.Owner, "why", why)
		s.rolloutMoved()
	}
}

func (s *Service) hStopRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	c.detail = "rollout " + r.PathValue("id")
	st, err := s.StopRollout(r.Context(), c.user, r.PathValue("id"))
	if err != nil {
		return err
	}
	c.detail = fmt.Sprintf("rollout %s: %s", st.ID, st.Stop)
	status := http.StatusAccepted // under way until its boards reach their safe points
	if st.State != store.StateRunning {
		status = http.StatusOK
	}
	writeJSON(w, status, st)
	return nil
}

func (s *Service) hRetryPart(w http.ResponseWriter, r *http.Request, c *call) error {
	id, owner := r.PathValue("id"), r.PathValue("owner")
	c.detail = fmt.Sprintf("rollout %s: its part on %s", id, owner)
	st, err := s.RetryPart(r.Context(), c.user, id, owner)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, st)
	return nil
}
