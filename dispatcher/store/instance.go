package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Instance is a lab service sharing the database: its owner name (as in
// its claims) and the URL the other services reach its API at. Only these
// URLs, from the database, are ever sent a peer's credential.
type Instance struct {
	Owner   string    `json:"owner"`
	URL     string    `json:"url"`
	Started time.Time `json:"started"`
	Renewed time.Time `json:"renewed"` // its latest claim round
}

// PutInstance records owner's URL and its latest round at now; the first
// record of an owner is its start.
func (s *Store) PutInstance(ctx context.Context, owner, url string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO lab_instances (owner, url, started, renewed) VALUES (?1, ?2, ?3, ?3)
		ON CONFLICT (owner) DO UPDATE SET url = excluded.url, renewed = excluded.renewed`, owner, url, now.UnixNano())
	if err != nil {
		return fmt.Errorf("store: put instance %s: %w", owner, err)
	}
	return nil
}

// Instances returns every service that ever shared the database, by
// owner name.
func (s *Store) Instances(ctx context.Context) (map[string]Instance, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT owner, url, started, renewed FROM lab_instances`)
	if err != nil {
		return nil, fmt.Errorf("store: instances: %w", err)
	}
	defer rows.Close()
	out := map[string]Instance{}
	for rows.Next() {
		var (
			in               Instance
			started, renewed sql.NullInt64
		)
		if err := rows.Scan(&in.Owner, &in.URL, &started, &renewed); err != nil {
			return nil, fmt.Errorf("store: instances: %w", err)
		}
		in.Started, in.Renewed = goTime(started), goTime(renewed)
		out[in.Owner] = in
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: instances: %w", err)
	}
	return out, nil
}

// Hold is the open lease that holds a board in the database.
type Hold struct {
	Lease   string    `json:"lease"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// Holds returns the boards that active leases hold at now, whichever
// service granted them: what every service sharing the database honours.
// With ids, only those boards are looked at.
func (s *Store) Holds(ctx context.Context, now time.Time, ids ...string) (map[string]Hold, error) {
	q := `SELECT lb.board_id, lb.lease_id, l.holder, lb.expires FROM lease_boards lb
		JOIN leases l ON l.id = lb.lease_id WHERE lb.expires > ? AND l.state = ?`
	args := []any{now.UnixNano(), LeaseActive}
	if len(ids) > 0 {
		q += ` AND lb.board_id IN (` + placeholders(len(ids)) + `)`
		for _, id := range ids {
			args = append(args, id)
		}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: holds: %w", err)
	}
	defer rows.Close()
	out := map[string]Hold{}
	for rows.Next() {
		var (
			id      string
			h       Hold
			expires int64
		)
		if err := rows.Scan(&id, &h.Lease, &h.Holder, &expires); err != nil {
			return nil, fmt.Errorf("store: holds: %w", err)
		}
		h.Expires = time.Unix(0, expires).UTC()
		out[id] = h
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: holds: %w", err)
	}
	return out, nil
}
