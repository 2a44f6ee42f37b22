package service

import (
	"fmt"
	"slices"
)

// State is a board's state in the lab.
type State string

// Board states.
const (
	// Idle: online, and free to be leased.
	Idle State = "idle"
	// Leased: held by a lease.
	Leased State = "leased"
	// Updating: an update or a rollout through the service holds it
	// (MarkUpdating).
	Updating State = "updating"
	// Offline: its agent does not answer; the service keeps dialing it.
	Offline State = "offline"
	// Quarantined: too many failed health checks or recoveries in a row;
	// it stays so until a person releases it.
	Quarantined State = "quarantined"
	// Maintenance: taken out of the lab by a person, until they put it
	// back.
	Maintenance State = "maintenance"
)

// transitions are the only moves a board's state makes. A leased board
// cannot be put in maintenance (its lease ends first); only a board with
// its lease still on it (one that went offline or was quarantined while
// leased) goes back to leased; a board that comes back while an update
// holds it (the reboot into its trial) goes straight back to updating, so
// that no lease takes it in between.
var transitions = map[State][]State{
	Idle:        {Leased, Updating, Offline, Quarantined, Maintenance},
	Leased:      {Idle, Updating, Offline, Quarantined},
	Updating:    {Idle, Leased, Offline, Quarantined},
	Offline:     {Idle, Leased, Updating, Quarantined, Maintenance},
	Quarantined: {Idle, Leased, Offline, Maintenance},
	Maintenance: {Idle, Offline, Quarantined},
}

// States lists every state, in the order of the table.
var States = []State{Idle, Leased, Updating, Offline, Quarantined, Maintenance}

// CanBecome reports whether the table allows moving from s to to (staying
// is always allowed).
func (s State) CanBecome(to State) bool {
	return s == to || slices.Contains(transitions[s], to)
}

// StateError refuses a move the table does not allow.
type StateError struct {
	Board    string
	From, To State
}

func (e *StateError) Error() string {
	return fmt.Sprintf("board %s is %s and cannot become %s", e.Board, e.From, e.To)
}
