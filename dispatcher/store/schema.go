package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// migrations are the schema, forward only: migrations[i] takes the
// database from version i to version i+1. Never edit one that has been
// released; append a new one.
//
// Times are INTEGER unix nanoseconds (NULL: not yet). Tables are STRICT so
// that a wrong type is an error, not a silent conversion.
var migrations = []string{
	// 1: rollouts, per-board results, sightings and their boots.
	`
CREATE TABLE rollouts (
	id           TEXT PRIMARY KEY,
	image        TEXT NOT NULL DEFAULT '',
	image_sha256 TEXT NOT NULL DEFAULT '',
	version      TEXT NOT NULL DEFAULT '',
	selector     TEXT NOT NULL DEFAULT '',
	concurrency  INTEGER NOT NULL DEFAULT 0,
	max_failures INTEGER NOT NULL DEFAULT 0,
	plan         BLOB,
	state        TEXT NOT NULL,
	created      INTEGER NOT NULL,
	updated      INTEGER NOT NULL
) STRICT;
CREATE INDEX rollouts_by_created ON rollouts (created DESC, id DESC);

CREATE TABLE board_results (
	rollout_id   TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
	board_id     TEXT NOT NULL,
	address      TEXT NOT NULL DEFAULT '',
	phase        TEXT NOT NULL,
	result       TEXT NOT NULL DEFAULT '',
	reason       TEXT NOT NULL DEFAULT '',
	from_version TEXT NOT NULL DEFAULT '',
	to_version   TEXT NOT NULL DEFAULT '',
	bytes_sent   INTEGER NOT NULL DEFAULT 0,
	attempts     INTEGER NOT NULL DEFAULT 0,
	started      INTEGER,
	ended        INTEGER,
	update_id    TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (rollout_id, board_id)
) STRICT;
CREATE INDEX board_results_by_result ON board_results (rollout_id, result);

CREATE TABLE sightings (
	board_id   TEXT PRIMARY KEY,
	address    TEXT NOT NULL DEFAULT '',
	model      TEXT NOT NULL DEFAULT '',
	labels     TEXT NOT NULL DEFAULT '{}',
	boot_id    TEXT NOT NULL DEFAULT '',
	version    TEXT NOT NULL DEFAULT '',
	first_seen INTEGER NOT NULL,
	last_seen  INTEGER NOT NULL
) STRICT;

CREATE TABLE boots (
	board_id   TEXT NOT NULL REFERENCES sightings (board_id) ON DELETE CASCADE,
	boot_id    TEXT NOT NULL,
	version    TEXT NOT NULL DEFAULT '',
	first_seen INTEGER NOT NULL,
	last_seen  INTEGER NOT NULL,
	PRIMARY KEY (board_id, boot_id)
) STRICT;
`,
	// 2: the lab service (boardlink serve): its board inventory, leases
	// and audit log.
	`
CREATE TABLE lab_boards (
	id        TEXT PRIMARY KEY,
	address   TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	model     TEXT NOT NULL DEFAULT '',
	labels    TEXT NOT NULL DEFAULT '{}',
	state     TEXT NOT NULL,
	reason    TEXT NOT NULL DEFAULT '',
	boot_id   TEXT NOT NULL DEFAULT '',
	failures  INTEGER NOT NULL DEFAULT 0,
	last_seen INTEGER,
	updated   INTEGER NOT NULL
) STRICT;

CREATE TABLE leases (
	id         TEXT PRIMARY KEY,
	seq        INTEGER NOT NULL UNIQUE,
	holder     TEXT NOT NULL,
	state      TEXT NOT NULL,
	selector   TEXT NOT NULL DEFAULT '{}',
	want_ids   TEXT NOT NULL DEFAULT '[]',
	count      INTEGER NOT NULL,
	boards     TEXT NOT NULL DEFAULT '[]',
	ttl        INTEGER NOT NULL,
	created    INTEGER NOT NULL,
	wait_until INTEGER,
	granted    INTEGER,
	renewed    INTEGER NOT NULL,
	expires    INTEGER NOT NULL,
	until      INTEGER,
	ended      INTEGER,
	end_reason TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX leases_open ON leases (seq) WHERE ended IS NULL;
CREATE INDEX leases_by_created ON leases (created DESC);

CREATE TABLE audit (
	seq    INTEGER PRIMARY KEY,
	at     INTEGER NOT NULL,
	user   TEXT NOT NULL,
	action TEXT NOT NULL,
	board  TEXT NOT NULL DEFAULT '',
	lease  TEXT NOT NULL DEFAULT '',
	result TEXT NOT NULL,
	detail TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX audit_by_at ON audit (at);
CREATE INDEX audit_by_board ON audit (board, at);
`,
}

// SchemaVersion is the schema version this package writes.
func SchemaVersion() int { return len(migrations) }

// migrate brings the database to SchemaVersion, each migration in its own
// transaction together with its version bump, and refuses a database whose
// version is higher.
func (s *Store) migrate(ctx context.Context) error {
	for {
		done := false
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx,
				`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
				return err
			}
			var v int
			err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				_, err = tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`)
			}
			if err != nil {
				return err
			}
			switch {
			case v > len(migrations):
				return fmt.Errorf("%w: it is at schema version %d and this boardlink knows versions up to %d; "+
					"use a newer boardlink, or another --db", ErrSchemaTooNew, v, len(migrations))
			case v == len(migrations):
				done = true
				return nil
			}
			if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migration to schema version %d: %w", v+1, err)
			}
			_, err = tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, v+1)
			return err
		})
		if err != nil || done {
			return err
		}
	}
}
