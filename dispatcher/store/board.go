package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// LabBoard is a board of the lab service's inventory, as it was last
// known: where it is, what it is, and the state the service keeps for it
// across restarts (maintenance and quarantine are a person's to end).
type LabBoard struct {
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Source   string            `json:"source"` // static, mdns or serial
	Model    string            `json:"model"`
	Labels   map[string]string `json:"labels,omitempty"`
	State    string            `json:"state"`
	Reason   string            `json:"reason,omitempty"` // why the state (a quarantine's cause, a maintenance note)
	BootID   string            `json:"boot_id"`
	Failures int               `json:"failures"` // failed health checks or recoveries in a row
	LastSeen time.Time         `json:"last_seen,omitzero"`
	Updated  time.Time         `json:"updated"`
	// Owner is the service that drives the board and wrote this row
	// ("": a database older than owners).
	Owner string `json:"owner,omitempty"`
}

// PutLabBoard stores b, replacing the row of b.ID. A zero Updated is now.
func (s *Store) PutLabBoard(ctx context.Context, b LabBoard) error {
	if b.ID == "" || b.State == "" {
		return errors.New("store: put lab board: id and state must be set")
	}
	if b.Updated.IsZero() {
		b.Updated = time.Now()
	}
	labels, err := json.Marshal(b.Labels)
	if err != nil {
		return fmt.Errorf("store: put lab board %s: %w", b.ID, err)
	}
	if b.Labels == nil {
		labels = []byte("{}")
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO lab_boards
		(id, address, source, model, labels, state, reason, boot_id, failures, last_seen, updated, owner)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET
			address = excluded.address, source = excluded.source, model = excluded.model,
			labels = excluded.labels, state = excluded.state, reason = excluded.reason,
			boot_id = excluded.boot_id, failures = excluded.failures,
			last_seen = excluded.last_seen, updated = excluded.updated, owner = excluded.owner`,
		b.ID, b.Address, b.Source, b.Model, string(labels), b.State, b.Reason, b.BootID, b.Failures,
		dbTime(b.LastSeen), dbTime(b.Updated), b.Owner)
	if err != nil {
		return fmt.Errorf("store: put lab board %s: %w", b.ID, err)
	}
	return nil
}

// LabBoards returns the lab service's inventory, sorted by id.
func (s *Store) LabBoards(ctx context.Context) ([]LabBoard, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, address, source, model, labels, state, reason,
		boot_id, failures, last_seen, updated, owner FROM lab_boards ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: lab boards: %w", err)
	}
	defer rows.Close()
	var out []LabBoard
	for rows.Next() {
		var (
			b             LabBoard
			labels        string
			seen, updated sql.NullInt64
		)
		if err := rows.Scan(&b.ID, &b.Address, &b.Source, &b.Model, &labels, &b.State, &b.Reason,
			&b.BootID, &b.Failures, &seen, &updated, &b.Owner); err != nil {
			return nil, fmt.Errorf("store: lab boards: %w", err)
		}
		if err := json.Unmarshal([]byte(labels), &b.Labels); err != nil {
			return nil, fmt.Errorf("store: lab boards: labels of %s: %w", b.ID, err)
		}
		if len(b.Labels) == 0 {
			b.Labels = nil
		}
		b.LastSeen, b.Updated = goTime(seen), goTime(updated)
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: lab boards: %w", err)
	}
	return out, nil
}
