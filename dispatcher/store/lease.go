package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Lease states. A lease waits in the queue, holds its boards while
// active, and ends in one of the others.
const (
	LeaseWaiting  = "waiting"
	LeaseActive   = "active"
	LeaseReleased = "released"  // its holder (or an admin) let it go
	LeaseExpired  = "expired"   // not renewed in time, or past its end
	LeaseTimedOut = "timed_out" // still waiting when its wait ran out
)

// Lease is one request for boards of the lab service, from the queue to
// its end.
type Lease struct {
	ID       string            `json:"id"`
	Seq      int64             `json:"seq"` // its place in the queue: first come, first served
	Holder   string            `json:"holder"`
	State    string            `json:"state"`
	Selector map[string]string `json:"selector,omitempty"` // labels (and "model") every board must have
	WantIDs  []string          `json:"want_ids,omitempty"` // or: these boards
	Count    int               `json:"count"`
	Boards   []string          `json:"boards,omitempty"` // granted, sorted
	TTL      time.Duration     `json:"-"`                // it expires unless renewed within this
	Created  time.Time         `json:"created"`
	// WaitUntil is when a waiting lease gives up (zero: it never waited).
	WaitUntil time.Time `json:"wait_until,omitzero"`
	Granted   time.Time `json:"granted,omitzero"`
	Renewed   time.Time `json:"renewed"` // the last renewal (or the creation)
	Expires   time.Time `json:"expires"` // Renewed+TTL, capped by Until
	Until     time.Time `json:"until,omitzero"`
	Ended     time.Time `json:"ended,omitzero"`
	EndReason string    `json:"end_reason,omitempty"`
	// Home is the service that queued the lease and keeps it (grants,
	// renews, ends it), when several share the database.
	Home string `json:"home,omitempty"`
}

// Open reports whether the lease has not ended.
func (l Lease) Open() bool { return l.State == LeaseWaiting || l.State == LeaseActive }

// PutLease stores l, replacing the row of l.ID. An active lease holds its
// Boards until its Expires, in the database as well: when several
// services share it, a board another lease holds and has not let expire
// by l.Renewed (the time of this grant or renewal) is ErrConflict, and
// nothing is stored. A lease that is not active holds no board.
func (s *Store) PutLease(ctx context.Context, l Lease) error {
	if l.ID == "" || l.Holder == "" || l.State == "" {
		return errors.New("store: put lease: id, holder and state must be set")
	}
	sel, err := json.Marshal(l.Selector)
	if err != nil {
		return fmt.Errorf("store: put lease %s: %w", l.ID, err)
	}
	ids, _ := json.Marshal(l.WantIDs)
	boards, _ := json.Marshal(l.Boards)
	err = s.tx(ctx, func(tx handle) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO leases
		(id, seq, holder, state, selector, want_ids, count, boards, ttl, created, wait_until,
		 granted, renewed, expires, until, ended, end_reason, home)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET
			state = excluded.state, boards = excluded.boards, ttl = excluded.ttl,
			wait_until = excluded.wait_until, granted = excluded.granted,
			renewed = excluded.renewed, expires = excluded.expires, until = excluded.until,
			ended = excluded.ended, end_reason = excluded.end_reason`,
			l.ID, l.Seq, l.Holder, l.State, string(sel), string(ids), l.Count, string(boards), int64(l.TTL),
			l.Created.UnixNano(), dbTime(l.WaitUntil), dbTime(l.Granted), l.Renewed.UnixNano(),
			l.Expires.UnixNano(), dbTime(l.Until), dbTime(l.Ended), l.EndReason, l.Home)
		if isUniqueViolation(err) { // another service gave the same place in the queue
			return fmt.Errorf("queue number %d: %w", l.Seq, ErrExists)
		}
		if err != nil {
			return err
		}
		return s.holdBoards(ctx, tx, l)
	})
	if err != nil {
		return fmt.Errorf("store: put lease %s: %w", l.ID, err)
	}
	return nil
}

// holdBoards makes lease_boards say that l holds its boards, if it is
// active, and nothing else. The primary key on the board makes a second
// holder impossible; the upsert takes a board over only from a lease that
// expired, and it judges by the conflicting row's latest version (locked),
// so two services granting the same board at once cannot both win.
func (s *Store) holdBoards(ctx context.Context, tx handle, l Lease) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM lease_boards WHERE lease_id = ?`, l.ID); err != nil {
		return err
	}
	if l.State != LeaseActive {
		return nil
	}
	// In one order, so that two grants of overlapping boards cannot
	// deadlock.
	for _, id := range slices.Sorted(slices.Values(l.Boards)) {
		res, err := tx.ExecContext(ctx, `INSERT INTO lease_boards (board_id, lease_id, expires) VALUES (?1, ?2, ?3)
			ON CONFLICT (board_id) DO UPDATE SET lease_id = excluded.lease_id, expires = excluded.expires
			WHERE lease_boards.expires <= ?4`, id, l.ID, l.Expires.UnixNano(), l.Renewed.UnixNano())
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			var other string
			var until sql.NullInt64
			tx.QueryRowContext(ctx, `SELECT lease_id, expires FROM lease_boards WHERE board_id = ?`, id).Scan(&other, &until)
			return fmt.Errorf("board %s is held by lease %s until %s: %w", id, other,
				goTime(until).Format(time.RFC3339Nano), cmp.Or(err, ErrConflict))
		}
	}
	return nil
}

const leaseColumns = `id, seq, holder, state, selector, want_ids, count, boards, ttl, created,
	wait_until, granted, renewed, expires, until, ended, end_reason, home`

func scanLease(sc interface{ Scan(...any) error }) (Lease, error) {
	var (
		l                                                           Lease
		sel, ids, boards                                            string
		ttl                                                         int64
		created, waitUntil, granted, renewed, expires, until, ended sql.NullInt64
	)
	if err := sc.Scan(&l.ID, &l.Seq, &l.Holder, &l.State, &sel, &ids, &l.Count, &boards, &ttl, &created,
		&waitUntil, &granted, &renewed, &expires, &until, &ended, &l.EndReason, &l.Home); err != nil {
		return l, err
	}
	for _, j := range []struct {
		raw string
		v   any
	}{{sel, &l.Selector}, {ids, &l.WantIDs}, {boards, &l.Boards}} {
		if err := json.Unmarshal([]byte(j.raw), j.v); err != nil {
			return l, fmt.Errorf("lease %s: %w", l.ID, err)
		}
	}
	l.TTL = time.Duration(ttl)
	l.Created, l.WaitUntil, l.Granted = goTime(created), goTime(waitUntil), goTime(granted)
	l.Renewed, l.Expires, l.Until, l.Ended = goTime(renewed), goTime(expires), goTime(until), goTime(ended)
	return l, nil
}

// GetLease returns lease id; an unknown id is ErrNotFound.
func (s *Store) GetLease(ctx context.Context, id string) (Lease, error) {
	l, err := scanLease(s.db.QueryRowContext(ctx, `SELECT `+leaseColumns+` FROM leases WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return l, fmt.Errorf("store: lease %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return l, fmt.Errorf("store: lease %s: %w", id, err)
	}
	return l, nil
}

// Leases returns the leases that have not ended, in queue order, and with
// ended > 0 also up to that many of the latest ended ones after them,
// newest first.
func (s *Store) Leases(ctx context.Context, ended int) ([]Lease, error) {
	out, err := s.leases(ctx, `WHERE ended IS NULL ORDER BY seq`)
	if err != nil || ended <= 0 {
		return out, err
	}
	old, err := s.leases(ctx, `WHERE ended IS NOT NULL ORDER BY seq DESC LIMIT ?`, ended)
	return append(out, old...), err
}

func (s *Store) leases(ctx context.Context, where string, args ...any) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+leaseColumns+` FROM leases `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("store: leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, fmt.Errorf("store: leases: %w", err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: leases: %w", err)
	}
	return out, nil
}

// NextLeaseSeq gives the next place in the lease queue: one number to
// one caller, whichever service of those sharing the database asks, and
// above any lease's stored so far.
func (s *Store) NextLeaseSeq(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `UPDATE counters SET value = 1 + `+
		sqlMax("value", "(SELECT coalesce(max(seq), 0) FROM leases)")+` WHERE name = 'lease_seq' RETURNING value`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("store: next lease number: %w", err)
	}
	return n, nil
}
