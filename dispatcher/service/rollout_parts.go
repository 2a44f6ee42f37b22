package service

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/rolloutjob"
)

// rolloutOwner is the owner of the rollouts this service runs: it resumes
// them when it starts, and no other service does.
func (s *Service) rolloutOwner() string { return rolloutjob.OwnerService + ":" + s.owner }

// RolloutPart is the share of a rollout started on another service, for
// the boards it drives: its rollout there, or why it did not start.
type RolloutPart struct {
	Owner   string   `json:"owner"`
	Rollout string   `json:"rollout,omitempty"`
	Boards  []string `json:"boards"`
	Error   string   `json:"error,omitempty"`
}

// startRolloutParts starts, on each other service that drives boards r
// selects, a rollout of the image img to those boards, for who; a rollout
// a service forwarded is not split again. Boards whose owner vanished get
// a part that says so, and no rollout.
func (s *Service) startRolloutParts(ctx context.Context, who user, img string, r RolloutRequest) []RolloutPart {
	if who.peer {
		return nil
	}
	s.mu.Lock()
	byOwner := map[string][]string{}
	for _, id := range s.ids {
		b := s.boards[id]
		t := dispatcher.Target{ID: id, Model: b.model, Labels: b.labels}
		if b.owner == "" || b.owner == s.owner || len(r.Boards) > 0 && !slices.Contains(r.Boards, id) ||
			!dispatcher.Selector(r.Select).Match(t) {
			continue
		}
		byOwner[b.owner] = append(byOwner[b.owner], id)
	}
	s.mu.Unlock()
	// Each owner plans its share (a look at each of its boards) at the
	// same time: one after the other, four shares of 2,500 boards took
	// minutes each to start.
	owners := slices.Sorted(maps.Keys(byOwner))
	parts := make([]RolloutPart, len(owners))
	var wg sync.WaitGroup
	for i, owner := range owners {
		wg.Go(func() {
			p := RolloutPart{Owner: owner, Boards: byOwner[owner]}
			c, err := s.peerClient(owner, who)
			if err == nil {
				sub := r
				sub.Boards = p.Boards
				var st RolloutStatus
				st, err = c.StartRollout(ctx, img, sub)
				p.Rollout = st.ID
			}
			if err != nil {
				p.Error = err.Error()
			}
			s.log.Info("rollout part", "owner", owner, "rollout", p.Rollout, "boards", len(p.Boards), "err", p.Error)
			parts[i] = p
		})
	}
	wg.Wait()
	return parts
}

// rolloutPoll is how often a long poll of a rollout reads it again, for
// the shares other services run.
const rolloutPoll = time.Second
