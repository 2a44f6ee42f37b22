package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// AuditEntry is one action recorded by the lab service: who did what, to
// which board and under which lease, when, and how it ended.
type AuditEntry struct {
	Seq    int64     `json:"seq"` // assigned by AddAudit, increasing
	At     time.Time `json:"at"`
	User   string    `json:"user"` // the user, or "service" for what it did itself
	Action string    `json:"action"`
	Board  string    `json:"board,omitempty"`
	Lease  string    `json:"lease,omitempty"`
	Result string    `json:"result"` // "ok", or what went wrong
	Detail string    `json:"detail,omitempty"`
}

// AuditFilter narrows Audit: the zero value is the newest 100 entries.
type AuditFilter struct {
	User, Board, Lease, Action string
	Since                      time.Time
	Limit                      int // 0: 100
}

// AddAudit records e (a zero At is now) and returns its sequence number.
func (s *Store) AddAudit(ctx context.Context, e AuditEntry) (int64, error) {
	if e.User == "" || e.Action == "" || e.Result == "" {
		return 0, errors.New("store: audit: user, action and result must be set")
	}
	if e.At.IsZero() {
		e.At = time.Now()
	}
	var seq int64
	err := s.db.QueryRowContext(ctx, `INSERT INTO audit (at, "user", action, board, lease, result, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq`,
		e.At.UnixNano(), e.User, e.Action, e.Board, e.Lease, e.Result, e.Detail).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("store: audit: %w", err)
	}
	return seq, nil
}

// Audit returns the entries f matches, newest first.
func (s *Store) Audit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	var (
		where []string
		args  []any
	)
	for _, c := range []struct{ col, val string }{{`"user"`, f.User}, {"board", f.Board}, {"lease", f.Lease}, {"action", f.Action}} {
		if c.val != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.val)
		}
	}
	if !f.Since.IsZero() {
		where = append(where, "at >= ?")
		args = append(args, f.Since.UnixNano())
	}
	q := `SELECT seq, at, "user", action, board, lease, result, detail FROM audit`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY seq DESC LIMIT ?", append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("store: audit: %w", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var (
			e  AuditEntry
			at sql.NullInt64
		)
		if err := rows.Scan(&e.Seq, &at, &e.User, &e.Action, &e.Board, &e.Lease, &e.Result, &e.Detail); err != nil {
			return nil, fmt.Errorf("store: audit: %w", err)
		}
		e.At = goTime(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: audit: %w", err)
	}
	return out, nil
}
