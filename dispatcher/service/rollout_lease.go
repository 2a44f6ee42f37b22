package service

// A rollout never updates a board under a lease's holder: its turn on a
// leased board waits (its attempts) for the lease to end, and the board
// is marked updating, which no lease takes, under the same lock as the
// check (rolloutDial).

// rolloutHoldsLocked reports whether a rollout marked board id updating.
func (s *Service) rolloutHoldsLocked(id string) bool {
	for _, marked := range s.rolled {
		if marked[id] {
			return true
		}
	}
	return false
}

// rolloutTakeLocked marks b updating for the rollouts whose turn on it
// waited for a lease to end: from now on no lease takes it.
func (s *Service) rolloutTakeLocked(b *board) {
	for _, marked := range s.rolled {
		if on, ok := marked[b.id]; ok && !on {
			marked[b.id] = true
			s.markUpdatingLocked(b, true)
		}
	}
}
