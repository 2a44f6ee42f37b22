package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Claim says which lab service owns a board when several share one
// database: the one that reaches it, drives it and keeps its state. A
// claim lasts until Expires unless its owner renews it. Past that it has
// expired (its owner vanished, or lost the database) and ExpiredClaims
// lists it, with that owner, until another owner takes the board or the
// claim is released.
type Claim struct {
	BoardID string    `json:"board_id"`
	Owner   string    `json:"owner"`   // the service instance's id
	Claimed time.Time `json:"claimed"` // when this owner took it
	Renewed time.Time `json:"renewed"` // its latest renewal (or Claimed)
	Expires time.Time `json:"expires"`
}

// claimBatch bounds the ids of one statement (SQLite takes up to 32,766
// parameters, Postgres 65,535).
const claimBatch = 500

// ClaimBoards makes owner the owner of those of ids that are unclaimed,
// already its own, or whose claim has expired by now, until now+ttl, and
// returns them, sorted. A board another owner holds (a claim not expired,
// or one another service is taking at this moment) is left to it. Time is
// the caller's clock, so the services sharing a database must keep their
// clocks close (NTP) compared with ttl.
func (s *Store) ClaimBoards(ctx context.Context, owner string, ids []string, ttl time.Duration, now time.Time) ([]string, error) {
	if owner == "" || ttl <= 0 {
		return nil, errors.New("store: claim boards: an owner and a positive ttl are needed")
	}
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	var won []string
	err := s.tx(ctx, func(tx handle) error {
		won = won[:0]
		for batch := range slices.Chunk(ids, claimBatch) {
			got, err := s.claimBatch(ctx, tx, owner, batch, now.UnixNano(), now.Add(ttl).UnixNano())
			if err != nil {
				return err
			}
			won = append(won, got...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: %s claims boards: %w", owner, err)
	}
	slices.Sort(won)
	return won, nil
}

func (s *Store) claimBatch(ctx context.Context, tx handle, owner string, ids []string, now, expires int64) ([]string, error) {
	args := make([]any, 0, len(ids)+2)
	for _, id := range ids {
		args = append(args, id)
	}
	in := `board_id IN (` + placeholders(len(ids)) + `)`
	rows, err := tx.QueryContext(ctx, `SELECT board_id FROM board_claims WHERE `+in+` ORDER BY board_id`, args...)
	if err != nil {
		return nil, err
	}
	claimed, err := scanStrings(rows)
	if err != nil {
		return nil, err
	}
	// The claimed rows it may take: its own, and the expired ones. On
	// Postgres they are locked until the commit, and a row another
	// service has locked (it is taking it) is skipped, not waited for.
	rows, err = tx.QueryContext(ctx, `SELECT board_id FROM board_claims WHERE `+in+`
		AND (owner = ? OR expires <= ?) ORDER BY board_id`+s.d.skipLocked(), append(args, owner, now)...)
	if err != nil {
		return nil, err
	}
	taken, err := scanStrings(rows)
	if err != nil {
		return nil, err
	}
	if len(taken) > 0 {
		targs := []any{owner, now, expires}
		for _, id := range taken {
			targs = append(targs, id)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE board_claims SET
			claimed = CASE WHEN owner = ?1 THEN claimed ELSE ?2 END, owner = ?1, renewed = ?2, expires = ?3
			WHERE board_id IN (`+numbered(4, len(taken))+`)`, targs...); err != nil {
			return nil, err
		}
	}
	// The boards nobody had claimed. Inserted in order, so that a row
	// another service's open transaction inserted makes this one wait for
	// it (then pass) without a cycle; rows that were claimed are never
	// inserted, so this never waits on a row another service locked.
	var fresh []string
	for _, id := range ids {
		if _, found := slices.BinarySearch(claimed, id); !found {
			fresh = append(fresh, id)
		}
	}
	if len(fresh) == 0 {
		return taken, nil
	}
	iargs := []any{owner, now, expires}
	values := ""
	for i, id := range fresh {
		if i > 0 {
			values += ", "
		}
		values += fmt.Sprintf("(?%d, ?1, ?2, ?2, ?3)", i+4)
		iargs = append(iargs, id)
	}
	rows, err = tx.QueryContext(ctx, `INSERT INTO board_claims (board_id, owner, claimed, renewed, expires)
		VALUES `+values+` ON CONFLICT (board_id) DO NOTHING RETURNING board_id`, iargs...)
	if err != nil {
		return nil, err
	}
	inserted, err := scanStrings(rows)
	return append(taken, inserted...), err
}

// RenewClaims extends owner's claims that have not expired by now to
// now+ttl and returns their boards, sorted. A claim that expired is not
// renewed, even if nobody took it: the owner learns it lost the board and
// claims it again with ClaimBoards.
func (s *Store) RenewClaims(ctx context.Context, owner string, ttl time.Duration, now time.Time) ([]string, error) {
	if owner == "" || ttl <= 0 {
		return nil, errors.New("store: renew claims: an owner and a positive ttl are needed")
	}
	rows, err := s.db.QueryContext(ctx, `UPDATE board_claims SET renewed = ?1, expires = ?2
		WHERE owner = ?3 AND expires > ?1 RETURNING board_id`, now.UnixNano(), now.Add(ttl).UnixNano(), owner)
	if err != nil {
		return nil, fmt.Errorf("store: %s renews its claims: %w", owner, err)
	}
	ids, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("store: %s renews its claims: %w", owner, err)
	}
	slices.Sort(ids)
	return ids, nil
}

// ReleaseClaims gives up owner's claims on ids, or on all its boards when
// none are named (a service that stops cleanly).
func (s *Store) ReleaseClaims(ctx context.Context, owner string, ids ...string) error {
	err := s.tx(ctx, func(tx handle) error {
		if len(ids) == 0 {
			_, err := tx.ExecContext(ctx, `DELETE FROM board_claims WHERE owner = ?`, owner)
			return err
		}
		for batch := range slices.Chunk(ids, claimBatch) {
			args := []any{owner}
			for _, id := range batch {
				args = append(args, id)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM board_claims WHERE owner = ?
				AND board_id IN (`+placeholders(len(batch))+`)`, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: %s releases claims: %w", owner, err)
	}
	return nil
}

// Claims returns every claim, expired or not, sorted by board id.
func (s *Store) Claims(ctx context.Context) ([]Claim, error) {
	return s.claims(ctx, ``)
}

// ExpiredClaims returns the claims whose owner has not renewed them by
// now, sorted by board id: boards whose service vanished, to be shown
// offline with that owner and time until another service takes them.
func (s *Store) ExpiredClaims(ctx context.Context, now time.Time) ([]Claim, error) {
	return s.claims(ctx, `WHERE expires <= ?`, now.UnixNano())
}

func (s *Store) claims(ctx context.Context, where string, args ...any) ([]Claim, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT board_id, owner, claimed, renewed, expires FROM board_claims `+
		where+` ORDER BY board_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: claims: %w", err)
	}
	defer rows.Close()
	var out []Claim
	for rows.Next() {
		var (
			c                         Claim
			claimed, renewed, expires sql.NullInt64
		)
		if err := rows.Scan(&c.BoardID, &c.Owner, &claimed, &renewed, &expires); err != nil {
			return nil, fmt.Errorf("store: claims: %w", err)
		}
		c.Claimed, c.Renewed, c.Expires = goTime(claimed), goTime(renewed), goTime(expires)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: claims: %w", err)
	}
	return out, nil
}

// scanStrings reads the one text column of rows and closes them.
func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// numbered is "?from, ?from+1, ..." for n values.
func numbered(from, n int) string {
	out := ""
	for i := range n {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("?%d", from+i)
	}
	return out
}
