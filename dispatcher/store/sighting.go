package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Sighting is what is known of a board from seeing it (discovery, or a
// rollout talking to it).
type Sighting struct {
	BoardID   string            `json:"board_id"`
	Address   string            `json:"address"`
	Model     string            `json:"model"`
	Labels    map[string]string `json:"labels,omitempty"`
	BootID    string            `json:"boot_id"` // the latest boot's id
	Version   string            `json:"version"` // the version it runs (latest seen)
	FirstSeen time.Time         `json:"first_seen"`
	LastSeen  time.Time         `json:"last_seen"`
	Boots     int               `json:"boots"` // distinct boot ids seen
}

// Boot is one boot of a board, as seen.
type Boot struct {
	BootID    string    `json:"boot_id"`
	Version   string    `json:"version"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// Sight records that board sg.BoardID was seen at sg.LastSeen (zero: now).
// A board seen for the first time gets FirstSeen = sg.FirstSeen, or the
// time seen; afterwards FirstSeen is kept, LastSeen only moves forward, and
// Boots counts each new boot id. Address, Model, BootID and Version are
// updated when given (empty keeps what is known), Labels when not nil;
// a sighting older than the last one only adds its boot id.
func (s *Store) Sight(ctx context.Context, sg Sighting) error {
	if sg.BoardID == "" {
		return errors.New("store: sight: board id is empty")
	}
	seen := sg.LastSeen
	if seen.IsZero() {
		seen = time.Now()
	}
	first := sg.FirstSeen
	if first.IsZero() || first.After(seen) {
		first = seen
	}
	var labels any // NULL: keep the known labels
	if sg.Labels != nil {
		j, err := json.Marshal(sg.Labels)
		if err != nil {
			return fmt.Errorf("store: sight %s: %w", sg.BoardID, err)
		}
		labels = string(j)
	}
	err := s.tx(ctx, func(tx handle) error {
		// Each known field: the new value if given and this sighting is
		// not older than the last, else the old one.
		keep := func(col string) string {
			return col + ` = CASE WHEN excluded.last_seen >= sightings.last_seen AND excluded.` + col +
				` <> '' THEN excluded.` + col + ` ELSE sightings.` + col + ` END`
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO sightings
			(board_id, address, model, labels, boot_id, version, first_seen, last_seen)
			VALUES (?1, ?2, ?3, coalesce(?4, '{}'), ?5, ?6, ?7, ?8)
			ON CONFLICT (board_id) DO UPDATE SET
				`+keep("address")+`, `+keep("model")+`, `+keep("boot_id")+`, `+keep("version")+`,
				labels = CASE WHEN ?4 IS NOT NULL AND excluded.last_seen >= sightings.last_seen
					THEN ?4 ELSE sightings.labels END,
				first_seen = `+sqlMin("sightings.first_seen", "excluded.first_seen")+`,
				last_seen = `+sqlMax("sightings.last_seen", "excluded.last_seen"),
			sg.BoardID, sg.Address, sg.Model, labels, sg.BootID, sg.Version, first.UnixNano(), seen.UnixNano())
		if err != nil || sg.BootID == "" {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO boots (board_id, boot_id, version, first_seen, last_seen)
			VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (board_id, boot_id) DO UPDATE SET
				version = CASE WHEN excluded.version <> '' AND excluded.last_seen >= boots.last_seen
					THEN excluded.version ELSE boots.version END,
				first_seen = `+sqlMin("boots.first_seen", "excluded.first_seen")+`,
				last_seen = `+sqlMax("boots.last_seen", "excluded.last_seen"),
			sg.BoardID, sg.BootID, sg.Version, seen.UnixNano(), seen.UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("store: sight %s: %w", sg.BoardID, err)
	}
	return nil
}

// Sightings returns every board ever seen, sorted by board id.
func (s *Store) Sightings(ctx context.Context) ([]Sighting, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT s.board_id, s.address, s.model, s.labels, s.boot_id,
		s.version, s.first_seen, s.last_seen,
		(SELECT count(*) FROM boots b WHERE b.board_id = s.board_id)
		FROM sightings s ORDER BY s.board_id`)
	if err != nil {
		return nil, fmt.Errorf("store: sightings: %w", err)
	}
	defer rows.Close()
	var out []Sighting
	for rows.Next() {
		var (
			sg          Sighting
			labels      string
			first, last sql.NullInt64
		)
		if err := rows.Scan(&sg.BoardID, &sg.Address, &sg.Model, &labels, &sg.BootID, &sg.Version,
			&first, &last, &sg.Boots); err != nil {
			return nil, fmt.Errorf("store: sightings: %w", err)
		}
		if err := json.Unmarshal([]byte(labels), &sg.Labels); err != nil {
			return nil, fmt.Errorf("store: sightings: labels of %s: %w", sg.BoardID, err)
		}
		if len(sg.Labels) == 0 {
			sg.Labels = nil
		}
		sg.FirstSeen, sg.LastSeen = goTime(first), goTime(last)
		out = append(out, sg)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: sightings: %w", err)
	}
	return out, nil
}

// Boots returns the boots seen of board boardID, oldest first (none for a
// board never seen).
func (s *Store) Boots(ctx context.Context, boardID string) ([]Boot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT boot_id, version, first_seen, last_seen FROM boots
		WHERE board_id = ? ORDER BY first_seen, boot_id`, boardID)
	if err != nil {
		return nil, fmt.Errorf("store: boots of %s: %w", boardID, err)
	}
	defer rows.Close()
	var out []Boot
	for rows.Next() {
		var (
			b           Boot
			first, last sql.NullInt64
		)
		if err := rows.Scan(&b.BootID, &b.Version, &first, &last); err != nil {
			return nil, fmt.Errorf("store: boots of %s: %w", boardID, err)
		}
		b.FirstSeen, b.LastSeen = goTime(first), goTime(last)
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: boots of %s: %w", boardID, err)
	}
	return out, nil
}
