package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// PartState is where a rollout's part on another service stands.
type PartState string

// The states of a part. One starts waiting and moves only along
// partTransitions.
const (
	PartWaiting   PartState = "waiting"   // its owner was not reached yet; tried again when it is back
	PartStarting  PartState = "starting"  // its home is asking its owner to start it, now
	PartStarted   PartState = "started"   // its rollout runs on its owner (Rollout)
	PartGivenUp   PartState = "given_up"  // its owner refused it too often, or stayed away past its rollout's part wait
	PartCancelled PartState = "cancelled" // its parent stopped before it started
)

// partTransitions are the only moves a part makes. A part starting is
// not cancelled: its owner may already run it. A part given up is tried
// again (waiting) by hand, or cancelled when its parent is stopped.
var partTransitions = map[PartState][]PartState{
	PartWaiting:  {PartStarting, PartCancelled, PartGivenUp},
	PartStarting: {PartStarted, PartWaiting, PartGivenUp},
	PartGivenUp:  {PartWaiting, PartCancelled},
}

// CanMove reports whether a part may move from p to to.
func (p PartState) CanMove(to PartState) bool { return slices.Contains(partTransitions[p], to) }

// Open reports whether a part in p may still start: its parent is not
// over while it is.
func (p PartState) Open() bool { return p == PartWaiting || p == PartStarting }

// RolloutPart is the share of rollout Parent for the boards service
// Owner drives, started (or to be started) by service Home, which keeps
// the image.
type RolloutPart struct {
	Parent    string          `json:"parent"`
	Owner     string          `json:"owner"`
	Home      string          `json:"home"`
	Boards    []string        `json:"boards"`
	Request   json.RawMessage `json:"-"`         // how to start it, for Home (the rollout's request)
	Requester string          `json:"requester"` // the user it starts for
	Rollout   string          `json:"rollout,omitempty"`
	State     PartState       `json:"state"`
	Error     string          `json:"error,omitempty"` // the last try's
	Attempts  int             `json:"attempts"`
	Refusals  int             `json:"refusals"` // tries its owner answered with a refusal
	Tried     time.Time       `json:"tried,omitzero"`
	NextTry   time.Time       `json:"next_try,omitzero"` // not tried again before
	// Waiting is since when the part waits for its owner: its creation
	// (CreateRolloutParts: now, unless set), or when it was last tried
	// again by hand; it is given up once its rollout's part wait passed.
	Waiting time.Time `json:"waiting_since"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// CreateRolloutParts records parts, waiting, for their parent rollouts
// (which must exist). A part already recorded is ErrExists.
func (s *Store) CreateRolloutParts(ctx context.Context, parts []RolloutPart) error {
	now := time.Now()
	return s.tx(ctx, func(tx handle) error {
		for _, p := range parts {
			if p.Parent == "" || p.Owner == "" || p.Home == "" {
				return fmt.Errorf("store: rollout part: parent %q, owner %q and home %q must be set", p.Parent, p.Owner, p.Home)
			}
			boards, err := json.Marshal(p.Boards)
			if err != nil {
				return err
			}
			req := []byte(p.Request)
			if len(req) == 0 {
				req = []byte("{}")
			}
			if !json.Valid(req) {
				return fmt.Errorf("store: rollout part %s/%s: the request is not JSON", p.Parent, p.Owner)
			}
			waiting := p.Waiting
			if waiting.IsZero() {
				waiting = now
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO rollout_parts
				(parent, owner, home, boards, request, requester, state, error, created, updated, waiting_since)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				p.Parent, p.Owner, p.Home, string(boards), string(req), p.Requester, PartWaiting, p.Error,
				dbTime(now), dbTime(now), dbTime(waiting))
			switch {
			case isUniqueViolation(err):
				return fmt.Errorf("store: rollout part %s/%s: %w", p.Parent, p.Owner, ErrExists)
			case err != nil:
				return fmt.Errorf("store: rollout part %s/%s: %w", p.Parent, p.Owner, err)
			}
		}
		return nil
	})
}

// PartMove moves a rollout's part (or, with no Owner, every part of the
// rollout) from From to To, if it is at From: the database's word on who
// moved it. Moving to PartStarting is a try: it counts an attempt,
// stamps Tried with At, takes Rollout as the part's rollout id unless it
// has one (a part keeps its id across tries, so that its owner starts it
// at most once), and waits for the part's NextTry. Error and NextTry are
// set as given; Refused counts a refusal. A part given up that moves to
// PartWaiting (tried again by hand) starts afresh: its refusals are
// reset and it waits since At.
type PartMove struct {
	Parent, Owner string
	From, To      PartState
	Rollout       string
	Error         string
	Refused       bool
	NextTry       time.Time
	At            time.Time
}

// MovePart makes the move m and returns how many parts moved (0: none
// was at m.From, or due).
func (s *Store) MovePart(ctx context.Context, m PartMove) (int, error) {
	if !m.From.CanMove(m.To) {
		return 0, fmt.Errorf("store: rollout part %s/%s: no move from %s to %s", m.Parent, m.Owner, m.From, m.To)
	}
	if m.At.IsZero() {
		m.At = time.Now()
	}
	try := 0
	if m.To == PartStarting {
		try = 1
	}
	refused := 0
	if m.Refused {
		refused = 1
	}
	again := 0
	if m.From == PartGivenUp && m.To == PartWaiting {
		again = 1
	}
	q := `UPDATE rollout_parts SET state = ?, error = ?, next_try = ?, updated = ?,
		refusals = CASE WHEN ? = 1 THEN 0 ELSE refusals + ? END,
		waiting_since = CASE WHEN ? = 1 THEN ? ELSE waiting_since END,
		attempts = attempts + ?, tried = CASE WHEN ? = 1 THEN ? ELSE tried END,
		rollout_id = CASE WHEN rollout_id = '' THEN ? ELSE rollout_id END
		WHERE parent = ? AND state = ?`
	args := []any{m.To, m.Error, dbTime(m.NextTry), dbTime(time.Now()), again, refused, again, dbTime(m.At), try, try,
		dbTime(m.At), m.Rollout, m.Parent, m.From}
	if m.Owner != "" {
		q += ` AND owner = ?`
		args = append(args, m.Owner)
	}
	if m.To == PartStarting {
		q += ` AND coalesce(next_try, 0) <= ?`
		args = append(args, dbTime(m.At))
	}
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("store: move rollout part %s/%s to %s: %w", m.Parent, m.Owner, m.To, err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// RolloutParts returns the parts of rollout parent (exact id), by owner.
func (s *Store) RolloutParts(ctx context.Context, parent string) ([]RolloutPart, error) {
	return s.parts(ctx, `WHERE parent = ? ORDER BY owner`, parent)
}

// OpenRolloutParts returns the parts service home started that may
// still start (waiting or starting), oldest first.
func (s *Store) OpenRolloutParts(ctx context.Context, home string) ([]RolloutPart, error) {
	return s.parts(ctx, `WHERE home = ? AND state IN (?, ?) ORDER BY created, parent, owner`, home, PartWaiting, PartStarting)
}

func (s *Store) parts(ctx context.Context, where string, args ...any) ([]RolloutPart, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT parent, owner, home, boards, request, requester, rollout_id, state, error,
		attempts, refusals, tried, next_try, created, updated, waiting_since FROM rollout_parts `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("store: rollout parts: %w", err)
	}
	defer rows.Close()
	var out []RolloutPart
	for rows.Next() {
		var (
			p                             RolloutPart
			boards, req                   string
			tried, next, created, updated sql.NullInt64
			waiting                       int64
		)
		if err := rows.Scan(&p.Parent, &p.Owner, &p.Home, &boards, &req, &p.Requester, &p.Rollout, &p.State, &p.Error,
			&p.Attempts, &p.Refusals, &tried, &next, &created, &updated, &waiting); err != nil {
			return nil, fmt.Errorf("store: rollout parts: %w", err)
		}
		if err := json.Unmarshal([]byte(boards), &p.Boards); err != nil {
			return nil, fmt.Errorf("store: rollout part %s/%s: its boards: %w", p.Parent, p.Owner, err)
		}
		p.Request = json.RawMessage(req)
		p.Tried, p.NextTry, p.Created, p.Updated = goTime(tried), goTime(next), goTime(created), goTime(updated)
		p.Waiting = time.Unix(0, waiting)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: rollout parts: %w", err)
	}
	return out, nil
}
